"""Service tier: ClusterITCareCredential fan-out, finalizer and orphans, against the
in-memory API server (deletionTimestamp and finalizers as the real one handles them)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from itcare_operator.settings import Settings
from tests.fake_kube import (
    ALLOWED,
    URL,
    Clock,
    FakeKube,
    Operator,
    TokenServer,
    condition,
    source_secret,
    token_in,
)

PLATFORM = "platform"
FINALIZER = "itcare.cegedim.cloud/cleanup"
TEAM = {"team": "a"}
SETTINGS = Settings(
    allowed_token_urls=(ALLOWED,),
    cluster_credentials=True,
    allowed_source_namespaces=(PLATFORM,),
)


def cluster_credential(name: str = "org", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "clientSecretRef": {"name": "acct", "namespace": PLATFORM},
            "tokenURL": URL,
            "targetSecret": {"name": "itcare-token"},
            "namespaceSelector": {"matchLabels": TEAM},
            **spec,
        },
    }


def world() -> tuple[FakeKube, Clock, TokenServer]:
    kube, clock, tokens = FakeKube(), Clock(), TokenServer()
    kube.apply_namespace(PLATFORM)
    for ns in ("team-a1", "team-a2"):
        kube.apply_namespace(ns, TEAM)
    kube.apply_namespace("other")
    kube.put(PLATFORM, source_secret(PLATFORM))
    return kube, clock, tokens


def copies(kube: FakeKube) -> set[str]:
    return {ns for (ns, name) in kube.secrets if name == "itcare-token"}


async def started() -> tuple[Operator, FakeKube, Clock, TokenServer]:
    kube, clock, tokens = world()
    kube.apply_cluster_credential(cluster_credential())
    op = Operator(kube, clock, tokens, SETTINGS)
    await op.start()
    return op, kube, clock, tokens


async def test_one_token_fans_out_to_the_selected_namespaces_only() -> None:
    op, kube, _clock, tokens = await started()
    assert copies(kube) == {"team-a1", "team-a2"}
    assert {token_in(kube, ns) for ns in copies(kube)} == {"tok-1"}
    assert len(tokens.requests) == 1
    status = kube.cluster_credentials["org"]["status"]
    assert status["syncedNamespaces"] == 2 and condition(status, "Synced")["status"] == "True"
    kube.apply_namespace("team-a3", TEAM)  # a new namespace joins
    await op.advance(1)
    assert copies(kube) == {"team-a1", "team-a2", "team-a3"} and len(tokens.requests) == 1


async def test_a_namespace_leaving_the_selection_loses_its_copy() -> None:
    op, kube, _clock, _tokens = await started()
    kube.apply_namespace("team-a2", {})
    await op.advance(1)
    assert copies(kube) == {"team-a1"}


async def test_the_finalizer_is_added_then_honoured_on_delete() -> None:
    op, kube, _clock, _tokens = await started()
    assert kube.cluster_credentials["org"]["metadata"]["finalizers"] == [FINALIZER]
    kube.delete_cluster_credential("org")
    assert "org" in kube.cluster_credentials  # held by the finalizer
    await op.advance(1)
    assert "org" not in kube.cluster_credentials  # the last finalizer removed: gone
    assert copies(kube) == set()


async def test_copies_of_a_credential_deleted_while_away_are_removed_at_start_up() -> None:
    _op, kube, clock, _tokens = await started()
    assert copies(kube) == {"team-a1", "team-a2"}
    # Deleted while no operator ran, its finalizer removed by hand.
    del kube.cluster_credentials["org"]
    restarted = Operator(kube, clock, TokenServer(), SETTINGS)
    await restarted.start()
    assert copies(kube) == set()
    assert restarted.tokens.requests == []


async def test_a_conflict_in_one_namespace_does_not_block_the_others() -> None:
    kube, clock, tokens = world()
    kube.put("team-a1", {"metadata": {"name": "itcare-token"}, "data": {"mine": "eA=="}})
    kube.apply_cluster_credential(cluster_credential())
    op = Operator(kube, clock, tokens, SETTINGS)
    await op.start()
    assert token_in(kube, "team-a2") == "tok-1"
    assert kube.secrets[("team-a1", "itcare-token")]["data"] == {"mine": "eA=="}
    status = kube.cluster_credentials["org"]["status"]
    failed = {f["namespace"]: f["reason"] for f in status["failedNamespaces"]}
    assert failed == {"team-a1": "TargetSecretConflict"}
    assert condition(status, "Synced")["status"] == "False"


async def test_a_restart_of_the_cluster_kind_costs_no_token_and_no_write() -> None:
    _op, kube, clock, _tokens = await started()
    kube.calls.clear()
    restarted = Operator(kube, clock, TokenServer(), SETTINGS)
    await restarted.start()
    assert restarted.tokens.requests == []
    writes = {m for m, _ in kube.calls} & {
        "create_secret",
        "replace_secret",
        "patch_cluster_status",
        "set_cluster_finalizers",
    }
    assert writes == set()


# -- issue 22, finding 11: only owned copies are ever deleted ----------------------------
def lookalike(ns: str, owner_uid: str | None, name: str = "lookalike") -> dict[str, Any]:
    """A Secret a tenant labelled as a copy of ``org``: labels alone prove nothing."""
    annotations = {"itcare.cegedim.cloud/owner-uid": owner_uid} if owner_uid else {}
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "app.kubernetes.io/managed-by": "itcare-token-operator",
                "itcare.cegedim.cloud/cluster-credential": "org",
            },
            "annotations": annotations,
        },
        "data": {"mine": "eA=="},
    }


UNOWNED = ["uid-of-someone-else", None]


@pytest.mark.parametrize("owner_uid", UNOWNED, ids=["other-owner-uid", "no-owner-uid"])
async def test_an_unowned_labelled_secret_survives_its_namespace_leaving(
    owner_uid: str | None,
) -> None:
    op, kube, _clock, _tokens = await started()
    kube.put("team-a2", lookalike("team-a2", owner_uid))
    kube.put("team-a2", lookalike("team-a2", owner_uid, "itcare-token-old"))
    await op.advance(1)  # the operator sees them through its label watch
    kube.apply_namespace("team-a2", {})  # leaves the selection
    await op.advance(1)
    assert copies(kube) == {"team-a1"}  # our copy there was removed ...
    for name in ("lookalike", "itcare-token-old"):  # ... not these
        assert ("team-a2", name) in kube.secrets, f"unowned Secret {name} deleted"
        assert kube.secrets[("team-a2", name)]["data"] == {"mine": "eA=="}


@pytest.mark.parametrize("owner_uid", UNOWNED, ids=["other-owner-uid", "no-owner-uid"])
async def test_finalization_deletes_only_owned_copies(owner_uid: str | None) -> None:
    op, kube, _clock, _tokens = await started()
    for ns in ("team-a1", "other"):
        kube.put(ns, lookalike(ns, owner_uid))
    kube.take_pending()  # unseen by the watch: only finalize's own listing finds them
    kube.delete_cluster_credential("org")
    await op.advance(1)
    assert "org" not in kube.cluster_credentials  # finalized
    assert copies(kube) == set()
    for ns in ("team-a1", "other"):
        assert (ns, "lookalike") in kube.secrets, f"unowned Secret in {ns} deleted"
        assert kube.secrets[(ns, "lookalike")]["data"] == {"mine": "eA=="}


def listing(*names: str) -> dict[str, Any]:
    """A credential listing namespaces by name only."""
    body = cluster_credential(namespaces=list(names))
    del body["spec"]["namespaceSelector"]
    return body


async def test_a_listed_namespace_created_later_gets_nothing_until_the_credential_is_edited() -> (
    None
):
    """Shared-cluster item 4: a name listed before it exists (a typo, a future team) is
    not handed to whoever creates that namespace; status names it."""
    kube, clock, tokens = world()
    kube.apply_cluster_credential(listing("team-a1", "team-typo"))
    op = Operator(kube, clock, tokens, SETTINGS)
    await op.start()
    assert copies(kube) == {"team-a1"}
    status = kube.cluster_credentials["org"]["status"]
    assert status["missingNamespaces"] == ["team-typo"]
    assert "team-typo" in condition(status, "Synced")["message"]
    kube.apply_namespace("team-typo")  # whoever may create namespaces claims the name
    await op.advance(5)
    assert copies(kube) == {"team-a1"}
    body = copy.deepcopy(kube.cluster_credentials["org"])
    body["spec"]["targetSecret"]["labels"] = {"edited": "yes"}  # the owner confirms
    kube.apply_cluster_credential(body)
    await op.advance(15)
    assert copies(kube) == {"team-a1", "team-typo"}
    assert "missingNamespaces" not in kube.cluster_credentials["org"]["status"]


async def test_a_listed_namespace_created_again_gets_nothing_even_after_a_restart() -> None:
    kube, clock, tokens = world()
    kube.apply_cluster_credential(listing("team-a1", "team-a2"))
    op = Operator(kube, clock, tokens, SETTINGS)
    await op.start()
    assert copies(kube) == {"team-a1", "team-a2"}
    pinned = kube.cluster_credentials["org"]["status"]["pinnedNamespaces"]
    assert set(pinned) == {"team-a1", "team-a2"}
    kube.delete_namespace("team-a2")
    await op.advance(1)
    kube.apply_namespace("team-a2")  # another instance of the name
    await op.advance(5)
    assert copies(kube) == {"team-a1"}
    restarted = Operator(kube, clock, TokenServer(), SETTINGS)
    await restarted.start()
    await restarted.advance(5)
    assert copies(kube) == {"team-a1"}
    status = kube.cluster_credentials["org"]["status"]
    assert status["missingNamespaces"] == ["team-a2"]


async def test_a_look_alike_copy_wakes_nothing_and_is_not_kept() -> None:
    """Shared-cluster item 9: a Secret anywhere carrying our labels (and another
    owner's uid, or none) woke the credential for a full reconcile on every edit and
    stayed in its copies for good."""
    op, kube, _clock, _tokens = await started()
    assert op.cluster is not None
    for i, owner in enumerate(("someone-else", None)):
        annotations = {"itcare.cegedim.cloud/owner-uid": owner} if owner else {}
        kube.put(
            "team-a1",
            {
                "metadata": {
                    "name": f"look-alike-{i}",
                    "labels": {
                        "app.kubernetes.io/managed-by": "itcare-token-operator",
                        "itcare.cegedim.cloud/cluster-credential": "org",
                    },
                    "annotations": annotations,
                },
                "data": {"x": "eA=="},
            },
        )
    kube.calls.clear()
    ran = await op.run()
    assert ran == []  # no reconcile woken
    kept = op.cluster.copies.copies.get("org", {})
    assert not any(name.startswith("look-alike") for _ns, name in kept)


async def test_a_namespace_labelled_before_the_watch_lists_it_is_served() -> None:
    """kopf's own initial listing comes after the start-up listing and the first
    reconciles: a namespace labelled in between reaches us as listed (type None)."""
    op, kube, _clock, tokens = await started()
    kube.apply_namespace("team-a3", TEAM)
    kube.take_pending()  # no watch event: only kopf's listing reports it
    assert op.cluster is not None
    op.cluster.namespace_event(None, copy.deepcopy(kube.namespaces["team-a3"]))
    await op.advance(1)
    assert "team-a3" in copies(kube) and len(tokens.requests) == 1
