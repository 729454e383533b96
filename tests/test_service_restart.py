"""Service tier: restarts, relists and API failures, against the in-memory API server."""

from __future__ import annotations

import base64
import copy

import pytest

from itcare_operator.kube_api import KubeError
from itcare_operator.runner import Runtime
from itcare_operator.settings import Settings
from itcare_operator.target_secret import EXPIRES_AT_ANNOTATION, REFRESHED_AT_ANNOTATION
from tests.fake_kube import (
    ALLOWED,
    Clock,
    FakeKube,
    Operator,
    TokenServer,
    condition,
    credential,
    source_secret,
    token_in,
)

NS = "team-a"


async def two_namespaces() -> tuple[Operator, FakeKube, Clock, TokenServer]:
    kube, clock, tokens = FakeKube(), Clock(), TokenServer()
    for ns in (NS, "team-b"):
        kube.put(ns, source_secret(ns))
        kube.apply_credential(credential(ns))
    op = Operator(kube, clock, tokens)
    await op.start()
    return op, kube, clock, tokens


async def started() -> tuple[Operator, FakeKube, Clock, TokenServer]:
    kube, clock, tokens = FakeKube(), Clock(), TokenServer()
    kube.put(NS, source_secret(NS))
    kube.apply_credential(credential(NS))
    op = Operator(kube, clock, tokens)
    await op.start()
    return op, kube, clock, tokens


@pytest.mark.parametrize("targets_first", [True, False], ids=["secrets-first", "crs-first"])
async def test_a_restart_reuses_the_stored_token_without_requests_reads_or_patches(
    targets_first: bool,
) -> None:
    _op, kube, clock, _tokens = await started()
    status = kube.status_of(NS, "billing")
    kube.calls.clear()
    restarted = Operator(kube, clock, TokenServer())
    await restarted.start(targets_first=targets_first)
    assert restarted.tokens.requests == []  # no new token
    methods = [m for m, _ in kube.calls]
    assert "get_secret" not in methods  # no reads
    assert "patch_status" not in methods and kube.status_of(NS, "billing") == status
    assert token_in(kube, NS) == "tok-1"


async def test_a_credential_deleted_while_the_watch_was_down_is_forgotten_on_relist() -> None:
    op, kube, _clock, tokens = await started()
    labels = {"namespace": NS, "name": "billing", "scope": "namespaced"}
    ready = "itcare_credential_ready"
    assert op.metrics.registry.get_sample_value(ready, labels) == 1.0
    known = dict(op.controller.credentials)
    kube.delete_credential(NS, "billing")
    kube.take_pending()  # the watch was down: no DELETED event arrives
    assert op.controller.forget_vanished(known, set(kube.credentials)) == 1
    assert op.metrics.registry.get_sample_value(ready, labels) is None
    await op.advance(3600)
    assert len(tokens.requests) == 1  # never refreshed again


async def test_a_credential_recreated_during_the_listing_is_not_forgotten() -> None:
    op, kube, _clock, _tokens = await started()
    known = dict(op.controller.credentials)
    kube.delete_credential(NS, "billing")
    kube.apply_credential(credential(NS))  # a new uid, seen by the watch
    op.deliver()
    assert op.controller.forget_vanished(known, set()) == 0
    assert (NS, "billing") in op.controller.credentials


async def test_the_owner_reference_lets_garbage_collection_take_the_target() -> None:
    op, kube, _clock, tokens = await started()
    refs = kube.secrets[(NS, "itcare-token")]["metadata"]["ownerReferences"]
    assert [r["uid"] for r in refs] == [kube.credentials[(NS, "billing")]["metadata"]["uid"]]
    kube.delete_credential(NS, "billing")
    await op.advance(3600)
    assert (NS, "itcare-token") not in kube.secrets and len(tokens.requests) == 1


