"""The controller's service tests are in ``tests/test_service_*.py``, over the in-memory
API server of :mod:`tests.fake_kube`. This module keeps what other unit modules import
from it: ``setup`` drives ``Controller.reconcile`` on a credential the fake does not
hold, so its status patches are kept in ``kube.status`` (the last one, ``None`` dropped
as a merge patch would)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from itcare_operator.metrics import Metrics
from itcare_operator.namespaced import Controller
from itcare_operator.settings import Settings
from itcare_operator.token_endpoint import TokenEndpoint, TokenEndpoints
from tests.fake_kube import URL, Clock, FakeKube, merge_patch, token_handler

__all__ = ["CREDENTIAL", "NS", "URL", "Clock", "FakeKube", "StatusKube", "setup", "token_handler"]

NS = "team-a"
CREDENTIAL = {
    "metadata": {"namespace": NS, "name": "billing", "uid": "c1", "generation": 1},
    "spec": {
        "clientSecretRef": {"name": "acct"},
        "tokenURL": URL,
        "targetSecret": {"name": "itcare-token"},
    },
}


VERBS = {
    "get_secret": "get",
    "create_secret": "create",
    "replace_secret": "update",
    "patch_status": "patch-status",
}


class StatusKube(FakeKube):
    """The fake, plus the last status patched for a credential it does not store;
    ``calls`` name the Secret calls by their HTTP verb, as those modules expect."""

    def __init__(self) -> None:
        super().__init__()
        self.status: dict[str, Any] = {}

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        if (namespace, name) in self.credentials:
            await super().patch_status(namespace, name, status)
        else:
            self._call("patch_status", name)
        self.status = merge_patch({}, dict(status))

    def _call(self, method: str, name: str) -> None:
        try:
            super()._call(method, name)
        finally:
            self.calls[-1] = (VERBS.get(method, method), name)


def setup(
    status: Mapping[str, Any] | None = None, settings: Settings | None = None
) -> tuple[Controller, StatusKube, Clock, list[int]]:
    """A controller after its start-up listings; ``status``: the credential's, as listed."""
    kube, clock = StatusKube(), Clock()
    requests: list[int] = []
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
