"""Service tier: issuance, refresh, backoff and conflicts against the in-memory API server.

The controller is driven through its watch entry points and the fake clock only; the
assertions read what the API server holds and what the token endpoint received.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
from typing import Any

import httpx

from itcare_operator.kube_api import Conflict
from itcare_operator.model import REFRESH_ANNOTATION
from itcare_operator.status import FAILING_STATUS_INTERVAL, only_attempt_details_changed
from tests.fake_kube import (
    LIFETIME,
    Clock,
    FakeKube,
    Operator,
    TokenServer,
    condition,
    credential,
    oauth_error,
    source_secret,
    token_in,
)

NS = "team-a"


def parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def started(**spec: Any) -> tuple[Operator, FakeKube, Clock, TokenServer]:
    kube, clock, tokens = FakeKube(), Clock(), TokenServer()
    kube.put(NS, source_secret(NS))
    kube.apply_credential(credential(NS, **spec))
    op = Operator(kube, clock, tokens)
    await op.start()
    return op, kube, clock, tokens


async def test_first_issuance_then_refresh_at_the_policy_time() -> None:
    op, kube, clock, tokens = await started()
    assert len(tokens.requests) == 1 and token_in(kube, NS) == "tok-1"
    assert kube.reasons() == ["TokenIssued"]
    assert ("get_secret", "acct") not in kube.calls  # the source comes from its watch
    status = kube.status_of(NS, "billing")
    assert condition(status, "Ready")["status"] == "True"
    refresh_at = parse(status["nextRefreshTime"])
    expires_at = parse(status["tokenExpiresAt"])
    # the default policy refreshes with a third of the lifetime left
    assert refresh_at <= expires_at - dt.timedelta(seconds=LIFETIME / 3)
    await op.advance((refresh_at - clock.now).total_seconds() - 1)
    assert len(tokens.requests) == 1
    kube.calls.clear()
    await op.advance(1)
    assert len(tokens.requests) == 2 and token_in(kube, NS) == "tok-2"
    writes = [m for m, _ in kube.calls if m in ("replace_secret", "create_secret", "patch_status")]
    assert writes == ["replace_secret", "patch_status"]  # one write, one status patch


async def test_nothing_due_means_no_call_at_all() -> None:
    op, kube, _clock, tokens = await started()
    kube.calls.clear()
    await op.advance(10)
    assert kube.calls == []  # no read, no write, not even a status patch
    assert len(tokens.requests) == 1


async def test_5xx_backoff_grows_is_capped_and_never_passes_expiry() -> None:
    op, kube, _clock, tokens = await started()
    expires_at = parse(kube.status_of(NS, "billing")["tokenExpiresAt"])
    tokens.answer(*[httpx.Response(503) for _ in range(200)])
    await op.advance(LIFETIME + 120)
    at = tokens.times[1:]
    before = [t for t in at if t < expires_at]
    assert len(before) >= 5, at
    # growing while far from expiry, capped, never scheduled past the expiry while the
    # token is valid, and denser near it (at most half the remaining time)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(at) if a < expires_at]
    assert gaps[1] > gaps[0] and max(gaps) <= 300.0  # the transient cap
    for a, b in itertools.pairwise(at):
        if a < expires_at:
            assert b <= expires_at, (a, b)
            remaining = (expires_at - a).total_seconds()
            assert (b - a).total_seconds() <= max(remaining / 2, 1.0) + 0.001, (a, b)
    after = [t for t in at if t > expires_at]
    late = [(b - a).total_seconds() for a, b in itertools.pairwise(after)]
    assert late and max(late) <= 30.0  # no valid token: capped short
    status = kube.status_of(NS, "billing")
    assert condition(status, "Refreshed")["reason"] == "TokenEndpointUnavailable"
    assert condition(status, "Ready")["status"] == "False"


async def test_rejected_credentials_back_off_long_and_keep_the_valid_token() -> None:
    op, kube, clock, tokens = await started()
    refresh_at = parse(kube.status_of(NS, "billing")["nextRefreshTime"])
    tokens.answer(*[oauth_error(401, "unauthorized_client", "bad secret") for _ in range(5)])
    await op.advance((refresh_at - clock.now).total_seconds())
    assert len(tokens.requests) == 2
    status = kube.status_of(NS, "billing")
    assert condition(status, "Refreshed")["reason"] == "UnauthorizedClient"
    assert condition(status, "Ready")["status"] == "True"  # the old token still serves
    assert token_in(kube, NS) == "tok-1"
    assert parse(status["nextRefreshTime"]) - clock.now >= dt.timedelta(seconds=30)
    await op.advance(29)
    assert len(tokens.requests) == 2  # rejected: no quick retry


async def test_retry_after_is_honoured() -> None:
    kube, clock, tokens = FakeKube(), Clock(), TokenServer()
    kube.put(NS, source_secret(NS))
    kube.apply_credential(credential(NS))
    tokens.answer(httpx.Response(503, headers={"Retry-After": "120"}))
    op = Operator(kube, clock, tokens)
    at = tokens.times
    await op.start()
    await op.advance(119)
    assert len(at) == 1
    await op.advance(1)
    assert len(at) == 2 and (at[1] - at[0]).total_seconds() == 120.0
    assert token_in(kube, NS) == "tok-2"


async def test_a_target_secret_that_is_not_ours_is_a_conflict() -> None:
    kube, clock, tokens = FakeKube(), Clock(), TokenServer()
    kube.put(NS, source_secret(NS))
    kube.put(NS, {"metadata": {"name": "itcare-token"}, "data": {"other": "eA=="}})
    kube.apply_credential(credential(NS))
    op = Operator(kube, clock, tokens)
    await op.start()
    assert tokens.requests == []  # no token minted for a Secret it cannot write
    assert kube.secrets[(NS, "itcare-token")]["data"] == {"other": "eA=="}
    status = kube.status_of(NS, "billing")
    assert condition(status, "Refreshed")["reason"] == "TargetSecretConflict"
    assert "TargetSecretConflict" in kube.reasons()


async def test_a_conflict_during_the_write_twice_then_success() -> None:
    op, kube, clock, tokens = await started()
    refresh_at = parse(kube.status_of(NS, "billing")["nextRefreshTime"])
    kube.fail("replace_secret", Conflict("409 Conflict", 409), times=2)
    await op.advance((refresh_at - clock.now).total_seconds())
    assert len(tokens.requests) == 2  # the conflicts cost no extra token
    assert token_in(kube, NS) == "tok-2"
    assert [m for m, _ in kube.calls].count("replace_secret") == 3
    assert condition(kube.status_of(NS, "billing"), "Refreshed")["status"] == "True"


async def test_a_target_deleted_behind_a_stale_cache_is_created_again() -> None:
    op, kube, clock, tokens = await started()
    refresh_at = parse(kube.status_of(NS, "billing")["nextRefreshTime"])
    kube.remove(NS, "itcare-token")
    kube.take_pending()  # the watch has not told us yet
    await op.advance((refresh_at - clock.now).total_seconds())
    assert len(tokens.requests) == 2  # the new token is written, not re-requested
    assert token_in(kube, NS) == "tok-2"


async def test_annotation_edits_on_a_rejected_account_share_the_forced_limit() -> None:
    """Shared-cluster item 5: 30 refresh requests in 3 s on an account the endpoint
    rejects sent 31 token requests, each edit clearing the backoff. Now: forced
    attempts share one limit per credential (10 s), held token or not, and the backoff
    stays (31 requests before the fix)."""
    kube, clock, tokens = FakeKube(), Clock(), TokenServer()
    tokens.answer(*[oauth_error(401, "unauthorized_client")] * 100)
    kube.put(NS, source_secret(NS))
    kube.apply_credential(credential(NS))
    op = Operator(kube, clock, tokens)
    await op.start()
    assert len(tokens.requests) == 1
    for i in range(30):
        clock.now += dt.timedelta(seconds=0.1)
        body = kube.credentials[(NS, "billing")]
        body["metadata"].setdefault("annotations", {})[REFRESH_ANNOTATION] = f"edit-{i}"
        op.controller.credential_event("MODIFIED", copy.deepcopy(body))
        await op.run()
    await op.advance(60)
    assert len(tokens.requests) <= 3, f"{len(tokens.requests)} requests for 30 edits"


async def test_a_failing_credential_patches_its_status_on_changes_and_at_most_every_30_s() -> None:
    """Hot-path issue: each failed attempt changed only its count, times and message,
    and each was a status patch. Now a reason or readiness change is patched at once,
    attempt details at most every FAILING_STATUS_INTERVAL; the Event follows the
    status patch."""
    clock, tokens = Clock(), TokenServer()
    patches: list[tuple[dt.datetime, dict[str, Any]]] = []

    class Timed(FakeKube):
        async def patch_status(self, namespace: str, name: str, status: Any) -> None:
            patches.append((clock.now, dict(status)))
            await super().patch_status(namespace, name, status)

    kube = Timed()
    kube.put(NS, source_secret(NS))
    kube.apply_credential(credential(NS))
    op = Operator(kube, clock, tokens)
    await op.start()
    tokens.answer(*[httpx.Response(503)] * 1000)
    patches.clear()
    kube.calls.clear()
    await op.advance(LIFETIME)  # the refresh fails, then every retry until expiry and on
    attempts = len(tokens.requests) - 1
    assert attempts >= 8 and len(patches) < attempts, (attempts, len(patches))
    for (before, old), (after, new) in itertools.pairwise(patches):
        if only_attempt_details_changed(new, old):
            assert after - before >= FAILING_STATUS_INTERVAL, (before, after)
    status = kube.status_of(NS, "billing")
    assert condition(status, "Ready")["reason"] == "TokenExpired"  # on time
    assert status["consecutiveFailures"] == attempts  # what waited was written
    first_event = [m for m, _ in kube.calls].index("create_event")
    assert "patch_status" in [m for m, _ in kube.calls[:first_event]]
