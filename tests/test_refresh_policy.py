"""Refresh schedule and backoff: pure functions, injected clock and randomness."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from itcare_operator.errors import FailureKind
from itcare_operator.refresh_policy import (
    RefreshPolicy,
    backoff_delay,
    margin_notice,
    next_refresh_at,
    refresh_margin,
)

T0 = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
S = dt.timedelta(seconds=1)

lifetimes = st.integers(min_value=1, max_value=86400 * 2)
rands = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
overrides = st.one_of(st.none(), st.integers(min_value=30, max_value=86400))


def test_default_refreshes_at_two_thirds_of_1200s() -> None:
    at = next_refresh_at(T0, T0 + 1200 * S, T0, RefreshPolicy(), rand=0.0)
    assert at == T0 + 800 * S


def test_override_is_used() -> None:
    policy = RefreshPolicy(refresh_before=dt.timedelta(seconds=600))
    assert next_refresh_at(T0, T0 + 1200 * S, T0, policy, rand=0.0) == T0 + 600 * S


def test_override_below_the_delivery_bound_is_raised_to_it() -> None:
    policy = RefreshPolicy(refresh_before=dt.timedelta(seconds=30))
    assert next_refresh_at(T0, T0 + 1200 * S, T0, policy, rand=0.0) == T0 + 1080 * S
    shorter = RefreshPolicy(refresh_before=30 * S, volume_delivery=25 * S)
    assert next_refresh_at(T0, T0 + 1200 * S, T0, shorter, rand=0.0) == T0 + 1170 * S


@pytest.mark.parametrize(
    ("lifetime", "before", "delivery", "says"),
    [
        # ITCare's 1200 s tokens with the defaults: nothing to report.
        (1200, None, 120, None),
        (1200, 400, 120, None),
        # An override below the delivery bound is raised, and the status says so.
        (1200, 30, 120, "refreshBeforeExpirySeconds 30 raised to 120"),
        (1200, 119, 120, "refreshBeforeExpirySeconds 119 raised to 120"),
        (1200, 120, 120, None),
        # Tokens whose half-life is below the bound cannot reach volumes in time.
        (120, None, 120, "tokens live 120 s"),
        (239, None, 120, "tokens live 239 s"),
        (240, None, 120, None),
        # A faster kubelet (shorter syncFrequency) allows shorter tokens.
        (60, None, 25, None),
        (60, 10, 25, "refreshBeforeExpirySeconds 10 raised to 25"),
        (40, None, 25, "tokens live 40 s"),
    ],
)
def test_margin_notice(lifetime: int, before: int | None, delivery: int, says: str | None) -> None:
    policy = RefreshPolicy(
        refresh_before=None if before is None else before * S, volume_delivery=delivery * S
    )
    notice = margin_notice(lifetime * S, policy)
    if says is None:
        assert notice is None
    else:
        assert notice is not None and notice.startswith(says), notice


def test_short_lifetime_refreshes_at_half() -> None:
    assert refresh_margin(60 * S, RefreshPolicy()) == 30 * S
    assert next_refresh_at(T0, T0 + 30 * S, T0, RefreshPolicy(), rand=0.0) == T0 + 15 * S


def test_full_jitter_moves_earlier_by_a_tenth() -> None:
    at = next_refresh_at(T0, T0 + 1200 * S, T0, RefreshPolicy(), rand=1.0)
    assert at == T0 + 720 * S


def test_overdue_token_is_refreshed_now() -> None:
    now = T0 + 1000 * S
    assert next_refresh_at(T0, T0 + 1200 * S, now, RefreshPolicy(), rand=0.5) == now


@given(lifetime=lifetimes, override=overrides, rand=rands, jitter=rands)
def test_refresh_is_before_expiry_and_not_later_than_margin(
    lifetime: int, override: int | None, rand: float, jitter: float
) -> None:
    policy = RefreshPolicy(refresh_before=None if override is None else override * S)
    expires = T0 + lifetime * S
    at = next_refresh_at(T0, expires, T0, policy, rand)
    assert T0 <= at < expires
    # never later than the delivery bound before expiry (or half of short lifetimes)
    assert at <= expires - min(policy.volume_delivery, lifetime * S / 2)
    # jitter only earlier
    assert at <= next_refresh_at(T0, expires, T0, policy, 0.0)


@given(lifetime=lifetimes, a=rands, b=rands)
def test_jitter_is_monotonic_in_rand(lifetime: int, a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    expires = T0 + lifetime * S
    assert next_refresh_at(T0, expires, T0, RefreshPolicy(), hi) <= next_refresh_at(
        T0, expires, T0, RefreshPolicy(), lo
    )


def test_jitter_spreads_refreshes() -> None:
    points = {
        next_refresh_at(T0, T0 + 1200 * S, T0, RefreshPolicy(), rand=i / 1000) for i in range(1000)
    }
    span = max(points) - min(points)
    assert span >= 79 * S


def test_backoff_grows_exponentially_without_token() -> None:
    policy = RefreshPolicy()
    delays = [
        backoff_delay(n, FailureKind.TRANSIENT, T0, None, policy, rand=1.0).total_seconds()
        for n in range(1, 12)
    ]
    assert delays[:2] == [2.0, 4.0]
    assert delays[2:] == [5.0] * 9  # no valid token: retried densely (the hot-path issue)
    assert policy.expired_cap == 5.0
    with_token = backoff_delay(12, FailureKind.TRANSIENT, T0, T0 + 3600 * S, policy, 1.0)
    assert with_token.total_seconds() == policy.transient_cap


def test_rejected_backs_off_much_longer() -> None:
    policy = RefreshPolicy()
    transient = backoff_delay(1, FailureKind.TRANSIENT, T0, None, policy, 0.0)
    rejected = backoff_delay(1, FailureKind.REJECTED, T0, None, policy, 0.0)
    assert rejected >= 10 * transient


def test_retry_after_is_honoured_while_it_keeps_the_token_alive() -> None:
    delay = backoff_delay(1, FailureKind.TRANSIENT, T0, T0 + 1000 * S, RefreshPolicy(), 0.0, 120)
    assert delay == 120 * S


def test_retry_after_never_lets_the_token_lapse() -> None:
    delay = backoff_delay(1, FailureKind.TRANSIENT, T0, T0 + 100 * S, RefreshPolicy(), 0.0, 3600)
    assert delay == 50 * S


def test_retries_get_denser_near_expiry() -> None:
    policy = RefreshPolicy()
    far = backoff_delay(9, FailureKind.TRANSIENT, T0, T0 + 400 * S, policy, 1.0)
    near = backoff_delay(9, FailureKind.TRANSIENT, T0, T0 + 20 * S, policy, 1.0)
    assert near == 10 * S < far


@given(
    attempt=st.integers(min_value=1, max_value=200),
    remaining=st.floats(min_value=0.01, max_value=86400.0),
    rand=rands,
    kind=st.sampled_from(list(FailureKind)),
    retry_after=st.one_of(st.none(), st.floats(min_value=0, max_value=10**6)),
)
def test_backoff_never_past_expiry_while_valid(
    attempt: int, remaining: float, rand: float, kind: FailureKind, retry_after: float | None
) -> None:
    expires = T0 + dt.timedelta(seconds=remaining)
    policy = RefreshPolicy()
    delay = backoff_delay(attempt, kind, T0, expires, policy, rand, retry_after)
    assert dt.timedelta(0) < delay
    if remaining > policy.min_retry:
        assert T0 + delay < expires
        assert delay.total_seconds() >= policy.min_retry
    else:  # retry at the moment it expires, not sooner than needed, not later
        assert T0 + delay == expires


def test_retries_near_expiry_are_finite() -> None:
    policy, now, expires = RefreshPolicy(), T0, T0 + 400 * S
    attempts = 0
    while now < expires:
        attempts += 1
        now += backoff_delay(20, FailureKind.TRANSIENT, now, expires, policy, 1.0)
        assert attempts < 30
    assert now == expires


@given(
    attempt=st.integers(min_value=1, max_value=200),
    rand=rands,
    kind=st.sampled_from(list(FailureKind)),
)
def test_backoff_bounded_without_token(attempt: int, rand: float, kind: FailureKind) -> None:
    policy = RefreshPolicy()
    delay = backoff_delay(attempt, kind, T0, None, policy, rand).total_seconds()
    assert policy.min_retry <= delay <= policy.rejected_cap


def test_a_refresh_margin_beyond_the_lifetime_is_cut_to_nine_tenths() -> None:
    policy = RefreshPolicy(refresh_before=2000 * S)
    assert refresh_margin(1000 * S, policy) == 900 * S


def test_randomness_outside_zero_to_one_is_clamped() -> None:
    policy = RefreshPolicy()
    for rand in (1.0, 2.0):
        at = next_refresh_at(T0, T0 + 1200 * S, T0, policy, rand=rand)
        assert at == next_refresh_at(T0, T0 + 1200 * S, T0, policy, rand=1.0)
    later = T0 + 3600 * S
    low = backoff_delay(5, FailureKind.TRANSIENT, T0, later, policy, rand=0.0)
    high = backoff_delay(5, FailureKind.TRANSIENT, T0, later, policy, rand=1.0)
    assert low == high / 2  # equal jitter: at least half the step
    assert backoff_delay(5, FailureKind.TRANSIENT, T0, later, policy, rand=2.0) == high


def test_a_token_expiring_now_is_retried_within_the_expired_cap() -> None:
    """At the expiry instant the token is already unusable: the short cap applies."""
    policy = RefreshPolicy()
    delay = backoff_delay(10, FailureKind.TRANSIENT, T0, T0, policy, rand=1.0)
    assert delay == policy.expired_cap * S


def test_retry_after_is_capped_at_a_day() -> None:
    policy = RefreshPolicy()
    delay = backoff_delay(1, FailureKind.TRANSIENT, T0, None, policy, rand=1.0, retry_after=1e7)
    assert delay == 86400 * S
