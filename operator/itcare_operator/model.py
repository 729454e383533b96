"""What the operator knows about one credential, and the rule that decides what now.

Pure: no I/O, no clock of its own (``now`` is passed in), no Kubernetes or HTTP
library. Both kinds share it; what differs is where the token goes (see
:mod:`delivery`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from itcare_operator.errors import CredentialError, FailureKind, Reason
from itcare_operator.refresh_policy import RefreshPolicy, next_refresh_at
from itcare_operator.source_secret import SOURCE_LABEL
from itcare_operator.spec import CredentialSpec, InvalidSpec
from itcare_operator.status import Condition
from itcare_operator.token import Token, format_time, parse_time

__all__ = [
    "CONFLICT_RETRY",
    "FORCED_REFRESH_INTERVAL",
    "REFRESH_ANNOTATION",
    "Action",
    "CredentialState",
    "Decision",
    "Failure",
    "Key",
    "resumed_refresh_at",
    "should_refresh",
    "slim",
    "slim_credential",
    "slim_secret",
    "source_fingerprint",
]

REFRESH_ANNOTATION = "itcare.cegedim.cloud/refresh-requested-at"
# Seconds between two forced refreshes of one credential (annotation, spec or source
# change): edits cannot spend the token endpoint's shared budget.
FORCED_REFRESH_INTERVAL = dt.timedelta(seconds=10)
# A target Secret owned by someone else is looked at again slowly: a person has to act.
CONFLICT_RETRY = RefreshPolicy(transient_base=15.0, transient_cap=300.0)

Key = tuple[str, str]  # (namespace, name); the namespace is "" for the cluster kind
D = TypeVar("D")


@dataclasses.dataclass(slots=True)  # 10,000 of them: no per-instance __dict__
class CredentialState(Generic[D]):
    """One credential between reconciles. ``out`` is the delivery adapter's own record
    of where the token goes (one target Secret, or the copies of the cluster kind)."""

    namespace: str
    name: str
    out: D
    uid: str = ""
    generation: int = 0
    body: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    spec: CredentialSpec | InvalidSpec | None = None  # parsed once per generation
    source: Key | None = None  # the source Secret this spec names (index key)
    token: Token | None = None
    token_loaded: bool = False  # the stored token was looked for (restart safety)
    refresh_at: dt.datetime | None = None
    force: bool = False  # a new token is wanted (spec, source, annotation) until one is had
    retry_at: dt.datetime | None = None  # after a failure: no attempt before this
    forced_at: dt.datetime | None = None  # when the last forced refresh was sent
    refresh_request: str | None = None  # last seen value of the annotation
    source_fingerprint: str | None = None  # of the source Secret content used last
    failures: int = 0
    last_failure: dt.datetime | None = None
    last_refresh: dt.datetime | None = None
    refreshed: Condition | None = None
    status_sent: dict[str, Any] | None = None
    status_sent_at: dt.datetime | None = None  # when status_sent was patched
    events: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # to post
    event_reason: str | None = None  # reason of the last failure event (aggregation)
    ready_reason: str | None = None
    state: str = "not_ready"

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def deleting(self) -> bool:
        return bool((self.body.get("metadata") or {}).get("deletionTimestamp"))

    def valid_token(self, now: dt.datetime) -> Token | None:
        token = self.token
        return token if token is not None and token.is_valid(now) else None

    def source_keys(self) -> tuple[str, ...]:
        """The keys this credential reads of its source Secret (none while its spec
        is invalid)."""
        spec = self.spec
        if isinstance(spec, CredentialSpec):
            return (spec.client_id_key, spec.client_secret_key)
        return ()


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why a reconcile did not end with a fresh token, and how to go on.

    ``terminal``: nothing changes until the resource does (no retry, the forced
    refresh is dropped: the edit that fixes it forces a new one).
    """

    error: CredentialError
    terminal: bool = False
    policy: RefreshPolicy | None = None  # backoff other than the spec's
    kind: FailureKind | None = None  # overrides the error's own kind
    retry_after: float | None = None  # seconds, from the token endpoint

    @classmethod
    def of(
        cls,
        reason: Reason,
        message: str,
        *,
        terminal: bool = False,
        policy: RefreshPolicy | None = None,
    ) -> Failure:
        """A failure found by the operator itself (no exception raised)."""
        return cls(CredentialError(message, reason=reason), terminal=terminal, policy=policy)


class Action(enum.Enum):
    """What a reconcile does with the token it has (see :func:`should_refresh`)."""

    SUSPENDED = "suspended"  # keep delivering the token while it lives; never ask
    KEEP = "keep"  # valid and not due: deliver it again (drift repair), wait
    BACK_OFF = "back_off"  # a failed attempt is to be retried later: deliver, wait
    HOLD = "hold"  # forced again too soon: keep the valid token until the interval ends
    URL_REFUSED = "url_refused"  # a token is needed but its URL is not allowed
    REFRESH = "refresh"  # ask the token endpoint now


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    wake: dt.datetime | None = None  # when to look again (expiry is added by the caller)
    next_attempt: dt.datetime | None = None  # the time announced as nextRefreshTime


