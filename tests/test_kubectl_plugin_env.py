"""``kubectl itcare`` through the real kubectl (plugin discovery on PATH) against the real
kube-apiserver, with the operator writing the status it explains."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from itcare_operator.kubectl_plugin import REFRESH_ANNOTATION
from itcare_operator.token import parse_time
from itcare_operator.troubleshooting import REASONS
from tests.environment import Environment
from tests.testenv import (
    GROUP,
    VERSION,
    OperatorProcess,
    condition,
    get_credential,
    make_credential,
    wait_for,
)

pytestmark = pytest.mark.env

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_CRD = ROOT / "crds" / "clusteritcarecredentials.itcare.cegedim.cloud.yaml"
CPLURAL = "clusteritcarecredentials"
TOKEN_URL = "http://127.0.0.1:1/token"  # never reached: the source Secret is missing


def kubectl_itcare(testenv: Environment, *args: str) -> subprocess.CompletedProcess[str]:
    """``kubectl itcare ...`` as a user types it: kubectl finds kubectl-itcare on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ITCARE_", "KUBECONFIG"))}
    return subprocess.run(
        [
            str(testenv.bin_dir / "kubectl"),
            "itcare",
            *args,
            "--kubeconfig",
            str(testenv.kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "PATH": path, "HOME": str(testenv.directory)},
    )


@pytest.fixture(scope="module")
def cluster_crd(kubectl: Callable[..., Any]) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CLUSTER_CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CPLURAL}.{GROUP}")


def test_status_and_renew_of_a_failing_credential(
    testenv: Environment,
    namespace: str,
    custom: kubernetes.client.CustomObjectsApi,
    run_operator: Callable[..., OperatorProcess],
) -> None:
    run_operator(
        "--standalone", f"--namespace={namespace}", "--allowed-token-url=http://127.0.0.1:1/"
    )
    make_credential(custom, namespace, TOKEN_URL)
    wait_for(
        "SourceSecretNotFound",
        lambda: (
            condition(get_credential(custom, namespace), "Refreshed").get("reason")
            == "SourceSecretNotFound"
        ),
        timeout=30,
    )
    proc = kubectl_itcare(testenv, "status", f"{namespace}/billing")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"ITCareCredential {namespace}/billing\n")
    assert "Ready:     False NoToken" in out
    assert "Refreshed: False SourceSecretNotFound" in out
    assert "Last failure:" in out and "SourceSecretNotFound" in out
    assert REASONS["SourceSecretNotFound"].action in out
    assert "Target Secret:   itcare-token" in out

    proc = kubectl_itcare(testenv, "renew", f"{namespace}/billing")
    assert proc.returncode == 0, proc.stderr
    annotations = get_credential(custom, namespace)["metadata"]["annotations"]
    requested = parse_time(annotations[REFRESH_ANNOTATION])
    assert abs((requested - dt.datetime.now(dt.UTC)).total_seconds()) < 60
    assert f"{REFRESH_ANNOTATION}={annotations[REFRESH_ANNOTATION]}" in proc.stdout

    proc = kubectl_itcare(testenv, "status", f"{namespace}/absent")
    assert proc.returncode == 1 and "not found" in proc.stderr


@pytest.fixture
def cluster_credential(
    custom: kubernetes.client.CustomObjectsApi, cluster_crd: None, namespace: str
) -> Iterator[str]:
    name = f"plugin-{namespace}"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterITCareCredential",
        "metadata": {"name": name},
        "spec": {
            "clientSecretRef": {"name": "itcare-api-account", "namespace": namespace},
            "tokenURL": TOKEN_URL,
            "targetSecret": {"name": "itcare-token"},
            "namespaces": [namespace],
        },
    }
    custom.create_cluster_custom_object(GROUP, VERSION, CPLURAL, body)
    yield name
    custom.delete_cluster_custom_object(GROUP, VERSION, CPLURAL, name)


def test_status_and_renew_of_a_cluster_credential(
    testenv: Environment, custom: kubernetes.client.CustomObjectsApi, cluster_credential: str
) -> None:
    status = {
        "status": {
            "conditions": [
                {
                    "type": "Synced",
                    "status": "False",
                    "reason": "NamespacesFailed",
                    "message": "1 of 1 namespaces failed",
                    "lastTransitionTime": "2026-11-28T10:00:00Z",
                }
            ],
            "selectedNamespaces": 1,
            "syncedNamespaces": 0,
            "failedNamespaceCount": 1,
            "failedNamespaces": [
                {"namespace": "team-x", "reason": "TargetWriteFailed", "message": "403 Forbidden"}
            ],
        }
    }
    custom.patch_cluster_custom_object_status(GROUP, VERSION, CPLURAL, cluster_credential, status)
    proc = kubectl_itcare(testenv, "status", cluster_credential)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"ClusterITCareCredential {cluster_credential}\n")
    assert "Namespaces:      1 selected, 0 synced, 1 failed" in proc.stdout
    assert "team-x: TargetWriteFailed - 403 Forbidden" in proc.stdout
    assert REASONS["TargetWriteFailed"].action in proc.stdout

    proc = kubectl_itcare(testenv, "renew", cluster_credential)
    assert proc.returncode == 0, proc.stderr
    obj = custom.get_cluster_custom_object(GROUP, VERSION, CPLURAL, cluster_credential)
    assert REFRESH_ANNOTATION in obj["metadata"]["annotations"]


def two_context_kubeconfig(testenv: Environment, path: Path) -> Path:
    """The environment's kubeconfig, plus a current context on a dead server: only
    ``--context itcare-test`` reaches the cluster."""
    doc = yaml.safe_load(testenv.kubeconfig.read_text())
    doc["clusters"].append({"name": "dead", "cluster": {"server": "https://127.0.0.1:9"}})
    user = doc["contexts"][0]["context"]["user"]
    doc["contexts"].append({"name": "dead", "context": {"cluster": "dead", "user": user}})
    doc["current-context"] = "dead"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_run_uses_the_kubeconfig_and_context_flags(
    testenv: Environment,
    namespace: str,
    custom: kubernetes.client.CustomObjectsApi,
    run_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    kubeconfig = two_context_kubeconfig(testenv, tmp_path / "kubeconfig")
    run_operator(
        "--standalone",
        f"--namespace={namespace}",
        "--allowed-token-url=http://127.0.0.1:1/",
        f"--kubeconfig={kubeconfig}",
        "--context=itcare-test",
        extra_env={"KUBECONFIG": str(tmp_path / "absent")},
    )
    make_credential(custom, namespace, TOKEN_URL)
    wait_for(
        "the operator's status",
        lambda: (
            condition(get_credential(custom, namespace), "Refreshed").get("reason")
            == "SourceSecretNotFound"
        ),
        timeout=30,
    )
