"""KubeClient against the real API server: paths, bodies, merge patches, the error
mapping that the controllers rely on (NotFound, Conflict, KubeError without bodies),
and the label-selected Secret watches (selection, label removal; the 410 relist is
unit-tested: a fresh etcd replays old versions instead of answering 410)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import kubernetes
import pytest

from itcare_operator.kube import KubeClient, connect
from itcare_operator.kube_api import Conflict, KubeError, NotFound, credentials_path, secrets_path
from itcare_operator.secret_watch import Reflector
from tests.environment import Environment
from tests.testenv import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.env

SECRET_VALUE = "kube-client-secret-value"


@pytest.fixture
async def kube(testenv: Environment) -> AsyncIterator[KubeClient]:
    calls: list[tuple[str, str]] = []
    client = await connect(
        str(testenv.kubeconfig), on_call=lambda verb, res: calls.append((verb, res))
    )
    client.calls = calls  # type: ignore[attr-defined]
    yield client
    await client.aclose()


def secret(name: str, value: str = SECRET_VALUE, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, **meta},
        "data": {"v": base64.b64encode(value.encode()).decode()},
    }


async def test_secret_lifecycle_and_errors(kube: KubeClient, namespace: str) -> None:
    assert await kube.get_secret(namespace, "absent") is None
    created = await kube.create_secret(namespace, secret("s", labels={"k": "v"}))
    assert created["metadata"]["uid"] and created["kind"] == "Secret"
    with pytest.raises(Conflict) as info:  # AlreadyExists
        await kube.create_secret(namespace, secret("s"))
    assert "409" in str(info.value) and "AlreadyExists" in str(info.value)
    assert SECRET_VALUE not in str(info.value)

    stale = dict(created)
    updated = await kube.replace_secret(
        namespace,
        secret(
            "s", "v2", labels={"k": "v"}, resourceVersion=created["metadata"]["resourceVersion"]
        ),
    )
    assert updated["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    with pytest.raises(Conflict):  # an old resourceVersion
        await kube.replace_secret(
            namespace, secret("s", resourceVersion=stale["metadata"]["resourceVersion"])
        )
    got = await kube.get_secret(namespace, "s")
    assert got is not None and base64.b64decode(got["data"]["v"]) == b"v2"

    listed = await kube.list_secrets("k=v")
    assert [s["metadata"]["name"] for s in listed if s["metadata"]["namespace"] == namespace] == [
        "s"
    ]

    with pytest.raises(KubeError) as refused:  # the uid precondition does not match
        await kube.delete_secret(namespace, "s", uid="00000000-0000-0000-0000-000000000000")
    assert refused.value.status == 409
    await kube.delete_secret(namespace, "s", uid=created["metadata"]["uid"])
    await kube.delete_secret(namespace, "s")  # already gone: fine
    assert await kube.get_secret(namespace, "s") is None
    with pytest.raises(KubeError) as invalid:  # 422: the API server's validation
        await kube.create_secret(namespace, secret("Not_A_Valid_Name"))
    assert invalid.value.status == 422 and SECRET_VALUE not in str(invalid.value)
    assert ("create", "secrets") in kube.calls  # type: ignore[attr-defined]


async def test_status_merge_patch(
    kube: KubeClient, namespace: str, crd: None, custom: kubernetes.client.CustomObjectsApi
) -> None:
    with pytest.raises(NotFound):
        await kube.patch_status(namespace, "missing", {"summaryReason": "x"})
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ITCareCredential",
            "metadata": {"name": "c"},
            "spec": {"clientSecretRef": {"name": "a"}, "targetSecret": {"name": "t"}},
        },
    )
    await kube.patch_status(namespace, "c", {"summaryReason": "One", "consecutiveFailures": 2})
    await kube.patch_status(namespace, "c", {"consecutiveFailures": None})  # merge: removed
    status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "c")["status"]
    assert status == {"summaryReason": "One"}


async def test_unreachable_server_is_a_kube_error_naming_the_server(
    testenv: Environment,
) -> None:
    kube = await connect(str(testenv.kubeconfig))
    kube.server = "https://127.0.0.1:9"  # nothing listens there
    with pytest.raises(KubeError, match=r"API server https://127\.0\.0\.1:9 unreachable"):
        await kube.get_secret("default", "x")
    await kube.aclose()


async def test_pages_read_every_page_through_a_selector(kube: KubeClient, namespace: str) -> None:
    """The start-up listing (restart safety) must hold every selected Secret, however
    many pages the API server splits it into, and no other."""
    for i in range(7):
        await kube.create_secret(namespace, secret(f"p{i}", labels={"sel": "yes"}))
    await kube.create_secret(namespace, secret("other"))
    pages = []
    cont = None
    while True:
        page = await kube.list_page(secrets_path(namespace), selector="sel=yes", cont=cont)
        pages.append(sorted(s["metadata"]["name"] for s in page["items"]))
        cont = page["metadata"].get("continue")
        if not cont:
            break
    assert sorted(n for p in pages for n in p) == [f"p{i}" for i in range(7)]
    listed = [s async for items in kube.pages(credentials_path(namespace)) for s in items]
    assert listed == []


async def test_a_selected_watch_sees_only_its_secrets_and_a_lost_label_as_deleted(
    kube: KubeClient, namespace: str
) -> None:
    seen: list[tuple[str | None, str]] = []
    reflector = Reflector(
        kube,
        secrets_path(namespace),
        lambda t, o: seen.append((t, o["metadata"]["name"])),
        selector="sel=yes",
    )
    await kube.create_secret(namespace, secret("before", labels={"sel": "yes"}))
    await reflector.list()
    task = asyncio.create_task(reflector.run())
    await kube.create_secret(namespace, secret("mine", labels={"sel": "yes"}))
    await kube.create_secret(namespace, secret("foreign", labels={"sel": "no"}))
    mine = await kube.get_secret(namespace, "mine")
    assert mine is not None
    mine["metadata"]["labels"] = {"sel": "no"}
    await kube.replace_secret(namespace, mine)  # stops matching: DELETED
    await _until(lambda: ("DELETED", "mine") in seen)
    task.cancel()
    assert seen == [(None, "before"), ("ADDED", "mine"), ("DELETED", "mine")]


async def _until(done: Callable[[], bool], timeout: float = 20.0, what: object = None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        assert loop.time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.05)
