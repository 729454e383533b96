"""Strict parsing of token responses and Retry-After."""

from __future__ import annotations

import base64
import datetime as dt
import json

import httpx
import hypothesis
import hypothesis.strategies as st
import pytest

from itcare_operator.errors import EndpointUnavailable, InvalidTokenResponse
from itcare_operator.token import ClientCredentials, Token, fingerprint, format_time, parse_time
from itcare_operator.token_endpoint import TokenEndpoint
from itcare_operator.token_response import (
    MAX_RETRY_AFTER,
    WITHHELD,
    parse_retry_after,
    parse_token_response,
    scrub,
)

NOW = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
DOC = {
    "access_token": "eyJhbGciOi.payload.sig",
    "expires_in": 1200,
    "refresh_expires_in": 7200,
    "refresh_token": "eyJrefresh.payload.sig",
    "token_type": "bearer",
    "not-before-policy": 0,
    "session_state": "abc",
    "scope": "profile email",
}


def parse(doc: object) -> Token:
    return parse_token_response(json.dumps(doc).encode(), NOW)


def test_documented_response() -> None:
    token = parse(DOC)
    assert token.access_token == DOC["access_token"]
    assert token.expires_at == NOW + dt.timedelta(seconds=1200)
    assert token.refresh_expires_at == NOW + dt.timedelta(seconds=7200)
    assert token.token_type == "Bearer"
    assert token.authorization == "Bearer eyJhbGciOi.payload.sig"


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER"])
def test_token_type_case_insensitive(token_type: str) -> None:
    assert parse({**DOC, "token_type": token_type}).token_type == "Bearer"


def test_without_refresh_token() -> None:
    doc = {k: v for k, v in DOC.items() if k not in ("refresh_token", "refresh_expires_in")}
    token = parse(doc)
    assert token.refresh_token is None and token.refresh_expires_at is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"access_token": ""}, "no access_token"),
        ({"access_token": None}, "no access_token"),
        ({"access_token": 42}, "no access_token"),
        ({"access_token": "a b"}, "invalid characters"),
        ({"expires_in": 0}, "outside"),
        ({"expires_in": -5}, "outside"),
        ({"expires_in": "1200"}, "non-integer"),
        ({"expires_in": 1.5}, "non-integer"),
        ({"expires_in": True}, "non-integer"),
        ({"expires_in": 10**12}, "outside"),
        ({"expires_in": None}, "no expires_in"),
        ({"token_type": "mac"}, "expected Bearer"),
        ({"token_type": None}, "expected Bearer"),
        ({"refresh_token": ""}, "invalid refresh_token"),
        ({"refresh_expires_in": -1}, "outside"),
    ],
)
def test_rejects_bad_fields(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidTokenResponse, match=message) as info:
        parse({**DOC, **change})
    assert DOC["refresh_token"] not in str(info.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html><body>Bad gateway</body></html>", "HTML"),
        (b'{"access_token": "x", "expires_in"', "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
        (b"", "not a JSON object"),
        (b"\xff\xfe", "not a JSON object"),
    ],
)
def test_rejects_non_json(body: bytes, message: str) -> None:
    with pytest.raises(InvalidTokenResponse, match=message):
        parse_token_response(body, NOW)


def test_retry_after_seconds_and_date() -> None:
    assert parse_retry_after("30", NOW) == 30.0
    assert parse_retry_after("Sat, 28 Nov 2026 10:01:00 GMT", NOW) == 60.0
    assert parse_retry_after("Sat, 28 Nov 2026 09:00:00 GMT", NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9" * 400, MAX_RETRY_AFTER),  # float(int(...)) overflows
        ("9" * 5000, MAX_RETRY_AFTER),  # beyond int()'s digit limit
        ("0" * 5000 + "30", 30.0),
        ("3601", MAX_RETRY_AFTER),
        ("3600", MAX_RETRY_AFTER),
        ("\u00b2", None),  # isdigit() is True, int() refuses it
        ("\u0661\u0662", None),  # Arabic-Indic digits: not delta-seconds
        ("\uff11\uff12", None),  # fullwidth digits
        ("-5", None),
        ("1e3", None),
        ("30.5", None),
        ("Sat, 28 Nov 9999 10:01:00 GMT", MAX_RETRY_AFTER),
        ("Sat, 28 Nov 99999999999999999999 10:01:00 GMT", None),  # year overflows a C long
        ("Sat, 28 Nov 0001 10:01:00 GMT", 0.0),
        ("Sat, 28 Nov 2026 10:01:00 +9999", None),
        ("Mon, 32 Nov 2026 10:01:00 GMT", None),
        ("\x00", None),
        ("", None),
    ],
)
def test_retry_after_never_raises_and_is_capped(value: str, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


@hypothesis.settings(max_examples=2000, deadline=None)
@hypothesis.given(
    st.one_of(
        st.text(),
        st.text(alphabet="0123456789 ", max_size=6000),
        st.from_regex(r"\A[A-Z][a-z]{2}, [0-9]{1,30} [A-Z][a-z]{2} [0-9]{1,30} .{0,20}\Z"),
    )
)
def test_retry_after_of_any_text_is_none_or_within_the_cap(value: str) -> None:
    seconds = parse_retry_after(value, NOW)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER


@pytest.mark.parametrize("header", [b"9" * 400, b"9" * 5000, "\u00b2".encode()])
async def test_a_bad_retry_after_stays_inside_the_endpoint_error(header: bytes) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={b"Retry-After": header})

    endpoint = TokenEndpoint(
        "https://accounts.example/token", transport=httpx.MockTransport(handle)
    )
    try:
        with pytest.raises(EndpointUnavailable) as info:
            await endpoint.client_credentials(ClientCredentials("id", "secret"))
    finally:
        await endpoint.aclose()
    assert info.value.retry_after is None or 0.0 <= info.value.retry_after <= MAX_RETRY_AFTER


