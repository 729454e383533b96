"""The status objects field by field: their keys, condition types, reasons and messages
are what users, ``kubectl get`` columns and alerts read, so each is pinned exactly."""

from __future__ import annotations

import datetime as dt

import pytest

from itcare_operator.errors import Reason
from itcare_operator.status import (
    Condition,
    Fanout,
    Observation,
    ready_condition,
    render_cluster_status,
    render_status,
)

NOW = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(seconds=600)
EARLIER = NOW - dt.timedelta(seconds=600)


def obs(**changes: object) -> Observation:
    fields: dict[str, object] = {
        "generation": 3,
        "suspended": False,
        "token_expires_at": LATER,
        "refresh_token_expires_at": None,
        "refreshed": None,
        "last_refresh": EARLIER,
        "next_refresh": None,
        "last_failure": None,
        "consecutive_failures": 0,
    }
    return Observation(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, ("Ready", True, Reason.TOKEN_VALID, "token valid until 2026-11-28T10:10:00Z")),
        (
            {"token_expires_at": EARLIER},
            ("Ready", False, Reason.TOKEN_EXPIRED, "token expired at 2026-11-28T09:50:00Z"),
        ),
        (
            {"token_expires_at": None},
            ("Ready", False, Reason.NO_TOKEN, "no token has been obtained yet"),
        ),
        (
            {"suspended": True},
            (
                "Ready",
                True,
                Reason.SUSPENDED,
                "refreshing is suspended; token valid until 2026-11-28T10:10:00Z",
            ),
        ),
        (
            {"suspended": True, "token_expires_at": EARLIER},
            ("Ready", False, Reason.SUSPENDED, "refreshing is suspended; no valid token"),
        ),
        (
            {"suspended": True, "token_expires_at": None},
            ("Ready", False, Reason.SUSPENDED, "refreshing is suspended; no valid token"),
        ),
    ],
)
def test_ready_condition(changes: dict[str, object], expected: tuple[object, ...]) -> None:
    assert ready_condition(obs(**changes), NOW) == Condition(*expected)  # type: ignore[arg-type]


def test_a_failing_credential_status_has_every_field() -> None:
    failed = Condition("Refreshed", False, Reason.INVALID_CLIENT, "the endpoint said no")
    status = render_status(
        obs(
            refreshed=failed,
            refresh_token_expires_at=NOW + dt.timedelta(hours=8),
            next_refresh=NOW + dt.timedelta(seconds=30),
            last_failure=NOW,
            consecutive_failures=4,
            token_fingerprint="fp",
        ),
        None,
        NOW,
    )
    assert status == {
        "observedGeneration": 3,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "TokenValid",
                "message": "token valid until 2026-11-28T10:10:00Z",
                "lastTransitionTime": "2026-11-28T10:00:00Z",
                "observedGeneration": 3,
            },
            {
                "type": "Refreshed",
                "status": "False",
                "reason": str(Reason.INVALID_CLIENT),
                "message": "the endpoint said no",
                "lastTransitionTime": "2026-11-28T10:00:00Z",
                "observedGeneration": 3,
            },
        ],
        "summaryReason": str(Reason.INVALID_CLIENT),
        "tokenExpiresAt": "2026-11-28T10:10:00Z",
        "tokenFingerprint": "fp",
        "refreshTokenExpiresAt": "2026-11-28T18:00:00Z",
        "lastRefreshTime": "2026-11-28T09:50:00Z",
        "nextRefreshTime": "2026-11-28T10:00:30Z",
        "lastFailureTime": "2026-11-28T10:00:00Z",
        "consecutiveFailures": 4,
    }
    # Without a new value the previous times stay; absent values render as None.
    again = render_status(obs(last_refresh=None), status, LATER)
    assert again["lastRefreshTime"] == "2026-11-28T09:50:00Z"
    assert again["lastFailureTime"] == "2026-11-28T10:00:00Z"
    assert again["nextRefreshTime"] is None and again["refreshTokenExpiresAt"] is None


def test_cluster_status_fields_and_the_lists_it_shortens() -> None:
    failed = {f"ns-{i}": ("Forbidden", "x" * 300) for i in range(6)}
    status = render_cluster_status(obs(), Fanout(selected=9, synced=3, failed=failed), None, NOW)
    synced = status["conditions"][-1]
    assert (synced["type"], synced["status"], synced["reason"]) == (
        "Synced",
        "False",
        str(Reason.NAMESPACES_FAILED),
    )
    assert synced["message"] == (
        "6 of 9 namespaces failed: ns-0 (Forbidden), ns-1 (Forbidden), ns-2 (Forbidden), "
        "ns-3 (Forbidden), ns-4 (Forbidden) and 1 more"
    )
    assert synced["lastTransitionTime"] == "2026-11-28T10:00:00Z"
    assert status["summaryReason"] == str(Reason.NAMESPACES_FAILED)
    assert status["failedNamespaces"][0] == {
        "namespace": "ns-0",
        "reason": "Forbidden",
        "message": "x" * 256,
    }
    assert (status["selectedNamespaces"], status["syncedNamespaces"]) == (9, 3)
    assert status["failedNamespaceCount"] == 6
    assert status["missingNamespaces"] is None and status["pinnedNamespaces"] is None

    missing = [f"gone-{i}" for i in range(7)]
    fanout = Fanout(selected=9, synced=2, failed={}, missing=missing, pinned={"b": "2", "a": "1"})
    later = render_cluster_status(obs(), fanout, status, NOW + dt.timedelta(seconds=60))
    synced = later["conditions"][-1]
    assert (synced["status"], synced["reason"]) == ("True", str(Reason.NAMESPACES_SYNCED))
    assert synced["lastTransitionTime"] == "2026-11-28T10:01:00Z"  # False -> True
    assert synced["message"] == (
        "2 of 9 selected namespaces hold the token; listed but absent, or created again "
        "since the credential was edited (edit it to deliver there): "
        "gone-0, gone-1, gone-2, gone-3, gone-4 and 2 more"
    )
    assert later["missingNamespaces"] == missing
    assert later["pinnedNamespaces"] == {"a": "1", "b": "2"}
    assert later["summaryReason"] == "TokenValid"
    few = render_cluster_status(obs(), Fanout(9, 9, {}, missing=["a"] * 5), None, NOW)
    assert few["conditions"][-1]["message"].endswith("): a, a, a, a, a")
    none = render_cluster_status(obs(), Fanout(9, 9, {}), None, NOW)
    assert none["conditions"][-1]["message"] == "9 of 9 selected namespaces hold the token"
