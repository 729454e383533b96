"""``should_refresh``: the one rule that decides whether a credential gets a new token,
as a table (like cert-manager's ``shouldReissue`` tests)."""

from __future__ import annotations

import datetime as dt

import pytest

from itcare_operator.model import (
    FORCED_REFRESH_INTERVAL,
    Action,
    CredentialState,
    should_refresh,
)
from itcare_operator.token import Token

NOW = dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC)
S = dt.timedelta(seconds=1)


def state(
    *,
    token_left: float | None = 600,
    refresh_in: float | None = 200,
    force: bool = False,
    retry_in: float | None = None,
    forced_ago: float | None = None,
) -> CredentialState[None]:
    st: CredentialState[None] = CredentialState("ns", "c", out=None)
    if token_left is not None:
        st.token = Token("t", NOW - 600 * S, NOW + token_left * S)
    st.refresh_at = None if refresh_in is None else NOW + refresh_in * S
    st.force = force
    st.retry_at = None if retry_in is None else NOW + retry_in * S
    st.forced_at = None if forced_ago is None else NOW - forced_ago * S
    return st


CASES = [
    # (case, state kwargs, suspended, url allowed, action, wake in s, next attempt in s)
    ("valid, not due: keep it, wake at refresh", {}, False, True, Action.KEEP, 200, None),
    ("due: refresh", {"refresh_in": -1}, False, True, Action.REFRESH, None, None),
    ("due exactly now: refresh", {"refresh_in": 0}, False, True, Action.REFRESH, None, None),
    (
        "no token: refresh",
        {"token_left": None, "refresh_in": None},
        False,
        True,
        Action.REFRESH,
        None,
        None,
    ),
    ("expired: refresh", {"token_left": -5}, False, True, Action.REFRESH, None, None),
    ("forced: refresh", {"force": True}, False, True, Action.REFRESH, None, None),
    (
        "forced 3 s after the last forced one: hold the valid token",
        {"force": True, "forced_ago": 3},
        False,
        True,
        Action.HOLD,
        FORCED_REFRESH_INTERVAL.total_seconds() - 3,
        FORCED_REFRESH_INTERVAL.total_seconds() - 3,
    ),
    (
        "forced after the interval: refresh",
        {"force": True, "forced_ago": FORCED_REFRESH_INTERVAL.total_seconds()},
        False,
        True,
        Action.REFRESH,
        None,
        None,
    ),
    (
        "forced too soon but the token expired: refresh anyway",
        {"force": True, "forced_ago": 3, "token_left": -1},
        False,
        True,
        Action.REFRESH,
        None,
        None,
    ),
    (
        "forced too soon but due: refresh anyway",
        {"force": True, "forced_ago": 3, "refresh_in": -1},
        False,
        True,
        Action.REFRESH,
        None,
        None,
    ),
    (
        "due, a retry pending: back off",
        {"refresh_in": -1, "retry_in": 30},
        False,
        True,
        Action.BACK_OFF,
        30,
        30,
    ),
    (
        "a failed attempt, valid and not due: retried at the retry time",
        {"retry_in": 0},
        False,
        True,
        Action.REFRESH,
        None,
        None,
    ),
    (
        "a failed attempt, valid and not due, retry pending: back off",
        {"retry_in": 20},
        False,
        True,
        Action.BACK_OFF,
        20,
        20,
    ),
    (
        "retry time reached: refresh",
        {"refresh_in": -1, "retry_in": 0},
        False,
        True,
        Action.REFRESH,
        None,
        None,
    ),
    (
        "suspended: never ask, wake at expiry",
        {"force": True},
        True,
        True,
        Action.SUSPENDED,
        600,
        None,
    ),
    (
        "suspended without a token: nothing to wake for",
        {"token_left": None, "refresh_in": None},
        True,
        True,
        Action.SUSPENDED,
        None,
        None,
    ),
    (
        "due, URL not allowed: refuse",
        {"refresh_in": -1},
        False,
        False,
        Action.URL_REFUSED,
        None,
        None,
    ),
    ("not due, URL not allowed: keep (no request)", {}, False, False, Action.KEEP, 200, None),
]


@pytest.mark.parametrize(
    ("kwargs", "suspended", "url_allowed", "action", "wake", "attempt"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_should_refresh(
    kwargs: dict[str, object],
    suspended: bool,
    url_allowed: bool,
    action: Action,
    wake: float | None,
    attempt: float | None,
) -> None:
    decision = should_refresh(
        state(**kwargs),  # type: ignore[arg-type]
        suspended=suspended,
        url_allowed=url_allowed,
        now=NOW,
    )
    assert decision.action is action
    assert decision.wake == (None if wake is None else NOW + wake * S)
    assert decision.next_attempt == (None if attempt is None else NOW + attempt * S)


def test_the_rule_reads_the_state_and_changes_nothing() -> None:
    st = state(force=True, forced_ago=3)
    before = repr(st), st.force, st.refresh_at, st.retry_at, st.forced_at
    should_refresh(st, suspended=False, url_allowed=True, now=NOW)
    assert (repr(st), st.force, st.refresh_at, st.retry_at, st.forced_at) == before


def test_a_forced_attempt_passes_a_pending_backoff_once_per_interval() -> None:
    """Shared-cluster item 5: with no valid token, forced attempts share the limit."""
    interval = FORCED_REFRESH_INTERVAL.total_seconds()
    rejected = {"token_left": None, "refresh_in": None, "retry_in": 3600.0, "force": True}
    first = should_refresh(state(**rejected), suspended=False, url_allowed=True, now=NOW)
    assert first.action is Action.REFRESH
    again = should_refresh(
        state(**rejected, forced_ago=3), suspended=False, url_allowed=True, now=NOW
    )
    assert again.action is Action.BACK_OFF
    assert again.wake == NOW + (interval - 3) * S
    unforced = should_refresh(
        state(**{**rejected, "force": False}), suspended=False, url_allowed=True, now=NOW
    )
    assert unforced.action is Action.BACK_OFF and unforced.wake == NOW + 3600 * S
