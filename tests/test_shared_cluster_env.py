"""A cluster like users' clusters, on the real control plane and Keycloak: Helm-release
Secrets of ~900 KiB that are none of our business beside our credentials, some of them
rewritten while the operator starts, and a tenant who poisons its own target Secret.

The operator's peak RSS with the foreign Secrets stays within 20 MiB of the same run
without them (they are never listed or watched: label selectors), and the poisoned
target stops neither the start-up nor the other namespace across a restart.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.proxy import KeycloakProxy
from tests.testenv import (
    OperatorProcess,
    condition,
    get_credential,
    make_credential,
    make_source_secret,
    secret_data,
    wait_for,
)

pytestmark = [pytest.mark.env]

FOREIGN = 150
FOREIGN_BYTES = 900 * 1024
RSS_MARGIN_KIB = 20 * 1024
POISON = {
    "itcare.cegedim.cloud/expires-at": "0001-01-01T00:00:00Z",
    "itcare.cegedim.cloud/refreshed-at": "9999-12-31T23:59:59-23:59",
}


def peak_rss_kib(op: OperatorProcess) -> int:
    assert op.proc is not None
    for line in open(f"/proc/{op.proc.pid}/status").read().splitlines():  # noqa: SIM115
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def helm_release(name: str) -> dict[str, Any]:
    """Shaped like a Helm 3 release Secret: gzip-then-base64 text, incompressible."""
    payload = base64.b64encode(os.urandom(FOREIGN_BYTES * 3 // 4)).decode()
    return {
        "metadata": {
            "name": name,
            "labels": {"owner": "helm", "name": name, "status": "deployed", "version": "1"},
        },
        "type": "helm.sh/release.v1",
        "data": {"release": base64.b64encode(payload.encode()).decode()[:FOREIGN_BYTES]},
    }


@pytest.fixture
def namespaces(core: kubernetes.client.CoreV1Api) -> Iterator[list[str]]:
    names = [f"t-{secrets.token_hex(4)}" for _ in range(3)]
    for name in names:
        core.create_namespace({"metadata": {"name": name}})
    yield names
    for name in names:
        with contextlib.suppress(ApiException):
            core.delete_namespace(name)


def test_foreign_secrets_cost_nothing_and_a_poisoned_target_stops_no_one(
    namespaces: list[str],
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    kc: KeycloakProxy,
    realm: dict[str, Any],
    run_operator: Callable[..., OperatorProcess],
) -> None:
    team_a, team_b, foreign = namespaces
    clients = realm["clients"]
    # The realm's two longest-lived clients (90 s, 60 s): no refresh falls due between
    # the first run and the end of the restart, so any token request is a restart's.
    accounts = {team_a: "itcare-demo", team_b: "itcare-node"}
    for ns, client in accounts.items():
        make_source_secret(core, ns, clients[client])
        make_credential(custom, ns, kc.token_url)
    for i in range(FOREIGN):
        core.create_namespaced_secret(foreign, helm_release(f"sh.helm.release.v1.app{i}.v1"))
    common = ["--standalone", f"--allowed-token-url={kc.base_url}/auth/realms/cloud/"]

    def ready(ns: str) -> bool:
        cond = condition(get_credential(custom, ns, "billing"), "Ready")
        return cond.get("status") == "True" and cond.get("reason") == "TokenValid"

    # The same operator without the foreign namespace in its view, then with it.
    baseline = run_operator(*(f"--namespace={ns}" for ns in (team_a, team_b)), *common)
    for ns in (team_a, team_b):
        wait_for(f"Ready in {ns}", lambda ns=ns: ready(ns), 60)
    without = peak_rss_kib(baseline)
    baseline.stop()
    tokens = {ns: (secret_data(core, ns, "itcare-token") or {}) for ns in (team_a, team_b)}

    # The tenant of team-b writes instants Python cannot represent into its target.
    core.patch_namespaced_secret(
        "itcare-token",
        team_b,
        {
            "metadata": {"annotations": POISON},
            "data": {"expires_at": base64.b64encode(b"0001-01-01T00:00:00Z").decode()},
        },
    )
    requests = {ns: kc.count(clients[c]["client_id"]) for ns, c in accounts.items()}

    churn_stop = threading.Event()

    def churn() -> None:  # Helm upgrades while the operator starts
        i = 0
        while not churn_stop.is_set() and i < 40:
            core.replace_namespaced_secret(
                f"sh.helm.release.v1.app{i % FOREIGN}.v1",
                foreign,
                helm_release(f"sh.helm.release.v1.app{i % FOREIGN}.v1"),
            )
            i += 1

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    restarted = run_operator(*(f"--namespace={ns}" for ns in namespaces), *common)
    try:
        for ns in (team_a, team_b):
            wait_for(f"Ready in {ns} after the restart", lambda ns=ns: ready(ns), 60)
        churner.join(120)
    finally:
        churn_stop.set()
    with_foreign = peak_rss_kib(restarted)
    print(f"peak RSS: {without} KiB without, {with_foreign} KiB with the foreign Secrets")
    # Restart safety held for both: no token minted, the stored ones kept.
    for ns, client in accounts.items():
        assert kc.count(clients[client]["client_id"]) == requests[ns], ns
        data = secret_data(core, ns, "itcare-token") or {}
        assert data.get("access_token") == tokens[ns].get("access_token"), ns
    # The poisoned expiry was repaired from the status (the operator's own record).
    repaired = secret_data(core, team_b, "itcare-token") or {}
    assert repaired["expires_at"] == tokens[team_b]["expires_at"]
    assert restarted.metric("itcare_object_errors_total") in (None, 0.0)
    assert with_foreign - without <= RSS_MARGIN_KIB, (
        f"peak RSS {with_foreign} KiB with {FOREIGN} foreign Secrets of "
        f"{FOREIGN_BYTES // 1024} KiB, {without} KiB without"
    )
