"""Pure parts of ClusterITCareCredential: selectors, spec, copy ownership, status."""

from __future__ import annotations

import datetime as dt

import pytest

from itcare_operator.model import resumed_refresh_at
from itcare_operator.refresh_policy import RefreshPolicy, next_refresh_at
from itcare_operator.selector import InvalidSelector, parse_selector
from itcare_operator.spec import InvalidSpec, parse_cluster_spec
from itcare_operator.status import (
    Condition,
    Fanout,
    Observation,
    render_cluster_status,
    status_changed,
)
from itcare_operator.target_secret import (
    CLUSTER_KIND,
    Owner,
    desired_secret,
    is_owned,
    needs_write,
    updated_secret,
)
from itcare_operator.token import Token, format_time

NOW = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {}, True),
        ({"matchLabels": {"team": "a"}}, {"team": "a", "x": "y"}, True),
        ({"matchLabels": {"team": "a"}}, {"team": "b"}, False),
        ({"matchLabels": {"team": "a"}}, {}, False),
        (
            {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]},
            {"team": "b"},
            True,
        ),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]},
            {"team": "a"},
            False,
        ),
        ({"matchExpressions": [{"key": "tokens", "operator": "Exists"}]}, {"tokens": ""}, True),
        (
            {"matchExpressions": [{"key": "tokens", "operator": "DoesNotExist"}]},
            {"tokens": "x"},
            False,
        ),
        (
            {
                "matchLabels": {"env": "prod"},
                "matchExpressions": [{"key": "team", "operator": "Exists"}],
            },
            {"env": "prod"},
            False,
        ),
    ],
)
def test_label_selector_semantics(selector: dict, labels: dict, expected: bool) -> None:  # type: ignore[type-arg]
    assert parse_selector(selector).matches(labels) is expected


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"matchLabels": {"": "a"}},
        {"matchLabels": {"team": "has space"}},
        {"matchExpressions": [{"key": "team", "operator": "Like", "values": ["a"]}]},
        {"matchExpressions": [{"key": "team", "operator": "In", "values": []}]},
        {"matchExpressions": [{"key": "team", "operator": "Exists", "values": ["a"]}]},
        {"matchExpressions": [{"key": "Bad_Prefix!/x", "operator": "Exists"}]},
    ],
)
def test_bad_selectors_are_refused(bad: object) -> None:
    with pytest.raises(InvalidSelector):
        parse_selector(bad)


def cluster_spec(**extra: object) -> dict[str, object]:
    return {
        "clientSecretRef": {"name": "acct", "namespace": "itcare-system"},
        "targetSecret": {"name": "itcare-token"},
        **extra,
    }


