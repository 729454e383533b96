"""The Secret watches: label selectors per use, list-then-watch with resume, 410
relist and bookmarks, and where each selected Secret's event goes."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from itcare_operator import secret_watch
from itcare_operator.kube import METADATA, METADATA_LIST, Gone
from itcare_operator.kube_api import KubeError
from itcare_operator.secret_watch import (
    MANAGED_SELECTOR,
    SOURCE_SELECTOR,
    Reflector,
    SecretRouter,
    reflectors,
)
from itcare_operator.source_secret import (
    KEPT_KEYS,
    MAX_VALUE_BYTES,
    SOURCE_LABEL,
    credentials_from_secret,
    keeps,
)
from itcare_operator.target_secret import CLUSTER_CREDENTIAL_LABEL, MANAGED_BY, MANAGED_BY_LABEL

Key = tuple[str, str]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(name: str, ns: str = "ns", data: dict[str, str] | None = None, **labels: str) -> Any:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": labels, "uid": f"u-{name}"},
        "data": data or {},
    }


ACCOUNT = {SOURCE_LABEL: "true"}
MANAGED = {MANAGED_BY_LABEL: MANAGED_BY}


class Kind:
    """Stands for one credential kind (a Reconciler): records what reached it."""

    def __init__(self, reads: dict[Key, set[str]] | None = None) -> None:
        self.calls: list[tuple[str, str | None, str]] = []
        self.kept: list[Any] = []
        self.reads = reads or {}

    def source_secret_event(self, type_: str | None, kept: Any) -> None:
        self.calls.append(("source", type_, kept["metadata"]["name"]))
        self.kept.append(kept)

    def source_touched(self, where: Key) -> None:
        self.calls.append(("touched", None, where[1]))

    def keys_read(self, where: Key) -> set[str]:
        return self.reads.get(where, set())

    def target_secret_event(self, type_: str | None, s: Any) -> None:
        self.calls.append(("target", type_, s["metadata"]["name"]))

    def copy_event(self, type_: str | None, s: Any) -> None:
        self.calls.append(("copy", type_, s["metadata"]["name"]))


def test_an_api_account_is_kept_slim_with_only_the_keys_read() -> None:
    """A labelled Secret of 1 MiB costs a few hundred bytes: identity, label and the
    keys some credential reads (the defaults, and the renamed ones), each bounded."""
    controller = Kind(reads={("ns", "acct"): {"id", "secret"}})
    cluster = Kind()
    sources: dict[Key, Any] = {}
    route = SecretRouter(sources, [controller, cluster], controller, cluster)
    data = {
        "client-id": b64("i"),
        "id": b64("j"),
        "secret": b64("s"),
        "helm-release": "A" * 1_000_000,
    }
    route.source("ADDED", secret("acct", data=data, other="x", **ACCOUNT))
    kept = sources[("ns", "acct")]
    assert sorted(kept["data"]) == ["client-id", "id", "secret"]
    assert kept["metadata"]["labels"] == ACCOUNT and len(repr(kept)) < 1000
    assert controller.kept == [kept] and cluster.kept == [kept]  # both kinds, one copy
    creds = credentials_from_secret(
        kept, name="acct", client_id_key="id", client_secret_key="secret", require_label=True
    )
    assert (creds.client_id, creds.client_secret) == ("j", "s")
    assert keeps(kept, ("id", "secret")) and not keeps(kept, ("other-id", "secret"))
    route.source("DELETED", secret("acct", **ACCOUNT))
    assert ("ns", "acct") not in sources


def test_an_oversized_value_is_named_not_kept() -> None:
    sources: dict[Key, Any] = {}
    kind = Kind()
    route = SecretRouter(sources, [kind], kind, None)
    big = b64("x" * (MAX_VALUE_BYTES + 3))  # Base64 longer than any value allowed
    route.source(None, secret("acct", data={"client-id": b64("i"), "client-secret": big}))
    kept = sources[("ns", "acct")]
    assert "client-secret" not in kept["data"] and kept[KEPT_KEYS]
    with pytest.raises(Exception, match="larger than"):
        credentials_from_secret(
            kept,
            name="acct",
            client_id_key="client-id",
            client_secret_key="client-secret",
            require_label=False,
        )


def test_targets_and_copies_go_to_their_kind_and_a_relisted_deletion_finds_its_copy() -> None:
    controller, cluster = Kind(), Kind()
    route = SecretRouter({}, [controller, cluster], controller, cluster)
    route.managed(None, secret("token", **MANAGED))
    route.managed(None, secret("copy", **MANAGED, **{CLUSTER_CREDENTIAL_LABEL: "org"}))
    # A relist reports what vanished with its name only: no labels to route by.
    route.managed("DELETED", {"metadata": {"namespace": "ns", "name": "copy"}})
    route.managed("DELETED", {"metadata": {"namespace": "ns", "name": "token"}})
    assert controller.calls == [("target", None, "token"), ("target", "DELETED", "token")]
    assert cluster.calls == [("copy", None, "copy"), ("copy", "DELETED", "copy")]


def test_a_touched_secret_is_read_again_by_its_readers() -> None:
    """Without the API-account label: a name-only watch; the start-up listing reads
    nothing, a change drops what was kept and wakes the readers."""
    kind = Kind()
    sources: dict[Key, Any] = {("ns", "acct"): {"kept": True}}
    route = SecretRouter(sources, [kind], kind, None)
    route.touched(None, {"metadata": {"namespace": "ns", "name": "acct"}})
    assert kind.calls == [] and sources
    route.touched("MODIFIED", {"metadata": {"namespace": "ns", "name": "acct"}})
    assert kind.calls == [("touched", None, "acct")] and not sources


def test_each_use_has_its_own_server_side_selector() -> None:
    """A selector cannot OR two labels: one watch per use, per watched namespace; no
    watch reads Secret bodies without a selector."""
    route = SecretRouter({}, [], Kind(), None)

    def guard(stage: str, take: Any) -> Any:
        return take

    labelled = reflectors(Lister([]), ("a", "b"), route, guard, require_source_label=True)
    assert [(r.path, r.selector) for r in labelled] == [
        ("/api/v1/namespaces/a/secrets", MANAGED_SELECTOR),
        ("/api/v1/namespaces/a/secrets", SOURCE_SELECTOR),
        ("/api/v1/namespaces/b/secrets", MANAGED_SELECTOR),
        ("/api/v1/namespaces/b/secrets", SOURCE_SELECTOR),
    ]
    unlabelled = reflectors(Lister([]), (), route, guard, require_source_label=False)
    assert [(r.path, r.selector) for r in unlabelled] == [
        ("/api/v1/secrets", MANAGED_SELECTOR),
        ("/api/v1/secrets", None),
    ]
    names = unlabelled[1]
    assert (names.list_accept, names.watch_accept) == (METADATA_LIST, METADATA)
    assert all(r.list_accept == "application/json" for r in labelled)


class Lister:
    """A scripted API server: pages to list, then one script per watch request."""

    def __init__(self, watches: list[list[Any]], objects: list[Any] | None = None) -> None:
        self.watches = watches
        self.objects = objects or []
        self.lists: list[str | None] = []
        self.watched_from: list[str] = []
        self.version = 10

    async def list_page(
        self,
        path: str,
        *,
        accept: str = "application/json",
        selector: str | None = None,
        cont: str | None = None,
    ) -> dict[str, Any]:
        self.lists.append(cont)
        start = int(cont or 0)
        meta: dict[str, Any] = {"resourceVersion": str(self.version)}
        if start + 2 < len(self.objects):
            meta["continue"] = str(start + 2)
        return {"items": self.objects[start : start + 2], "metadata": meta}

    async def watch(
        self,
        path: str,
        resource_version: str,
        *,
        selector: str | None = None,
        accept: str = "application/json",
    ) -> AsyncIterator[dict[str, Any]]:
        self.watched_from.append(resource_version)
        if not self.watches:
            await asyncio.Event().wait()  # the last watch stays open
        for step in self.watches.pop(0):
            if isinstance(step, Exception):
                raise step
            yield step


def obj(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": rv}}


async def test_list_in_pages_then_report_what_vanished_on_a_relist() -> None:
    seen: list[tuple[str | None, str]] = []
    lister = Lister([], objects=[obj("a", "1"), obj("b", "2"), obj("c", "3")])
    reflector = Reflector(lister, "/p", lambda t, o: seen.append((t, o["metadata"]["name"])))
    await reflector.list()
    assert seen == [(None, "a"), (None, "b"), (None, "c")]
    assert lister.lists == [None, "2"] and reflector.resource_version == "10"
    seen.clear()
    lister.objects = [obj("a", "1")]
    await reflector.list()
    assert sorted(seen, key=str) == [("DELETED", "b"), ("DELETED", "c"), (None, "a")]


async def test_watch_resumes_from_the_last_version_relists_on_gone_and_retries_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(secret_watch, "RETRY_MIN", 0.001)
    monkeypatch.setattr(secret_watch, "RETRY_MAX", 0.001)
    monkeypatch.setattr(secret_watch, "QUIET_WATCH", 0.001)
    seen: list[tuple[str | None, str]] = []
    lister = Lister(
        [
            [
                {"type": "ADDED", "object": obj("a", "11")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
            ],  # the server ends the watch: resume from the bookmark
            [{"type": "MODIFIED", "object": obj("a", "16")}, KubeError("connection reset")],
            [Gone("410 Gone", 410)],  # too old: relist, then watch from the list's version
        ],
        objects=[obj("z", "1")],
    )
    reflector = Reflector(lister, "/p", lambda t, o: seen.append((t, o["metadata"]["name"])))
    task = asyncio.create_task(reflector.run())
    for _ in range(200):
        await asyncio.sleep(0.005)
        if len(lister.watched_from) >= 4:
            break
    task.cancel()
    assert lister.watched_from == ["10", "15", "16", "10"]
    assert reflector.relists == 1
    assert seen[:3] == [(None, "z"), ("ADDED", "a"), ("MODIFIED", "a")]
    assert (None, "a") not in seen  # the relist's objects are the server's, not ours
    assert seen.count((None, "z")) == 2
