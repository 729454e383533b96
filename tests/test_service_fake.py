"""The in-memory API server of the service tier keeps the promises the tier relies on."""

from __future__ import annotations

from typing import Any

import pytest

from itcare_operator.kube_api import Conflict, NotFound
from tests.fake_kube import FakeKube, merge_patch, selects


def test_merge_patch_deletes_on_none_and_merges_nested_objects() -> None:
    before = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]}
    patch = {"a": None, "b": {"c": None, "x": 4}, "e": [3]}
    assert merge_patch(before, patch) == {"b": {"d": 3, "x": 4}, "e": [3]}


def test_label_selectors() -> None:
    labels = {"app": "x", "tier": "web"}
    assert selects("app=x,tier", labels) and selects("", labels)
    assert not selects("app!=x", labels) and not selects("!tier", labels)
    assert not selects("missing", labels)


async def test_versions_conflicts_and_not_found() -> None:
    kube = FakeKube()
    first = await kube.create_secret("ns", {"metadata": {"name": "s"}, "data": {}})
    with pytest.raises(Conflict):
        await kube.create_secret("ns", {"metadata": {"name": "s"}})
    second = await kube.replace_secret("ns", first)
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert second["metadata"]["uid"] == first["metadata"]["uid"]
    with pytest.raises(Conflict):
        await kube.replace_secret("ns", first)  # stale version
    with pytest.raises(NotFound):
        await kube.replace_secret("ns", {"metadata": {"name": "t", "resourceVersion": "1"}})
    assert [e.type for e in kube.take_pending()] == ["ADDED", "MODIFIED"]


async def test_status_patch_drops_none_and_generation_moves_with_the_spec_only() -> None:
    kube = FakeKube()
    body: dict[str, Any] = {"metadata": {"namespace": "ns", "name": "c"}, "spec": {"x": 1}}
    kube.apply_credential(body)
    await kube.patch_status("ns", "c", {"a": "1", "b": "2"})
    await kube.patch_status("ns", "c", {"a": None})
    assert kube.status_of("ns", "c") == {"b": "2"}
    kube.apply_credential({**body, "metadata": {**body["metadata"], "annotations": {"k": "v"}}})
    assert kube.credentials[("ns", "c")]["metadata"]["generation"] == 1
    kube.apply_credential({**body, "spec": {"x": 2}})
    assert kube.credentials[("ns", "c")]["metadata"]["generation"] == 2
    assert kube.status_of("ns", "c") == {"b": "2"}  # a user's update keeps the status


async def test_a_finalizer_holds_a_cluster_credential_until_removed() -> None:
    kube = FakeKube()
    kube.apply_cluster_credential({"metadata": {"name": "org"}, "spec": {}})
    stored = await kube.set_cluster_finalizers("org", ["f"], None)
    kube.delete_cluster_credential("org")
    assert kube.cluster_credentials["org"]["metadata"]["deletionTimestamp"]
    with pytest.raises(Conflict):
        await kube.set_cluster_finalizers("org", [], stored["metadata"]["resourceVersion"])
    current = kube.cluster_credentials["org"]["metadata"]["resourceVersion"]
    await kube.set_cluster_finalizers("org", [], current)
    assert "org" not in kube.cluster_credentials
    assert kube.take_pending()[-1].type == "DELETED"