def test_cluster_spec_selects_by_name_or_label() -> None:
    spec = parse_cluster_spec(
        cluster_spec(namespaces=["team-z"], namespaceSelector={"matchLabels": {"t": "b"}})
    )
    assert spec.source_namespace == "itcare-system"
    assert spec.credential.target_name == "itcare-token"
    assert spec.selects("team-z", {})
    assert spec.selects("team-b", {"t": "b"})
    assert not spec.selects("team-c", {"t": "c"})
    only_names = parse_cluster_spec(cluster_spec(namespaces=["team-z"]))
    assert only_names.selector is None and not only_names.selects("other", {"t": "b"})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (cluster_spec(), "namespaceSelector or spec.namespaces"),
        (cluster_spec(namespaces=[]), "namespaceSelector or spec.namespaces"),
        (
            {
                "clientSecretRef": {"name": "acct"},
                "targetSecret": {"name": "t"},
                "namespaces": ["a"],
            },
            "clientSecretRef.namespace is required",
        ),
        (cluster_spec(namespaces=["Not_A_Namespace"]), "list of namespace names"),
        (cluster_spec(namespaceSelector={"matchLabels": {"a": "b c"}}), "not a valid label value"),
    ],
)
def test_bad_cluster_specs_say_why(spec: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        parse_cluster_spec(spec)


def token(received: dt.datetime = NOW, lifetime: int = 1200) -> Token:
    return Token(
        access_token="tok-abc",
        received_at=received,
        expires_at=received + dt.timedelta(seconds=lifetime),
    )


def test_a_copy_is_owned_by_uid_annotation_and_has_no_owner_reference() -> None:
    spec = parse_cluster_spec(cluster_spec(namespaces=["team-a"])).credential
    copy = desired_secret(spec, Owner("team-a", "org", "uid-1", CLUSTER_KIND), token())
    meta = copy["metadata"]
    assert meta["namespace"] == "team-a" and meta["ownerReferences"] == []
    assert meta["labels"]["itcare.cegedim.cloud/cluster-credential"] == "org"
    assert "itcare.cegedim.cloud/credential" not in meta["labels"]
    assert meta["annotations"]["itcare.cegedim.cloud/owner-uid"] == "uid-1"
    assert is_owned(copy, "uid-1") and not is_owned(copy, "uid-2")
    assert not needs_write(copy, copy)
    # Someone else's Secret with the same name: not ours, even with our label.
    foreign = {"metadata": {"name": "itcare-token", "labels": meta["labels"]}}
    assert not is_owned(foreign, "uid-1")
    # Other tools' labels survive an update.
    existing = {**copy, "metadata": {**meta, "labels": {**meta["labels"], "x": "y"}}}
    newer = desired_secret(
        spec, Owner("team-a", "org", "uid-1", CLUSTER_KIND), token(NOW + dt.timedelta(minutes=1))
    )
    assert needs_write(existing, newer)
    assert updated_secret(existing, newer)["metadata"]["labels"]["x"] == "y"


def test_restart_keeps_the_announced_refresh_time() -> None:
    policy = RefreshPolicy()
    tok = token()
    latest = next_refresh_at(tok.received_at, tok.expires_at, NOW, policy, 0.0)
    announced = latest - dt.timedelta(seconds=37)  # jittered earlier
    status = {
        "tokenExpiresAt": format_time(tok.expires_at),
        "nextRefreshTime": format_time(announced),
    }
    later = NOW + dt.timedelta(seconds=5)
    assert resumed_refresh_at(tok, status, later, policy, 0.9) == announced
    # Not ours (another token), later than the policy allows, or garbage: a fresh time.
    fresh = next_refresh_at(tok.received_at, tok.expires_at, later, policy, 0.5)
    other = {**status, "tokenExpiresAt": format_time(tok.expires_at + dt.timedelta(seconds=1))}
    assert resumed_refresh_at(tok, other, later, policy, 0.5) == fresh
    too_late = {**status, "nextRefreshTime": format_time(tok.expires_at)}
    assert resumed_refresh_at(tok, too_late, later, policy, 0.5) == fresh
    assert (
        resumed_refresh_at(tok, {**status, "nextRefreshTime": "soon"}, later, policy, 0.5) == fresh
    )
    assert resumed_refresh_at(tok, None, later, policy, 0.5) == fresh


def test_cluster_status_reports_failed_namespaces_and_counts() -> None:
    obs = Observation(
        generation=2,
        suspended=False,
        token_expires_at=NOW + dt.timedelta(minutes=20),
        refresh_token_expires_at=None,
        refreshed=Condition("Refreshed", True, "RefreshSucceeded", "ok"),
        last_refresh=NOW,
        next_refresh=NOW + dt.timedelta(minutes=13),
        last_failure=None,
        consecutive_failures=0,
    )
    failed = {f"ns-{i:03}": ("TargetSecretConflict", "taken") for i in range(60)}
    status = render_cluster_status(obs, Fanout(100, 40, failed), None, NOW)
    synced = next(c for c in status["conditions"] if c["type"] == "Synced")
    assert synced["status"] == "False" and synced["reason"] == "NamespacesFailed"
    assert "60 of 100 namespaces failed" in synced["message"] and "55 more" in synced["message"]
    assert status["summaryReason"] == "NamespacesFailed"
    assert status["selectedNamespaces"] == 100 and status["syncedNamespaces"] == 40
    assert status["failedNamespaceCount"] == 60 and len(status["failedNamespaces"]) == 50
    assert status["failedNamespaces"][0] == {
        "namespace": "ns-000",
        "reason": "TargetSecretConflict",
        "message": "taken",
    }
    ok = render_cluster_status(obs, Fanout(3, 3, {}), status, NOW)
    assert ok["summaryReason"] == "TokenValid" and ok["failedNamespaces"] == []
    synced = next(c for c in ok["conditions"] if c["type"] == "Synced")
    assert synced["status"] == "True" and synced["lastTransitionTime"] == format_time(NOW)


def test_a_status_read_back_without_nulls_is_unchanged() -> None:
    rendered = {"tokenExpiresAt": "2026-11-28T10:20:00Z", "lastFailureTime": None}
    stored = {"tokenExpiresAt": "2026-11-28T10:20:00Z"}  # a merge patch stores no null
    assert not status_changed(rendered, stored)
    assert status_changed({**rendered, "tokenExpiresAt": "2026-11-28T10:40:00Z"}, stored)
    assert status_changed(rendered, {**stored, "lastFailureTime": "2026-11-28T10:00:00Z"})
    assert status_changed(rendered, None)
