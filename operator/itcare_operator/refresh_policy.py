"""When to refresh a token, and when to retry after a failure.

Pure functions: the clock (``now``) and the randomness (``rand`` in [0, 1)) are
arguments, so every rule is testable without patching time.

Rules
-----
* Refresh when ``margin`` seconds of validity remain. ``margin`` is
  ``refreshBeforeExpirySeconds`` when set, else one third of the lifetime; it is
  never more than 90 % of the lifetime, and never less than the *delivery floor*
  ``min(volume_delivery, lifetime / 2)``: a pod reads the Secret through a volume
  that the kubelet updates only on its periodic pod sync, up to ``volume_delivery``
  after the write (measured on a real node, see docs/consuming-tokens.md). A margin
  below the floor is raised to it, and :func:`margin_notice` says so; a token whose
  half-life is shorter than the delivery bound cannot be delivered in time, which
  :func:`margin_notice` reports too.
* Jitter only moves a refresh *earlier*, by up to 10 % of the time before the
  refresh point, so credentials created together spread out but none is late.
* After a failure, retry with exponential backoff and jitter, bounded by the
  remaining validity: while the token lives, a retry is never scheduled later than
  half of what is left, so retries get denser as expiry approaches. Rejected
  credentials (401) back off much longer than transient errors. ``Retry-After`` is
  honoured unless it would let a still-valid token lapse. Retries are never closer
  than ``min_retry``; when less than that remains, the retry is at expiry itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from itcare_operator.errors import FailureKind

__all__ = [
    "DEFAULT_VOLUME_DELIVERY",
    "RefreshPolicy",
    "backoff_delay",
    "margin_notice",
    "next_refresh_at",
    "refresh_margin",
]

DEFAULT_VOLUME_DELIVERY = dt.timedelta(seconds=120)
JITTER_FRACTION = 0.10


@dataclasses.dataclass(frozen=True)
class RefreshPolicy:
    """Knobs of the schedule; defaults match the public contract."""

    refresh_before: dt.timedelta | None = None
    """``spec.refreshBeforeExpirySeconds``; ``None``: one third of the lifetime."""

    volume_delivery: dt.timedelta = DEFAULT_VOLUME_DELIVERY
    """Longest time the kubelet takes to put a written Secret into pods' volumes (its
    ``syncFrequency``, 1 min by default, plus the time to the next pod sync)."""

    transient_base: float = 2.0
    """First retry delay after a transient failure, in seconds."""

    transient_cap: float = 300.0
    """Longest retry delay after transient failures, in seconds."""

    rejected_base: float = 60.0
    """First retry delay after the endpoint rejected the credentials, in seconds."""

    rejected_cap: float = 3600.0
    """Longest retry delay after rejections, in seconds."""

    expired_cap: float = 5.0
    """Longest retry delay after transient failures while no valid token is held, so
    that pods get a token within seconds of an outage's end (each attempt still passes
    the origin's rate limit and concurrency cap)."""

    min_retry: float = 1.0
    """Never retry sooner than this, in seconds (protects the endpoint)."""


def refresh_margin(lifetime: dt.timedelta, policy: RefreshPolicy) -> dt.timedelta:
    """How long before expiry a token of this lifetime is refreshed (before jitter)."""
    margin = policy.refresh_before if policy.refresh_before is not None else lifetime / 3
    margin = min(margin, lifetime * 0.9)
    return max(margin, delivery_floor(lifetime, policy))


def delivery_floor(lifetime: dt.timedelta, policy: RefreshPolicy) -> dt.timedelta:
    """The least margin that lets the kubelet deliver a token before the old one expires
    (capped at half the lifetime: a token must serve at least that long)."""
    return min(policy.volume_delivery, lifetime / 2)


def margin_notice(lifetime: dt.timedelta, policy: RefreshPolicy) -> str | None:
    """Why the refresh margin is not what the spec asked for, or cannot be enough."""
    floor = delivery_floor(lifetime, policy)
    delivery = policy.volume_delivery.total_seconds()
    if lifetime / 2 < policy.volume_delivery:
        return (
            f"tokens live {lifetime.total_seconds():.0f} s: pods reading the Secret as a "
            f"volume get a new token up to {delivery:.0f} s after it is written, so they "
            f"may read an expired one (refresh {floor.total_seconds():.0f} s before expiry)"
        )
    if policy.refresh_before is not None and policy.refresh_before < floor:
        return (
            f"refreshBeforeExpirySeconds {policy.refresh_before.total_seconds():.0f} raised "
            f"to {floor.total_seconds():.0f}: the kubelet takes up to {delivery:.0f} s to "
            "deliver a Secret to pods"
        )
    return None


def next_refresh_at(
    received_at: dt.datetime,
    expires_at: dt.datetime,
    now: dt.datetime,
    policy: RefreshPolicy,
    rand: float,
) -> dt.datetime:
    """The instant to refresh a token received at ``received_at``.

    Never later than ``expires_at - refresh_margin``; jitter only earlier; never in
    the past (a token found overdue, for example after a restart, is refreshed now).
    """
    lifetime = max(expires_at - received_at, dt.timedelta(0))
    due = expires_at - refresh_margin(lifetime, policy)
    usable = max(due - received_at, dt.timedelta(0))
    due -= usable * (JITTER_FRACTION * min(max(rand, 0.0), 1.0))
    return max(due, now)


def backoff_delay(
    attempt: int,
    kind: FailureKind,
    now: dt.datetime,
    expires_at: dt.datetime | None,
    policy: RefreshPolicy,
    rand: float,
    retry_after: float | None = None,
) -> dt.timedelta:
    """Delay before retry number ``attempt`` (1 for the first retry) after a failure.

    ``expires_at`` is the expiry of the token currently held, or ``None``.
    """
    if kind is FailureKind.REJECTED:
        base, cap = policy.rejected_base, policy.rejected_cap
    else:
        base, cap = policy.transient_base, policy.transient_cap
        if expires_at is None or expires_at <= now:
            cap = min(cap, policy.expired_cap)
    exponent = min(max(attempt, 1) - 1, 30)
    delay = min(cap, base * 2.0**exponent)
    delay *= 0.5 + 0.5 * min(max(rand, 0.0), 1.0)  # "equal jitter": at least half the step
    delay = max(delay, policy.min_retry)
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, 24 * 3600.0)
    if expires_at is not None and expires_at > now:
        remaining = (expires_at - now).total_seconds()
        if remaining <= policy.min_retry:
            # Too close to retry sooner than min_retry: try again the moment it expires.
            delay = remaining
        else:
            # Denser as expiry approaches; never beyond expiry while the token lives.
            delay = min(delay, max(remaining / 2, policy.min_retry))
    return dt.timedelta(seconds=delay)
