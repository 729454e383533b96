"""How long the kubelet takes to put a refreshed token into a pod's Secret volume.

Starts the test environment with a real node (root; ``tests/node.py``), installs the
chart's image as a pod, serves one ITCareCredential, runs a consumer pod that reads the
token file every second, and compares when each token was written (the host polls the
Secret five times a second) with when the consumer first read it or a newer one.
The kubelet's ``syncFrequency`` is ``ITCARE_NODE_SYNC_FREQUENCY`` (default: the
kubelet's own default, 1m)::

    .venv/bin/python -m bench.delivery --minutes 12
    ITCARE_NODE_SYNC_FREQUENCY=10s .venv/bin/python -m bench.delivery --minutes 6

Writes ``docs/bench/delivery.md`` (``--out``) with the samples and their summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes
from tests import environment, node
from tests.node import SecretWatcher, consumer, consumer_reads, delivery_delays

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "itcare-token-operator"
GROUP, VERSION = "itcare.cegedim.cloud", "v1alpha1"


def measure(env: environment.Environment, minutes: float, client_id: str) -> dict[str, Any]:
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(env.kubeconfig), client_configuration=config)
    api = kubernetes.client.ApiClient(config)
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    apps = kubernetes.client.AppsV1Api(api)
    suffix = secrets.token_hex(3)
    system, team = f"bench-system-{suffix}", f"bench-team-{suffix}"
    for ns in (system, team):
        core.create_namespace({"metadata": {"name": ns}})

    def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(env.bin_dir / "kubectl"), f"--kubeconfig={env.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
        )

    kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    subprocess.run(
        [
            str(env.bin_dir / "helm"),
            f"--kubeconfig={env.kubeconfig}",
            "install",
            f"bench-{suffix}",
            str(CHART),
            "--namespace",
            system,
            *shlex.split(env.node["helm_args"]),
            "--set",
            f"operator.watchNamespaces[0]={team}",
            "--set",
            "crds.enabled=false",
            "--wait",
            "--timeout=3m",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "HELM_CACHE_HOME": str(env.directory / "helm-cache")},
    )
    client = env.realm()["clients"][client_id]
    core.create_namespaced_secret(
        team,
        {
            "metadata": {
                "name": "api-account",
                "labels": {"itcare.cegedim.cloud/api-account": "true"},
            },
            "stringData": {
                "client-id": client["client_id"],
                "client-secret": client["client_secret"],
            },
        },
    )
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        team,
        "itcarecredentials",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ITCareCredential",
            "metadata": {"name": "bench"},
            "spec": {
                "clientSecretRef": {"name": "api-account"},
                "tokenURL": env.node["pod_token_url"],
                "targetSecret": {"name": "itcare-token"},
            },
        },
    )
    apps.create_namespaced_deployment(team, consumer(env.node["consumer_image"], "reader"))
    with SecretWatcher(core, team) as watcher:
        time.sleep(minutes * 60)
    reads = consumer_reads(kubectl, team, "reader")
    delays = delivery_delays(watcher.writes, reads)
    expired = [t for t, _, exp in reads if t >= exp]
    cred = custom.get_namespaced_custom_object(GROUP, VERSION, team, "itcarecredentials", "bench")
    refreshed = next((c for c in cred["status"]["conditions"] if c["type"] == "Refreshed"), {}).get(
        "message", ""
    )
    return {
        "sync_frequency": env.node["sync_frequency"],
        "volume_delivery_seconds": node.delivery_bound(env.node["sync_frequency"]),
        "token_lifetime_s": client["lifespan"],
        "minutes": minutes,
        "writes": len(watcher.writes),
        "delays_s": [round(d, 1) for d in delays],
        "p50_s": round(statistics.median(delays), 1) if delays else None,
        "max_s": round(max(delays), 1) if delays else None,
        "reads": len(reads),
        "expired_reads": len(expired),
        "refreshed_condition": refreshed,
    }


def report(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            "# Kubelet delivery of a refreshed token to a pod's Secret volume",
            "",
            f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `bench/delivery.py` on "
            f"{platform.node()} ({os.cpu_count()} cores): kubelet v1.34 with "
            f"`syncFrequency: {result['sync_frequency']}`, tokens of "
            f"{result['token_lifetime_s']} s, {result['minutes']:g} minutes.",
            "",
            "| writes | delays measured | p50 | max | consumer reads | expired reads |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| {result['writes']} | {len(result['delays_s'])} | {result['p50_s']} s "
            f"| {result['max_s']} s | {result['reads']} | {result['expired_reads']} |",
            "",
            f"Samples (s): {', '.join(str(d) for d in result['delays_s'])}",
            "",
            "A delay runs from the operator's Secret write to the consumer's first read of "
            "that token or a newer one (a kubelet that syncs less often than the tokens "
            "change skips some). The operator's `Refreshed` condition said: "
            f'"{result["refreshed_condition"]}".',
            "",
            "Rerun: `.venv/bin/python -m bench.delivery --minutes "
            f"{result['minutes']:g}` (as root; ITCARE_NODE_SYNC_FREQUENCY sets the kubelet's "
            "syncFrequency).",
            "",
        ]
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--client", default="itcare-demo", help="realm client (its lifespan)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "delivery.md")
    args = parser.parse_args(argv)
    if reason := node.unavailable_reason():
        print(f"bench.delivery: no node: {reason}", file=sys.stderr)
        return 2
    env = environment.start(with_node=True)
    try:
        result = measure(env, args.minutes, args.client)
    finally:
        env.stop(remove=True)
    print(json.dumps(result, indent=2))
    args.out.write_text(report(result))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
