"""Issue 13, service tier, ClusterITCareCredential: forged copies, forced refreshes and
refused copies, with the in-memory Kubernetes fake of ``tests.fake_kube``."""

from __future__ import annotations

import base64
import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any

from itcare_operator.fanout import FINALIZER, ClusterController
from itcare_operator.kube_api import Invalid
from itcare_operator.metrics import Metrics
from itcare_operator.settings import Settings
from itcare_operator.token_endpoint import TokenEndpoint, TokenEndpoints
from tests.fake_kube import URL, Clock, FakeKube, token_handler

PLATFORM = "platform"
NAMESPACES = ("team-a", "team-b")
CREDENTIAL: dict[str, Any] = {
    "metadata": {"name": "org", "uid": "u1", "generation": 1, "finalizers": [FINALIZER]},
    "spec": {
        "clientSecretRef": {"name": "acct", "namespace": PLATFORM},
        "tokenURL": URL,
        "targetSecret": {"name": "itcare-token"},
        "namespaces": list(NAMESPACES),
    },
}
SOURCE = {
    "metadata": {
        "name": "acct",
        "namespace": PLATFORM,
        "uid": "s1",
        "labels": {"itcare.cegedim.cloud/api-account": "true"},
    },
    "data": {
        "client-id": base64.b64encode(b"id").decode(),
        "client-secret": base64.b64encode(b"secret").decode(),
    },
}


class FakeClusterKube(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.cluster_status: dict[str, Any] = {}

    async def set_cluster_finalizers(
        self, name: str, finalizers: list[str], version: str | None
    ) -> dict[str, Any]:
        body = copy.deepcopy(CREDENTIAL)
        body["metadata"]["finalizers"] = finalizers
        return body

    async def patch_cluster_status(self, name: str, status: Mapping[str, Any]) -> None:
        self.cluster_status = dict(status)

    async def create_event(  # type: ignore[override]
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str, **kw: Any
    ) -> None:
        self.events.append((type_, reason))


def start(
    status: Mapping[str, Any] | None = None,
    kube: FakeClusterKube | None = None,
    clock: Clock | None = None,
) -> tuple[ClusterController, FakeClusterKube, Clock, list[int]]:
    """An operator process after its start-up listings (copies first, as at a restart)."""
    kube, clock, requests = kube or FakeClusterKube(), clock or Clock(), []
    transport = token_handler(requests)
    endpoints = TokenEndpoints(lambda url, ca: TokenEndpoint(url, transport=transport, clock=clock))
    settings = Settings(cluster_credentials=True, allowed_source_namespaces=(PLATFORM,))
    sources = {(PLATFORM, "acct"): SOURCE}
    controller = ClusterController(
        settings,
        kube,  # type: ignore[arg-type]
        endpoints,
        Metrics(),
        sources,
        clock=clock,
        rand=lambda: 0.0,
    )
    for ns in NAMESPACES:
        controller.namespace_event(None, {"metadata": {"name": ns, "uid": f"uid-{ns}"}})
    for (ns, _name), secret in kube.secrets.items():
        if ns in NAMESPACES:
            controller.copy_event(None, secret)
    controller.credential_event(None, {**CREDENTIAL, "status": dict(status or {})})
    return controller, kube, clock, requests


def token_in(kube: FakeClusterKube, ns: str) -> str:
    return base64.b64decode(kube.secrets[(ns, "itcare-token")]["data"]["access_token"]).decode()


def forge(kube: FakeClusterKube, ns: str, token: str = "forged\r\nX: 1") -> None:
    secret = kube.secrets[(ns, "itcare-token")]
    far = "2099-01-01T00:00:00Z"
    secret["data"]["access_token"] = base64.b64encode(token.encode()).decode()
    secret["data"]["expires_at"] = base64.b64encode(far.encode()).decode()
    secret["metadata"]["annotations"]["itcare.cegedim.cloud/expires-at"] = far
    secret["metadata"]["resourceVersion"] = "9999"


async def test_a_forged_copy_is_not_reused_nor_spread() -> None:
    first, kube, clock, requests = start()
    await first.reconcile(first.credentials[("", "org")])
    assert requests == [1] and {token_in(kube, ns) for ns in NAMESPACES} == {"tok-1"}
    forge(kube, "team-b")
    restarted, _, _, requests2 = start(status=kube.cluster_status, kube=kube, clock=clock)
    state = restarted.credentials[("", "org")]
    await restarted.reconcile(state)
    assert requests2 == []  # the genuine copy in team-a is proven by the status
    assert {token_in(kube, ns) for ns in NAMESPACES} == {"tok-1"}, "the forgery spread"
    assert state.refresh_at is not None and state.refresh_at < clock.now + dt.timedelta(hours=1)


async def test_when_every_copy_is_forged_a_new_token_is_obtained() -> None:
    first, kube, clock, _ = start()
    await first.reconcile(first.credentials[("", "org")])
    for ns in NAMESPACES:
        forge(kube, ns, "forged-but-printable")
    restarted, _, _, requests2 = start(status=kube.cluster_status, kube=kube, clock=clock)
    await restarted.reconcile(restarted.credentials[("", "org")])
    assert requests2 == [1]
    assert {token_in(kube, ns) for ns in NAMESPACES} == {"tok-1"}  # the new process's first


async def test_spec_edits_mint_at_most_one_token_per_interval() -> None:
    controller, _kube, clock, requests = start()
    await controller.reconcile(controller.credentials[("", "org")])
    for generation in range(2, 8):
        clock.now += dt.timedelta(seconds=1)
        body = copy.deepcopy(CREDENTIAL)
        body["metadata"]["generation"] = generation
        body["spec"]["targetSecret"]["labels"] = {"toggle": str(generation % 2)}
        controller.credential_event("MODIFIED", body)
        await controller.reconcile(controller.credentials[("", "org")])
    assert len(requests) == 2, f"{len(requests) - 1} tokens for six edits within 6 s"
    clock.now += dt.timedelta(seconds=10)
    await controller.reconcile(controller.credentials[("", "org")])
    assert len(requests) == 3


async def test_a_refused_copy_waits_for_a_spec_change() -> None:
    controller, kube, clock, requests = start()

    async def refuse(ns: str, body: Mapping[str, Any]) -> dict[str, Any]:
        raise Invalid("create Secret itcare-token: 422 Unprocessable Entity (Invalid)", 422)

    kube.create_secret = refuse  # type: ignore[method-assign]
    await controller.reconcile(controller.credentials[("", "org")])
    failed = {f["namespace"]: f["reason"] for f in kube.cluster_status["failedNamespaces"]}
    assert failed == dict.fromkeys(NAMESPACES, "InvalidSpec")
    due = controller.scheduler.due_at(("", "org"))
    assert due is not None and due > clock.now.timestamp() + 60, "a refused copy is retried"
    assert requests == [1]
