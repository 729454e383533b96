"""docs/consuming-tokens.md on the node: the Python and shell re-read snippets and the
env-var wrapper run in pods against the real Secret volume, created before the Secret
exists; each sees a refreshed token without a restart. The registry test runs it on the
operator it installed from the registry (one operator start, one refresh wait)."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from typing import Any

import kubernetes

from tests.environment import Environment
from tests.node import RESTRICTED_CONTAINER
from tests.test_consuming_snippets import CONSUMERS, ENV_APP
from tests.test_node import api_account, credential
from tests.testenv import wait_for

Run = Callable[..., Any]
SNIPPETS = {
    "itcare_token.py": CONSUMERS / "python" / "itcare_token.py",
    "itcare-token.sh": CONSUMERS / "shell" / "itcare-token.sh",
    "restart-on-token-change.sh": CONSUMERS / "env-wrapper" / "restart-on-token-change.sh",
}


def pod(name: str, image: str, command: list[str], env: dict[str, str] | None = None) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": name,
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                    "volumeMounts": [
                        {"name": "token", "mountPath": "/var/run/itcare", "readOnly": True},
                        {"name": "snippets", "mountPath": "/snippets", "readOnly": True},
                    ],
                    "securityContext": RESTRICTED_CONTAINER,
                }
            ],
            "volumes": [
                {"name": "token", "secret": {"secretName": "itcare-token"}},
                {"name": "snippets", "configMap": {"name": "snippets"}},
            ],
        },
    }


def fingerprints(kubectl: Run, namespace: str, name: str) -> list[str]:
    out = kubectl("-n", namespace, "logs", f"pod/{name}", check=False)
    lines = out.stdout.split() if out.returncode == 0 else []
    return [word for word in lines if len(word) == 64]


def snippet_pods_follow_the_secret_volume(
    node_env: Environment,
    team: str,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    kubectl: Run,
    realm: dict[str, Any],
    record_property: Callable[[str, object], None],
) -> None:
    """With an operator running: the snippet pods are created before the credential,
    wait for the Secret, start, and follow a refresh without a restart. Run by the
    registry test (tests/test_registry.py) on the operator installed from the registry."""
    core.create_namespaced_config_map(
        team,
        {
            "metadata": {"name": "snippets"},
            "data": {name: path.read_text() for name, path in SNIPPETS.items()},
        },
    )
    busybox, python = node_env.node["consumer_image"], node_env.node["operator_image"]
    pods = {
        "python-reader": pod("python-reader", python, ["python3", "/snippets/itcare_token.py"]),
        "shell-reader": pod("shell-reader", busybox, ["/bin/sh", "/snippets/itcare-token.sh"]),
        "env-app": pod(
            "env-app",
            busybox,
            ["/bin/sh", "/snippets/restart-on-token-change.sh", "/bin/sh", "-c", ENV_APP],
            {"CHECK_SECONDS": "2", "GRACE_SECONDS": "2"},
        ),
    }
    for body in pods.values():
        core.create_namespaced_pod(team, body)
    created = time.monotonic()

    # Before the Secret exists: the kubelet cannot mount it and says so.
    def failed_mount() -> bool:
        events = core.list_namespaced_event(team).items
        return any(e.reason == "FailedMount" and "itcare-token" in e.message for e in events)

    wait_for("a FailedMount event for the missing Secret", failed_mount, 60, 1.0)
    assert all(core.read_namespaced_pod(name, team).status.phase == "Pending" for name in pods)

    api_account(core, team, realm)
    credential(custom, team, node_env.node["pod_token_url"])
    seen: set[str] = set()

    def secret_fingerprint() -> str | None:
        try:
            data = core.read_namespaced_secret("itcare-token", team).data or {}
        except kubernetes.client.exceptions.ApiException:
            return None
        if "authorization" not in data:
            return None
        value = hashlib.sha256(base64.b64decode(data["authorization"])).hexdigest()
        seen.add(value)
        return value

    wait_for("the target Secret", secret_fingerprint, 90, 0.5)
    written = time.monotonic()

    def running() -> bool:
        secret_fingerprint()
        return all(core.read_namespaced_pod(name, team).status.phase == "Running" for name in pods)

    wait_for("the pods running once the Secret exists", running, 240, 1.0)
    start_delay = time.monotonic() - written
    record_property("pod_before_secret_start_seconds", round(start_delay, 1))
    print(
        f"\npods created {written - created:.1f}s before the Secret was written started "
        f"{start_delay:.1f}s after it"
    )

    def two_tokens_each() -> bool:
        secret_fingerprint()
        return all(len(set(fingerprints(kubectl, team, name))) >= 2 for name in pods)

    wait_for("every pod on its second token", two_tokens_each, 300, 2.0)
    for name in pods:
        prints = fingerprints(kubectl, team, name)
        assert set(prints) <= seen, f"{name} used a token the Secret never held"
        status = core.read_namespaced_pod(name, team).status
        assert sum(c.restart_count for c in status.container_statuses) == 0, name
    wrapper_log = kubectl("-n", team, "logs", "pod/env-app").stdout
    assert wrapper_log.count("start ") >= 2
