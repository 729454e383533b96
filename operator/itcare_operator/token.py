"""The token we hold, and the API account it is obtained with.

Pure data: no I/O, no clock. Every secret-bearing field is kept out of ``repr`` so a
stray ``log.debug(token)`` cannot leak it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import hashlib
from urllib.parse import quote_plus

__all__ = [
    "DEFAULT_TOKEN_URL",
    "ClientCredentials",
    "Grant",
    "Token",
    "digest",
    "fingerprint",
    "format_time",
    "parse_time",
    "usable_access_token",
]

# Instants a time text may name: far from datetime's edges, where adding the one-day
# margins of the refresh policy would overflow.
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)
MAX_TIME_TEXT = 64

DEFAULT_TOKEN_URL = "https://accounts.cegedim.cloud/auth/realms/cloud/protocol/openid-connect/token"


class Grant(enum.StrEnum):
    """``spec.grant``, and the grant a request actually used (metric label)."""

    CLIENT_CREDENTIALS = "ClientCredentials"
    REFRESH_TOKEN = "RefreshToken"


@dataclasses.dataclass(frozen=True)
class ClientCredentials:
    """An ITCare API account: a Keycloak client id and secret."""

    client_id: str = dataclasses.field(repr=False)
    client_secret: str = dataclasses.field(repr=False)

    def __repr__(self) -> str:
        return "ClientCredentials(<redacted>)"

    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in logs, events, status or errors: the id, the
        secret, and the Base64 pair of a Basic header (form-encoded as sent, and raw)."""
        pairs = (
            f"{quote_plus(self.client_id)}:{quote_plus(self.client_secret)}",
            f"{self.client_id}:{self.client_secret}",
        )
        encoded = (base64.b64encode(pair.encode()).decode() for pair in pairs)
        return (self.client_id, self.client_secret, *dict.fromkeys(encoded))


@dataclasses.dataclass(frozen=True)
class Token:
    """An access token and when it expires, as received from the token endpoint."""

    access_token: str = dataclasses.field(repr=False)
    received_at: dt.datetime
    expires_at: dt.datetime
    refresh_token: str | None = dataclasses.field(default=None, repr=False)
    refresh_expires_at: dt.datetime | None = None
    scope: str | None = None

    def __repr__(self) -> str:
        return (
            f"Token(fingerprint={fingerprint(self.access_token)!r}, "
            f"expires_at={format_time(self.expires_at)!r}, "
            f"refresh_token={'<held>' if self.refresh_token else None})"
        )

    @property
    def token_type(self) -> str:
        """Always ``Bearer``, whatever case the endpoint used."""
        return "Bearer"

    @property
    def authorization(self) -> str:
        """The value of an HTTP ``Authorization`` header."""
        return f"Bearer {self.access_token}"

    @property
    def lifetime(self) -> dt.timedelta:
        return self.expires_at - self.received_at

    def is_valid(self, now: dt.datetime) -> bool:
        return now < self.expires_at

    def refresh_token_usable(self, now: dt.datetime) -> bool:
        """A refresh token is held and has not expired (with 5 s of slack)."""
        if not self.refresh_token:
            return False
        if self.refresh_expires_at is None:
            return True
        return now + dt.timedelta(seconds=5) < self.refresh_expires_at

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.access_token, self.refresh_token) if s)


def fingerprint(access_token: str) -> str:
    """A short, non-reversible name for a token: the first 12 hex digits of its SHA-256."""
    return "sha256:" + hashlib.sha256(access_token.encode()).hexdigest()[:12]


def digest(access_token: str) -> str:
    """The full SHA-256 of a token, kept in the credential's status as proof of what
    the operator wrote: a stored token is reused only when it matches."""
    return "sha256:" + hashlib.sha256(access_token.encode()).hexdigest()


def usable_access_token(text: object) -> bool:
    """A non-empty token without whitespace or control characters (it goes into an
    HTTP header: a CR/LF would split it)."""
    return (
        isinstance(text, str)
        and bool(text)
        and not any(ch.isspace() or not ch.isprintable() for ch in text)
    )


def format_time(when: dt.datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` and whole seconds, as Kubernetes writes times."""
    # isoformat is twice as fast as strftime; this runs dozens of times per refresh
    return when.astimezone(dt.UTC).isoformat(timespec="seconds")[:19] + "Z"


def parse_time(text: str) -> dt.datetime:
    """Parse an RFC 3339 instant; raises ``ValueError`` on anything else, an instant
    outside what ``datetime`` represents in UTC (``9999-12-31T23:59:59-23:59``) and
    one at its very edges (``0001-01-01``: a second's arithmetic on it overflows)
    included. Callers catch one exception class."""
    if len(text) > MAX_TIME_TEXT:
        raise ValueError("time text too long")
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if value.tzinfo is None:
            raise ValueError("time without a timezone")
        value = value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("time out of range") from None
    if not EARLIEST <= value <= LATEST:
        raise ValueError("time out of range")
    return value
