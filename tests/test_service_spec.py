"""Service tier: what a user can change (spec, annotations, the source and target
Secrets) and what the operator does about it, against the in-memory API server."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests.fake_kube import (
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
REFRESH = "itcare.cegedim.cloud/refresh-requested-at"


async def started(**spec: Any) -> tuple[Operator, FakeKube, Clock, TokenServer]:
    kube, clock, tokens = FakeKube(), Clock(), TokenServer()
    kube.put(NS, source_secret(NS))
    kube.apply_credential(credential(NS, **spec))
    op = Operator(kube, clock, tokens)
    await op.start()
    return op, kube, clock, tokens


async def test_suspend_sends_no_request_keeps_the_valid_token_and_says_suspended() -> None:
    op, kube, _clock, tokens = await started()
    kube.apply_credential(credential(NS, suspend=True))
    await op.advance(1000)  # past the refresh time (800 s)
    assert len(tokens.requests) == 1
    assert token_in(kube, NS) == "tok-1"
    status = kube.status_of(NS, "billing")
    assert condition(status, "Ready")["reason"] == "Suspended"
    assert status["observedGeneration"] == 2


async def test_the_status_merge_patch_removes_a_cleared_field() -> None:
    op, kube, _clock, _tokens = await started()
    assert "nextRefreshTime" in kube.status_of(NS, "billing")
    kube.apply_credential(credential(NS, suspend=True))  # suspended: no next refresh
    await op.run()
    assert "nextRefreshTime" not in kube.status_of(NS, "billing")


async def test_a_token_url_outside_the_allowlist_is_refused_without_a_request() -> None:
    evil = "https://evil.example/auth/realms/cloud/protocol/openid-connect/token"
    op, kube, _clock, tokens = await started(tokenURL=evil)
    await op.advance(600)
    assert tokens.requests == []
    status = kube.status_of(NS, "billing")
    assert condition(status, "Refreshed")["reason"] == "TokenURLNotAllowed"
    assert (NS, "itcare-token") not in kube.secrets


async def test_an_invalid_spec_is_reported_and_the_valid_token_kept() -> None:
    op, kube, _clock, tokens = await started()
    bad = {"name": "itcare-token", "labels": {"not a key!": "x"}}
    kube.apply_credential(credential(NS, targetSecret=bad))
    await op.advance(600)  # before the token expires
    status = kube.status_of(NS, "billing")
    assert condition(status, "Refreshed")["reason"] == "InvalidSpec"
    assert condition(status, "Ready")["status"] == "True"
    assert token_in(kube, NS) == "tok-1" and len(tokens.requests) == 1


async def test_annotations_beyond_the_api_server_limit_are_an_invalid_spec() -> None:
    huge = {"example.com/big": "x" * (256 * 1024)}
    _op, kube, _clock, tokens = await started(
        targetSecret={"name": "itcare-token", "annotations": huge}
    )
    assert tokens.requests == []
    assert condition(kube.status_of(NS, "billing"), "Refreshed")["reason"] == "InvalidSpec"
    assert "InvalidSpec" in kube.reasons()


async def test_a_rotated_source_secret_forces_a_refresh_within_the_forced_interval() -> None:
    op, kube, _clock, tokens = await started()
    await op.advance(30)
    kube.put(NS, source_secret(NS, secret="rotated"))
    await op.advance(10)
    assert len(tokens.requests) == 2 and token_in(kube, NS) == "tok-2"


@pytest.mark.parametrize("targets_first", [True, False], ids=["secrets-first", "crs-first"])
async def test_the_source_secret_seen_at_start_up_forces_nothing(targets_first: bool) -> None:
    _op, kube, clock, _tokens = await started()
    restarted = Operator(kube, clock, TokenServer())
    await restarted.start(targets_first=targets_first)
    await restarted.advance(60)
    assert restarted.tokens.requests == []


async def test_forced_refreshes_by_annotation_are_rate_limited() -> None:
    op, kube, _clock, tokens = await started()
    await op.advance(60)
    for i in range(3):
        body = credential(NS)
        body["metadata"]["annotations"] = {REFRESH: f"2026-11-28T10:01:0{i}Z"}
        kube.apply_credential(body)
        await op.advance(1)
    assert len(tokens.requests) == 2  # the first is served at once, the others wait
    await op.advance(10)
    assert len(tokens.requests) == 3
    gap = tokens.times[2] - tokens.times[1]
    assert gap >= dt.timedelta(seconds=10)


async def test_drift_is_repaired_with_the_same_token_and_no_request() -> None:
    op, kube, _clock, tokens = await started()
    edited = kube.secrets[(NS, "itcare-token")]
    edited = {**edited, "data": {**edited["data"], "access_token": "Zm9yZ2Vk"}}
    kube.put(NS, edited)
    await op.advance(1)
    assert token_in(kube, NS) == "tok-1"
    assert len(tokens.requests) == 1
