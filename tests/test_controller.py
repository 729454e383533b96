"""The controller as a service: an in-memory Kubernetes fake, a MockTransport token
endpoint, an injected clock. Pins API calls per refresh, restart reuse and the
stale-cache fallback without a cluster (the end-to-end tests cover the real thing)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import itertools
from collections.abc import Mapping
from typing import Any

import httpx

from itcare_operator.kube import Conflict, NotFound
from itcare_operator.metrics import Metrics
from itcare_operator.namespaced import Controller
from itcare_operator.settings import Settings
from itcare_operator.token_endpoint import TokenEndpoint, TokenEndpoints

NS = "team-a"
URL = "https://accounts.cegedim.cloud/auth/realms/cloud/protocol/openid-connect/token"
CREDENTIAL = {
    "metadata": {"namespace": NS, "name": "billing", "uid": "c1", "generation": 1},
    "spec": {
        "clientSecretRef": {"name": "acct"},
        "tokenURL": URL,
        "targetSecret": {"name": "itcare-token"},
    },
}


class FakeKube:
    """Secrets with resourceVersions, and a log of every call."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.status: dict[str, Any] = {}
        self.events: list[tuple[str, str]] = []
        self._rv = itertools.count(100)

    def put(self, ns: str, body: Mapping[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(dict(body))
        stored["metadata"] = {
            **stored["metadata"],
            "namespace": ns,
            "resourceVersion": str(next(self._rv)),
        }
        self.secrets[(ns, stored["metadata"]["name"])] = stored
        return copy.deepcopy(stored)

    async def get_secret(self, ns: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", name))
        found = self.secrets.get((ns, name))
        return copy.deepcopy(found) if found else None

    async def create_secret(self, ns: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", body["metadata"]["name"]))
        if (ns, body["metadata"]["name"]) in self.secrets:
            raise Conflict("exists", 409)
        return self.put(ns, body)

    async def replace_secret(self, ns: str, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self.calls.append(("update", name))
        current = self.secrets.get((ns, name))
        if current is None:
            raise NotFound("gone", 404)
        if current["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
            raise Conflict("stale", 409)
        return self.put(ns, body)

    async def patch_status(self, ns: str, name: str, status: Mapping[str, Any]) -> None:
        self.calls.append(("patch-status", name))
        self.status = dict(status)

    async def create_event(
        self,
        involved: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        *,
        namespace: str | None = None,
    ) -> None:
        self.events.append((type_, reason))


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def token_handler(counter: list[int]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        counter.append(1)
        return httpx.Response(
            200,
            json={
                "access_token": f"tok-{len(counter)}",
                "expires_in": 1200,
                "token_type": "bearer",
            },
        )

    return httpx.MockTransport(handle)


def setup(
    status: Mapping[str, Any] | None = None, settings: Settings | None = None
) -> tuple[Controller, FakeKube, Clock, list[int]]:
    """A controller after its start-up listings; ``status``: the credential's, as listed."""
    kube, clock, requests = FakeKube(), Clock(), []
    transport = token_handler(requests)
    endpoints = TokenEndpoints(lambda url, ca: TokenEndpoint(url, transport=transport, clock=clock))
    controller = Controller(
        settings or Settings(),
        kube,  # type: ignore[arg-type]
        endpoints,
        Metrics(),
        clock=clock,
        rand=lambda: 0.0,
    )
    source = {
        "metadata": {
            "name": "acct",
            "namespace": NS,
            "uid": "s1",
            "labels": {"itcare.cegedim.cloud/api-account": "true"},
        },
        "data": {
            "client-id": base64.b64encode(b"id").decode(),
            "client-secret": base64.b64encode(b"secret").decode(),
        },
    }
    kube.put(NS, source)
    controller.source_secret_event(None, source)  # the watch's initial listing
    controller.credential_event(None, {**CREDENTIAL, "status": dict(status or {})})
    return controller, kube, clock, requests


async def test_first_issuance_then_refresh_costs_one_write_and_one_status_patch() -> None:
    controller, kube, clock, requests = setup()
    state = controller.credentials[(NS, "billing")]
    await controller.reconcile(state)
    assert requests == [1]
    assert ("create", "itcare-token") in kube.calls and ("get", "acct") not in kube.calls
    assert kube.events == [("Normal", "TokenIssued")]
    kube.calls.clear()
    clock.now += dt.timedelta(seconds=801)  # past the refresh point (2/3 of 1200 s)
    await controller.reconcile(state)
    assert requests == [1, 1]
    assert kube.calls == [("update", "itcare-token"), ("patch-status", "billing")]
    data = kube.secrets[(NS, "itcare-token")]["data"]
    assert base64.b64decode(data["access_token"]) == b"tok-2"


async def test_nothing_due_means_no_call_at_all() -> None:
    controller, kube, clock, requests = setup()
    state = controller.credentials[(NS, "billing")]
    await controller.reconcile(state)
    kube.calls.clear()
    clock.now += dt.timedelta(seconds=10)
    await controller.reconcile(state)
    assert kube.calls == []  # no read, no write, not even a status patch (nothing changed)
    assert requests == [1]


async def test_stale_cache_falls_back_to_create() -> None:
    controller, kube, clock, requests = setup()
    state = controller.credentials[(NS, "billing")]
    await controller.reconcile(state)
    del kube.secrets[(NS, "itcare-token")]  # deleted, and the watch has not told us yet
    clock.now += dt.timedelta(seconds=801)
    await controller.reconcile(state)
    assert ("create", "itcare-token") in kube.calls[-3:]
    assert requests == [1, 1]  # the new token is written, not re-requested
    assert base64.b64decode(kube.secrets[(NS, "itcare-token")]["data"]["access_token"]) == b"tok-2"


async def test_restart_reuses_the_stored_token_without_api_reads() -> None:
    controller, kube, clock, requests = setup()
    await controller.reconcile(controller.credentials[(NS, "billing")])
    stored = kube.secrets[(NS, "itcare-token")]
    # A new operator process: CR listing, then the managed-Secret listing, then reconcile.
    assert requests == [1]
    fresh, kube2, _, requests2 = setup(status=kube.status)  # the status the first wrote
    kube2.secrets[(NS, "itcare-token")] = copy.deepcopy(stored)
    fresh._clock = clock  # same time as the first
    fresh.target_secret_event(None, stored)
    kube2.calls.clear()
    await fresh.reconcile(fresh.credentials[(NS, "billing")])
    assert requests2 == []  # no new token
    assert all(verb != "get" for verb, _ in kube2.calls)  # and no reads


async def test_restart_when_the_secrets_are_listed_before_the_credentials() -> None:
    controller, kube, clock, requests = setup()
    await controller.reconcile(controller.credentials[(NS, "billing")])
    stored = copy.deepcopy(kube.secrets[(NS, "itcare-token")])
    assert requests == [1]
    fresh = Controller(
        Settings(),
        kube,
        controller.endpoints,
        Metrics(),
        clock=clock,  # type: ignore[arg-type]
        rand=lambda: 0.0,
    )
    fresh.target_secret_event(None, stored)  # the Secret listing comes first
    fresh.credential_event(None, {**CREDENTIAL, "status": kube.status})
    kube.calls.clear()
    await fresh.reconcile(fresh.credentials[(NS, "billing")])
    assert requests == [1]  # no new token
    assert all(verb != "get" for verb, _ in kube.calls)  # and no reads