def test_repr_hides_secrets() -> None:
    token = parse(DOC)
    assert DOC["access_token"] not in repr(token)
    assert DOC["refresh_token"] not in repr(token)
    assert fingerprint(str(DOC["access_token"])) in repr(token)


def test_time_round_trip() -> None:
    assert format_time(NOW) == "2026-11-28T10:00:00Z"
    assert parse_time("2026-11-28T10:00:00Z") == NOW
    with pytest.raises(ValueError):
        parse_time("2026-11-28T10:00:00")
    with pytest.raises(ValueError):
        parse_time("tomorrow")


SECRET = "s3cr&t/+=x y%-long-enough"


@pytest.mark.parametrize("prefix", [b"", b"a", b"ab", b"abc", b"client-id:"])
@pytest.mark.parametrize("suffix", [b"", b"!", b"!!", b":tail"])
@pytest.mark.parametrize("urlsafe", [False, True], ids=["standard", "urlsafe"])
def test_scrub_finds_a_secret_in_base64_at_every_alignment(
    prefix: bytes, suffix: bytes, urlsafe: bool
) -> None:
    """The secret's Base64 depends on its offset modulo 3 in the encoded bytes: a text
    with the secret at offset 1 or 2 holds none of the offset-0 encoding."""
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    blob = encode(prefix + SECRET.encode() + suffix).decode()
    if len(prefix) % 3:
        assert base64.b64encode(SECRET.encode()).decode()[:-4] not in blob
    text = f"invalid client, header was Basic {blob} (rejected)"
    shown = scrub(text, [SECRET])
    assert shown == WITHHELD
    assert blob not in shown


def test_scrub_keeps_a_harmless_text_and_cuts_raw_secrets() -> None:
    secrets = ["s3cr3t-value-4f2a"]
    assert scrub("invalid_client: Invalid client credentials", secrets) == (
        "invalid_client: Invalid client credentials"
    )
    assert scrub("bad s3cr3t-value-4f2a here", secrets) == "bad <redacted> here"
    assert scrub("a\x00b\tc\n", secrets) == "a b c"
    assert scrub("x" * 200, secrets) == "x" * 200
    assert scrub("x" * 201, secrets) == "x" * 197 + "..."


def test_scrub_withholds_a_secret_in_url_safe_base64_at_every_offset() -> None:
    secret = "~~~??>>>~~~??>>>client"  # its Base64 holds '+' and '/' at every offset
    for offset in range(3):
        standard = base64.b64encode(b"u" * offset + secret.encode()).decode()
        url_safe = base64.urlsafe_b64encode(b"u" * offset + secret.encode()).decode()
        assert url_safe != standard
        assert scrub(f"Basic {url_safe}", [secret]) == WITHHELD, offset


def test_token_response_keeps_scope_and_the_refresh_token_expiry() -> None:
    now = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
    body = {
        "access_token": "at",
        "token_type": "Bearer",
        "expires_in": 1,
        "refresh_token": "rt",
        "refresh_expires_in": 1800,
        "scope": "a b",
    }
    token = parse_token_response(json.dumps(body).encode(), now)
    assert (token.refresh_token, token.scope) == ("rt", "a b")
    assert token.expires_at == now + dt.timedelta(seconds=1)
    assert token.refresh_expires_at == now + dt.timedelta(seconds=1800)
    no_idle_limit = parse_token_response(
        json.dumps({**body, "refresh_expires_in": 0}).encode(), now
    )
    assert no_idle_limit.refresh_expires_at is None
    with pytest.raises(InvalidTokenResponse, match="expires_in=0"):
        parse_token_response(json.dumps({**body, "expires_in": 0}).encode(), now)
    with pytest.raises(InvalidTokenResponse, match="refresh_expires_in=-1"):
        parse_token_response(json.dumps({**body, "refresh_expires_in": -1}).encode(), now)
    with pytest.raises(InvalidTokenResponse, match="is HTML"):
        parse_token_response(b"  <html>", now)
    with pytest.raises(InvalidTokenResponse, match="is not a JSON object"):
        parse_token_response(b"[1]", now)
