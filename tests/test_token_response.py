"""Strict parsing of token responses and Retry-After."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from itcare_operator.errors import InvalidTokenResponse
from itcare_operator.token import Token, fingerprint, format_time, parse_time
from itcare_operator.token_response import parse_retry_after, parse_token_response

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
