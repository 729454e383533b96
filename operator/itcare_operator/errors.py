"""One exception per failure class, each carrying its Refreshed condition reason.

Keycloak's errors are converted to these in one place (``token_endpoint``); the
operator turns them into status reasons, events and metrics without inspecting
HTTP details. Messages never contain a token, client id or client secret.
"""

from __future__ import annotations

import enum

__all__ = [
    "CredentialError",
    "EndpointUnavailable",
    "FailureKind",
    "InvalidGrant",
    "InvalidTokenResponse",
    "RateLimited",
    "Reason",
    "RequestRejected",
    "TokenEndpointError",
]


class Reason(enum.StrEnum):
    """Condition reasons of the public contract (stable; more may be added)."""

    # Ready
    TOKEN_VALID = "TokenValid"
    NO_TOKEN = "NoToken"
    TOKEN_EXPIRED = "TokenExpired"
    SUSPENDED = "Suspended"
    # Refreshed
    REFRESH_SUCCEEDED = "RefreshSucceeded"
    INVALID_CLIENT = "InvalidClient"
    UNAUTHORIZED_CLIENT = "UnauthorizedClient"
    INVALID_SCOPE = "InvalidScope"
    INVALID_REQUEST = "InvalidRequest"
    TOKEN_ENDPOINT_UNAVAILABLE = "TokenEndpointUnavailable"
    RATE_LIMITED = "RateLimited"
    INVALID_TOKEN_RESPONSE = "InvalidTokenResponse"
    SOURCE_SECRET_NOT_FOUND = "SourceSecretNotFound"
    SOURCE_SECRET_INVALID = "SourceSecretInvalid"
    SOURCE_SECRET_NOT_LABELED = "SourceSecretNotLabeled"
    TOKEN_URL_NOT_ALLOWED = "TokenURLNotAllowed"
    TARGET_SECRET_CONFLICT = "TargetSecretConflict"
    INVALID_SPEC = "InvalidSpec"
    SOURCE_NAMESPACE_NOT_ALLOWED = "SourceNamespaceNotAllowed"  # ClusterITCareCredential
    UNEXPECTED_ERROR = "UnexpectedError"  # a bug or an input nobody foresaw; retried
    # Synced (ClusterITCareCredential) and per-namespace reasons in status.failedNamespaces
    NAMESPACES_SYNCED = "NamespacesSynced"
    NAMESPACES_FAILED = "NamespacesFailed"
    TARGET_WRITE_FAILED = "TargetWriteFailed"


class FailureKind(enum.Enum):
    """How the refresh schedule should react to a failure."""

    TRANSIENT = "transient"  # outage, overload, garbage: retry soon
    REJECTED = "rejected"  # the endpoint refused the credentials: retry much later
    CONFIGURATION = "configuration"  # our side must change (spec, Secret): wait for a change


class CredentialError(Exception):
    """A failure with a contract reason. ``str(e)`` is safe to show to users."""

    reason: Reason = Reason.INVALID_SPEC
    kind: FailureKind = FailureKind.CONFIGURATION

    def __init__(self, message: str, *, reason: Reason | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TokenEndpointError(CredentialError):
    """The token endpoint did not give us a token."""

    kind = FailureKind.TRANSIENT
    reason = Reason.TOKEN_ENDPOINT_UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.status_code = status_code
        self.retry_after = retry_after


class EndpointUnavailable(TokenEndpointError):
    """Network error, timeout, TLS failure, 5xx: try again later."""


class RateLimited(TokenEndpointError):
    """429 (from a proxy in front of Keycloak)."""

    reason = Reason.RATE_LIMITED


class InvalidTokenResponse(TokenEndpointError):
    """A response we cannot use: not JSON, missing or absurd fields, too large."""

    reason = Reason.INVALID_TOKEN_RESPONSE


class RequestRejected(TokenEndpointError):
    """Keycloak refused the client or the request (401 and most 400s)."""

    kind = FailureKind.REJECTED
    reason = Reason.UNAUTHORIZED_CLIENT


class InvalidGrant(RequestRejected):
    """The refresh token was refused (400 invalid_grant): fall back to client_credentials."""