async def test_a_failed_status_patch_is_retried_on_the_injected_clock() -> None:
    kube, clock, tokens = FakeKube(), Clock(), TokenServer()
    kube.put(NS, source_secret(NS))
    kube.apply_credential(credential(NS))
    kube.fail("patch_status", KubeError("500 Internal Server Error", 500))
    op = Operator(kube, clock, tokens)
    await op.start()
    assert "conditions" not in kube.status_of(NS, "billing")
    await op.advance(10)
    status = kube.status_of(NS, "billing")
    assert "conditions" in status and condition(status, "Ready")["status"] == "True"
    assert len(tokens.requests) == 1


async def test_a_failed_target_write_is_retried_on_the_injected_clock() -> None:
    kube, clock, tokens = FakeKube(), Clock(), TokenServer()
    kube.put(NS, source_secret(NS))
    kube.apply_credential(credential(NS))
    kube.fail("create_secret", KubeError("500 Internal Server Error", 500))
    op = Operator(kube, clock, tokens)
    await op.start()
    assert (NS, "itcare-token") not in kube.secrets
    await op.advance(10)
    assert token_in(kube, NS) == "tok-1" and len(tokens.requests) == 1


async def test_a_failed_drift_repair_is_retried_on_the_injected_clock() -> None:
    op, kube, _clock, _tokens = await started()
    edited = kube.secrets[(NS, "itcare-token")]
    kube.put(NS, {**edited, "data": {**edited["data"], "access_token": "Zm9yZ2Vk"}})
    kube.fail("replace_secret", KubeError("500 Internal Server Error", 500))
    await op.advance(10)
    assert token_in(kube, NS) == "tok-1"


async def test_echoes_late_out_of_order_or_twice_cost_no_token_and_no_write() -> None:
    op, kube, _clock, tokens = await started()
    await op.advance(800, echoes=False)  # the first refresh (rand 0: at 800 s)
    await op.advance(800, echoes=False)  # and the second; no echo seen yet
    assert len(tokens.requests) == 3
    echoes = kube.take_pending()
    assert {e.kind for e in echoes} == {"Secret", "ITCareCredential"}
    kube.calls.clear()
    op.deliver([*reversed(echoes), *echoes])  # late, out of order, twice
    await op.advance(5)
    assert len(tokens.requests) == 3
    assert [m for m, _ in kube.calls if m != "get_secret"] == []  # no write, no patch
    assert token_in(kube, NS) == "tok-3"


async def test_a_status_patch_answered_404_forgets_the_credential() -> None:
    """Between two listings, a credential deleted unseen is dropped at its next status
    patch: one wasted refresh at most, then nothing."""
    op, kube, _clock, tokens = await started()
    kube.delete_credential(NS, "billing")
    kube.take_pending()  # no DELETED event
    await op.advance(3600)
    assert (NS, "billing") not in op.controller.credentials
    spent = len(tokens.requests)
    await op.advance(7200)
    assert len(tokens.requests) == spent <= 2


async def test_the_start_up_listing_knows_every_stored_token_before_kopf_lists() -> None:
    """Runtime._prime, page by page: every credential and its stored token are in memory
    before the first reconcile (kopf's own listing of 10,000 credentials took minutes,
    and tokens lapsed meanwhile)."""
    _op, kube, _clock, tokens = await started()
    for i in range(4):  # more than one page
        kube.put(NS, source_secret(NS, name=f"acct-{i}"))
    runtime = Runtime(Settings(allowed_token_urls=(ALLOWED,), namespaces=(NS,)), kube)  # type: ignore[arg-type]
    await runtime._prime()
    state = runtime.controller.credentials[(NS, "billing")]
    assert state.token is not None and state.token.access_token == token_in(kube, NS)
    assert len(runtime.controller.sources) == 5
    assert len(tokens.requests) == 1  # the first operator's; none since