def should_refresh(
    state: CredentialState[Any], *, suspended: bool, url_allowed: bool, now: dt.datetime
) -> Decision:
    """The one rule that decides whether a credential gets a new token now.

    Like cert-manager's ``shouldReissue``: a new token is wanted when one is forced
    (spec, source or annotation change), when none is held or it expired, or when
    the refresh time has come; but never while suspended, never before a pending
    retry time unless forced, never more often than :data:`FORCED_REFRESH_INTERVAL`
    when forced,
    and never from a URL outside the allowlist. ``state.refresh_at`` is set for any
    held token before this is asked.
    """
    token = state.token
    if suspended:
        return Decision(Action.SUSPENDED, wake=token.expires_at if token else None)
    valid = token is not None and token.is_valid(now)
    due = state.refresh_at is not None and now >= state.refresh_at
    # A failed attempt is retried (retry_at) even while the held token is valid and
    # not due: its forcing was consumed by the attempt.
    if not (state.force or not valid or due or state.retry_at is not None):
        return Decision(Action.KEEP, wake=state.refresh_at)
    # Forced attempts (an edit, a source change, the annotation) share one limit per
    # credential, held token or not: on a rejected account each edit would otherwise
    # send a request at once.
    earliest = state.forced_at + FORCED_REFRESH_INTERVAL if state.forced_at else None
    forced_now = state.force and (earliest is None or now >= earliest)
    if state.retry_at is not None and now < state.retry_at and not forced_now:
        wake = state.retry_at
        if state.force and earliest is not None and earliest < wake:
            wake = earliest  # the forced attempt overrides the backoff, once the limit allows
        return Decision(Action.BACK_OFF, wake=wake, next_attempt=wake)
    if state.force and valid and not due and not forced_now:
        assert earliest is not None
        return Decision(Action.HOLD, wake=earliest, next_attempt=earliest)
    if not url_allowed:
        return Decision(Action.URL_REFUSED)
    return Decision(Action.REFRESH)


def resumed_refresh_at(
    token: Token,
    status: Mapping[str, Any] | None,
    now: dt.datetime,
    policy: RefreshPolicy,
    rand: float,
) -> dt.datetime:
    """The refresh time of a token found at start-up.

    The status' ``nextRefreshTime`` is kept when it belongs to this token and is not
    later than the policy allows: a restart then changes no status (one patch per
    credential saved) and keeps the jitter that spread the credentials out.
    """
    fresh = next_refresh_at(token.received_at, token.expires_at, now, policy, rand)
    if not status or status.get("tokenExpiresAt") != format_time(token.expires_at):
        return fresh
    try:
        announced = parse_time(str(status.get("nextRefreshTime") or ""))
    except ValueError:
        return fresh
    latest = next_refresh_at(token.received_at, token.expires_at, now, policy, 0.0)
    return max(announced, now) if announced <= latest else fresh


# Base64 characters of a target Secret's data worth keeping: four keys holding a token
# (the endpoint's answer is capped far below this) with room to spare.
MAX_KEPT_DATA = 256 * 1024


def source_fingerprint(secret: Mapping[str, Any] | None, keys: tuple[str, ...] = ()) -> str:
    """A digest of what a credential reads of a source Secret (its identity, label and
    the values of ``keys``); never logged, never stored. A change elsewhere in the
    Secret is not a change for that credential."""
    if secret is None:
        return "absent"
    meta = secret.get("metadata") or {}
    data = secret.get("data") or {}
    material = repr(
        (
            meta.get("uid"),
            (meta.get("labels") or {}).get(SOURCE_LABEL),
            [(key, data.get(key)) for key in keys],
        )
    )
    return hashlib.sha256(material.encode()).hexdigest()


def slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An object (Secret, credential) without ``managedFields`` (large, never needed)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def slim_secret(secret: Mapping[str, Any]) -> dict[str, Any]:
    """A target Secret or copy as kept in memory: without ``managedFields``, and
    without its data when that is larger than any token we write
    (:data:`MAX_KEPT_DATA`): anyone who can edit the Secret can fill it up to 1 MiB.
    Without data it no longer matches what we want, so it is rewritten."""
    kept = slim(secret)
    data = kept.get("data")
    if isinstance(data, Mapping) and sum(len(str(v)) for v in data.values()) > MAX_KEPT_DATA:
        kept["data"] = {}
    return kept


def slim_credential(body: Mapping[str, Any]) -> dict[str, Any]:
    """A credential as kept in memory: without ``managedFields`` and ``status`` (the
    status we last wrote is kept apart, as ``status_sent``)."""
    return {k: v for k, v in slim(body).items() if k != "status"}
