"""``ITCareCredential.status``: conditions with Kubernetes API conventions.

Ready follows cert-manager: True while the target Secret holds a token valid now,
even while refreshes fail. Refreshed reports the latest attempt.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from itcare_operator.errors import Reason
from itcare_operator.token import format_time

__all__ = [
    "MAX_FAILED_NAMESPACES",
    "Condition",
    "Fanout",
    "Observation",
    "ready_condition",
    "render_cluster_status",
    "render_status",
    "status_changed",
]

# While a credential keeps failing the same way, its status is patched at most this
# often: each attempt changes only its count, times and message.
FAILING_STATUS_INTERVAL = dt.timedelta(seconds=30)
MAX_FAILED_NAMESPACES = 50  # entries in status.failedNamespaces (the count is complete)


@dataclasses.dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Observation:
    """Everything the status is computed from; produced by the reconciler."""

    generation: int
    suspended: bool
    token_expires_at: dt.datetime | None
    refresh_token_expires_at: dt.datetime | None
    refreshed: Condition | None  # None: no attempt yet in this operator's life
    last_refresh: dt.datetime | None
    next_refresh: dt.datetime | None
    last_failure: dt.datetime | None
    consecutive_failures: int
    token_fingerprint: str | None = None  # digest of the token held (target_secret.trusted_token)


def status_changed(new: Mapping[str, Any], stored: Mapping[str, Any] | None) -> bool:
    """Does ``new`` differ from the status on the server?

    A merge patch stores no ``null``: a field we render as ``None`` is absent from the
    stored status. Compared without them, an unchanged status after a restart is not
    patched again (it was, once per credential, before this).
    """
    if stored is None:
        return True
    return {k: v for k, v in new.items() if v is not None} != {
        k: v for k, v in stored.items() if v is not None
    }


def _essence(status: Mapping[str, Any]) -> tuple[Any, ...]:
    conditions = tuple(
        (c.get("type"), c.get("status"), c.get("reason"), c.get("observedGeneration"))
        for c in status.get("conditions") or []
    )
    return (
        conditions,
        *(
            status.get(k)
            for k in (
                "observedGeneration",
                "tokenExpiresAt",
                "tokenFingerprint",
                "lastRefreshTime",
                "summaryReason",
                "refreshTokenExpiresAt",
            )
        ),
    )


def only_attempt_details_changed(new: Mapping[str, Any], stored: Mapping[str, Any]) -> bool:
    """``new`` differs from ``stored`` only in what every failed attempt changes (the
    failure count and time, the next attempt, a condition's message), not in a reason,
    a readiness, the token or the generation: such a status may wait (see
    :data:`FAILING_STATUS_INTERVAL`)."""
    return _essence(new) == _essence(stored)


def ready_condition(obs: Observation, now: dt.datetime) -> Condition:
    expires = obs.token_expires_at
    valid = expires is not None and now < expires
    if obs.suspended:
        state = (
            f"token valid until {format_time(expires)}" if valid and expires else "no valid token"
        )
        return Condition("Ready", valid, Reason.SUSPENDED, f"refreshing is suspended; {state}")
    if valid and expires is not None:
        return Condition(
            "Ready", True, Reason.TOKEN_VALID, f"token valid until {format_time(expires)}"
        )
    if expires is not None:
        return Condition(
            "Ready", False, Reason.TOKEN_EXPIRED, f"token expired at {format_time(expires)}"
        )
    return Condition("Ready", False, Reason.NO_TOKEN, "no token has been obtained yet")


def _condition_dict(
    cond: Condition, previous: Sequence[Mapping[str, Any]], generation: int, now: dt.datetime
) -> dict[str, Any]:
    status = "True" if cond.status else "False"
    before = next((c for c in previous if c.get("type") == cond.type), None)
    changed = before is None or before.get("status") != status
    since = (
        format_time(now)
        if changed or not before
        else before.get("lastTransitionTime", format_time(now))
    )
    return {
        "type": cond.type,
        "status": status,
        "reason": str(cond.reason),
        "message": cond.message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def render_status(
    obs: Observation, previous: Mapping[str, Any] | None, now: dt.datetime
) -> dict[str, Any]:
    """The whole status object; ``previous`` keeps lastTransitionTime stable."""
    previous = previous or {}
    old_conditions = previous.get("conditions") or []
    ready = ready_condition(obs, now)
    conditions = [_condition_dict(ready, old_conditions, obs.generation, now)]
    refreshed = obs.refreshed
    if refreshed is None:
        # Keep what an earlier run of the operator reported, if anything.
        kept = next((c for c in old_conditions if c.get("type") == "Refreshed"), None)
        if kept is not None:
            conditions.append(dict(kept))
    else:
        conditions.append(_condition_dict(refreshed, old_conditions, obs.generation, now))
    failing = next(
        (c for c in conditions if c["type"] == "Refreshed" and c["status"] == "False"), None
    )
    summary = failing["reason"] if failing else conditions[0]["reason"]

    def when(value: dt.datetime | None, key: str) -> str | None:
        return format_time(value) if value else previous.get(key)

    return {
        "observedGeneration": obs.generation,
        "conditions": conditions,
        "summaryReason": summary,
        "tokenExpiresAt": format_time(obs.token_expires_at) if obs.token_expires_at else None,
        "tokenFingerprint": obs.token_fingerprint,
        "refreshTokenExpiresAt": (
            format_time(obs.refresh_token_expires_at) if obs.refresh_token_expires_at else None
        ),
        "lastRefreshTime": when(obs.last_refresh, "lastRefreshTime"),
        "nextRefreshTime": format_time(obs.next_refresh) if obs.next_refresh else None,
        "lastFailureTime": when(obs.last_failure, "lastFailureTime"),
        "consecutiveFailures": obs.consecutive_failures,
    }


@dataclasses.dataclass(frozen=True)
class Fanout:
    """Where a ClusterITCareCredential's token went."""

    selected: int
    synced: int
    failed: Mapping[str, tuple[str, str]]  # namespace -> (reason, message)
    missing: Sequence[str] = ()  # listed by name, without the instance pinned
    pinned: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> uid


def _missing_note(missing: Sequence[str]) -> str:
    if not missing:
        return ""
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return (
        f"; listed but absent, or created again since the credential was edited "
        f"(edit it to deliver there): {shown}"
    )


def render_cluster_status(
    obs: Observation, fanout: Fanout, previous: Mapping[str, Any] | None, now: dt.datetime
) -> dict[str, Any]:
    """The status of a ClusterITCareCredential: that of an ITCareCredential, plus a
    ``Synced`` condition and the namespace counts."""
    status = render_status(obs, previous, now)
    failed = sorted(fanout.failed.items())
    if failed:
        shown = ", ".join(f"{ns} ({reason})" for ns, (reason, _) in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        synced = Condition(
            "Synced",
            False,
            Reason.NAMESPACES_FAILED,
            f"{len(failed)} of {fanout.selected} namespaces failed: {shown}{more}",
        )
    else:
        synced = Condition(
            "Synced",
            True,
            Reason.NAMESPACES_SYNCED,
            f"{fanout.synced} of {fanout.selected} selected namespaces hold the token"
            + _missing_note(fanout.missing),
        )
    old = (previous or {}).get("conditions") or []
    status["conditions"].append(_condition_dict(synced, old, obs.generation, now))
    if status["summaryReason"] == status["conditions"][0]["reason"] and failed:
        status["summaryReason"] = str(Reason.NAMESPACES_FAILED)
    status["selectedNamespaces"] = fanout.selected
    status["syncedNamespaces"] = fanout.synced
    status["failedNamespaceCount"] = len(failed)
    status["failedNamespaces"] = [
        {"namespace": ns, "reason": reason, "message": message[:256]}
        for ns, (reason, message) in failed[:MAX_FAILED_NAMESPACES]
    ]
    # Listed by name but absent, or created again since this generation was first
    # reconciled: no copy goes there until the credential is edited.
    status["missingNamespaces"] = list(fanout.missing[:MAX_FAILED_NAMESPACES]) or None
    status["pinnedNamespaces"] = dict(sorted(fanout.pinned.items())) or None
    return status