@pytest.mark.parametrize(
    "poison", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", "9" * 5000]
)
async def test_a_poisoned_target_secret_stops_neither_the_start_up_nor_other_namespaces(
    poison: str,
) -> None:
    """Shared-cluster item 1: a tenant writes an unrepresentable instant into its own
    target Secret's expiry annotations and key; at the next restart the start-up
    listing completes, its own stored token is still trusted by its digest (the
    status is ours), and the other namespace's token is reused without a request."""
    _op, kube, _clock, tokens = await two_namespaces()
    assert len(tokens.requests) == 2
    target = kube.secrets[("team-b", "itcare-token")]
    target["metadata"]["annotations"][EXPIRES_AT_ANNOTATION] = poison
    target["metadata"]["annotations"][REFRESHED_AT_ANNOTATION] = poison
    target["data"]["expires_at"] = base64.b64encode(poison.encode()).decode()
    settings = Settings(allowed_token_urls=(ALLOWED,))
    runtime = Runtime(settings, kube)  # type: ignore[arg-type]
    await runtime._prime()
    for ns in (NS, "team-b"):
        state = runtime.controller.credentials[(ns, "billing")]
        assert state.token is not None and state.token.access_token == token_in(kube, ns)
    assert (
        runtime.metrics.registry.get_sample_value(
            "itcare_object_errors_total", {"kind": "Secret", "stage": "listing"}
        )
        is None
    )


async def test_an_object_that_breaks_the_routing_is_skipped_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One object whose handling raises (here a credential whose generation is not a
    number) is skipped with its name in the log and counted; the listing goes on."""
    _op, kube, _clock, _tokens = await started()
    odd = credential("team-z", name="odd")
    kube.apply_credential(odd)
    kube.credentials[("team-z", "odd")]["metadata"]["generation"] = "not-a-number"
    runtime = Runtime(Settings(allowed_token_urls=(ALLOWED,)), kube)  # type: ignore[arg-type]
    await runtime._prime()
    state = runtime.controller.credentials[(NS, "billing")]
    assert state.token is not None and state.token.access_token == token_in(kube, NS)
    errors = runtime.metrics.registry.get_sample_value(
        "itcare_object_errors_total", {"kind": "ITCareCredential", "stage": "listing"}
    )
    assert errors == 1.0
    assert "ITCareCredential team-z/odd skipped: unexpected ValueError" in caplog.text


async def test_an_unexpected_error_in_a_reconcile_is_reported_on_that_credential_alone() -> None:
    """A bug or an input nobody foresaw, raised inside one credential's reconcile:
    its status says UnexpectedError (no text of the exception), Ready follows the
    token it holds, it is retried with backoff, and the other credential is served."""
    op, kube, _clock, tokens = await two_namespaces()
    kube.fail("patch_status", RuntimeError("boom: tok-secret-text"), times=1)
    await op.advance(900)  # both refresh; the first status patch raises
    statuses = [kube.status_of(ns, "billing") for ns in (NS, "team-b")]
    broken = [s for s in statuses if condition(s, "Refreshed")["reason"] == "UnexpectedError"]
    assert len(broken) == 1, statuses
    status = broken[0]
    assert condition(status, "Ready")["reason"] == "TokenValid"
    assert "tok-secret-text" not in str(status) and "boom" not in str(status)
    assert "RuntimeError" in condition(status, "Refreshed")["message"]
    errors = op.metrics.registry.get_sample_value(
        "itcare_object_errors_total", {"kind": "ITCareCredential", "stage": "reconcile"}
    )
    assert errors == 1.0
    spent = len(tokens.requests)
    await op.advance(600)  # the retry delivers the token it holds: nothing minted
    assert len(tokens.requests) == spent
    await op.advance(600)  # the next refresh succeeds
    for ns in (NS, "team-b"):
        assert condition(kube.status_of(ns, "billing"), "Refreshed")["reason"] == (
            "RefreshSucceeded"
        )


async def test_a_target_edited_while_the_watch_was_away_is_repaired_on_the_relist() -> None:
    """A relist after 410 Gone reports a target edited meanwhile as listed (type None):
    it is repaired with the same token, as for a watch event."""
    op, kube, _clock, tokens = await started()
    target = copy.deepcopy(kube.secrets[(NS, "itcare-token")])
    target["data"]["access_token"] = base64.b64encode(b"edited").decode()
    kube.put(NS, target)
    kube.take_pending()  # the watch was away: no event
    op.route.managed(None, copy.deepcopy(kube.secrets[(NS, "itcare-token")]))
    await op.advance(1)
    assert token_in(kube, NS) == "tok-1" and len(tokens.requests) == 1
