"""KubeClient against the real API server: paths, bodies, merge patches and the error
mapping that the controllers rely on (NotFound, Conflict, KubeError without bodies)."""

from __future__ import annotations

import base64
from typing import Any

import kubernetes
import pytest

from itcare_operator.kube import KubeClient
from itcare_operator.kube_api import Conflict, KubeError, NotFound, credentials_path, secrets_path
from tests.environment import Environment
from tests.testenv import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.env

SECRET_VALUE = "kube-client-secret-value"


@pytest.fixture
def kube(testenv: Environment) -> KubeClient:
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(testenv.kubeconfig), client_configuration=config)
    calls: list[tuple[str, str]] = []
    client = KubeClient(config, threads=4, on_call=lambda verb, res: calls.append((verb, res)))
    client.calls = calls  # type: ignore[attr-defined]
    return client


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
    kube.close()


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
    kube.close()


async def test_unreachable_server_is_a_kube_error(testenv: Environment) -> None:
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(testenv.kubeconfig), client_configuration=config)
    config.host = "https://127.0.0.1:9"  # nothing listens there
    config.retries = False
    kube = KubeClient(config, threads=1)
    with pytest.raises(KubeError, match="API server unreachable"):
        await kube.get_secret("default", "x")
    kube.close()


async def test_list_objects_reads_every_page(
    kube: KubeClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start-up listing (restart safety) must hold every Secret, however many
    pages the API server splits it into."""
    for i in range(7):
        await kube.create_secret(namespace, secret(f"p{i}"))
    calls: list[str] = []
    kube.on_call = lambda verb, resource: calls.append(verb)
    request = kube.request

    async def small_pages(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if kwargs.get("params", {}).get("limit"):
            kwargs["params"] = {**kwargs["params"], "limit": "3"}
        return await request(*args, **kwargs)

    monkeypatch.setattr(kube, "request", small_pages)
    listed = await kube.list_objects(secrets_path(namespace))
    names = sorted(s["metadata"]["name"] for s in listed)
    assert names == [f"p{i}" for i in range(7)] and len(calls) == 3
    assert await kube.list_objects(credentials_path(namespace)) == []
    kube.close()
