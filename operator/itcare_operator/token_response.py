"""Validating a token endpoint's answer and making its text safe to show.

Pure: bytes and strings in, a :class:`Token`, a number or an exception of
:mod:`itcare_operator.errors` out. No HTTP client here, so the parsing rules are tested
as tables without a transport, and the HTTP side (:mod:`itcare_operator.token_endpoint`)
only moves bytes.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus

from itcare_operator.errors import InvalidTokenResponse
from itcare_operator.token import Token, usable_access_token

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_EXPIRES_IN",
    "MAX_RETRY_AFTER",
    "WITHHELD",
    "json_object",
    "parse_retry_after",
    "parse_token_response",
    "scrub",
]

MAX_BODY_BYTES = 64 * 1024
MAX_EXPIRES_IN = 366 * 24 * 3600
MAX_RETRY_AFTER = 3600.0
"""The longest wait, in seconds, a ``Retry-After`` header can impose. The header is
the endpoint's (or a proxy's) text: an absurd value must not park a credential for
days while its token expires. An hour is longer than the rate-limit windows Keycloak
and common proxies announce, and the retry policy still re-tries earlier when the held
token is about to expire."""
_DELTA_SECONDS = re.compile(r"[0-9]+", re.ASCII)


WITHHELD = "<withheld: the endpoint's text held credential material>"


def _base64_cores(value: bytes) -> set[str]:
    """What the Base64 of any string containing ``value`` must contain, whatever the
    alignment: for each of the three offsets, the characters that encode ``value``
    alone (standard and URL-safe alphabets, no padding)."""
    cores: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + value).decode()
        start = 4 if offset else 0  # the first quad mixes in the unknown prefix
        end = 4 * ((offset + len(value)) // 3)  # the last partial quad depends on what follows
        core = encoded[start:end]
        if len(core) >= 8:
            cores.update({core, core.replace("+", "-").replace("/", "_")})
    return cores


def _encodings(secret: str) -> set[str]:
    """Forms of a secret that may come back in an endpoint's text: URL- and
    form-encoded (a decoded copy of the text is searched too) and Base64."""
    forms = {quote(secret, safe=""), quote_plus(secret), quote(secret)}
    forms |= _base64_cores(secret.encode())
    forms |= _base64_cores(quote_plus(secret).encode())
    return {f for f in forms if f and f != secret}


def scrub(text: str, secrets: Iterable[str], limit: int = 200) -> str:
    """Make text from the endpoint safe to show: no secret in any encoding we know
    (raw, URL- or form-encoded, Base64 as in a Basic header), printable, short.

    Raw secrets are cut out; a text that still holds one in another form, or after
    percent-decoding, is withheld whole: a partial cut of an encoding could leave
    recoverable pieces.
    """
    secrets = [s for s in secrets if s]
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    decoded = [text]
    for _ in range(3):
        decoded.append(unquote_plus(decoded[-1]))
    forms = {form for secret in secrets for form in (secret, *_encodings(secret))}
    if any(form in variant for form in forms for variant in decoded[1:]) or any(
        form in text for form in forms
    ):
        return WITHHELD
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date, at most
    :data:`MAX_RETRY_AFTER`; ``None`` for anything else.

    The header is the endpoint's text, so this never raises: delta-seconds are ASCII
    digits only (``str.isdigit`` also accepts ``"²"`` and other scripts' digits), a long
    run of digits is capped without converting it, and a date the parser cannot
    represent is ignored.
    """
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        digits = value.lstrip("0")
        if len(digits) > len(str(int(MAX_RETRY_AFTER))):
            return MAX_RETRY_AFTER
        return min(float(int(digits or "0")), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - now).total_seconds()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: RecursionError
        return None
    return value if isinstance(value, dict) else None


def parse_token_response(
    body: bytes, received_at: dt.datetime, *, secrets: Iterable[str] = ()
) -> Token:
    """Validate a 200 answer strictly and turn it into a :class:`Token`."""
    doc = json_object(body)
    if doc is None:
        kind = "HTML" if body.lstrip()[:1] == b"<" else "not a JSON object"
        raise InvalidTokenResponse(f"token endpoint answered 200 with a body that is {kind}")
    access_token = doc.get("access_token")
    if not isinstance(access_token, str) or not access_token.strip():
        raise InvalidTokenResponse("token response has no access_token")
    if not usable_access_token(access_token):
        raise InvalidTokenResponse("token response has an access_token with invalid characters")
    token_type = doc.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = (
            scrub(token_type, (*secrets, access_token), 30)
            if isinstance(token_type, str)
            else type(token_type).__name__
        )
        raise InvalidTokenResponse(f"token response has token_type {shown!r}, expected Bearer")
    expires_in = _seconds(doc.get("expires_in"), "expires_in", minimum=1)
    if expires_in is None:
        raise InvalidTokenResponse("token response has no expires_in")
    refresh_token = doc.get("refresh_token")
    if refresh_token is not None and (not isinstance(refresh_token, str) or not refresh_token):
        raise InvalidTokenResponse("token response has an invalid refresh_token")
    refresh_expires_in = _seconds(doc.get("refresh_expires_in"), "refresh_expires_in", minimum=0)
    scope = doc.get("scope") if isinstance(doc.get("scope"), str) else None
    return Token(
        access_token=access_token,
        received_at=received_at,
        expires_at=received_at + dt.timedelta(seconds=expires_in),
        refresh_token=refresh_token,
        # Keycloak sends refresh_expires_in 0 for tokens without an idle limit.
        refresh_expires_at=(
            received_at + dt.timedelta(seconds=refresh_expires_in)
            if refresh_token and refresh_expires_in
            else None
        ),
        scope=scope,
    )


def _seconds(value: object, name: str, *, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTokenResponse(f"token response has a non-integer {name}")
    if value < minimum or value > MAX_EXPIRES_IN:
        raise InvalidTokenResponse(
            f"token response has {name}={value}, outside {minimum}..{MAX_EXPIRES_IN}"
        )
    return value
