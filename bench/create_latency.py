"""Create-to-Secret latency against the real control plane and the real Keycloak.

    eval "$(scripts/testenv up)"; .venv/bin/python -m bench.create_latency [--n 20]

Creates the credentials one at a time (the operator already running and idle) and
reports the median and max time from the create call returning to the target Secret
being readable. Uses the running test environment (scripts/testenv up).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import kubernetes
from kubernetes.client.exceptions import ApiException
from tests.environment import Environment, free_port

GROUP, VERSION, PLURAL = "itcare.cegedim.cloud", "v1alpha1", "itcarecredentials"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()
    env = Environment.load(Path(os.environ["ITCARE_TESTENV_STATE"]))
    realm = env.realm()
    client = realm["clients"]["itcare-test"]
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(env.kubeconfig), client_configuration=config)
    api = kubernetes.client.ApiClient(config)
    core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
    ns = f"latency-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": ns}})
    core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "acct", "labels": {"itcare.cegedim.cloud/api-account": "true"}},
            "stringData": {
                "client-id": client["client_id"],
                "client-secret": client["client_secret"],
            },
        },
    )
    health = free_port()
    prefix = realm["token_url"].rsplit("/protocol/", 1)[0] + "/"
    op = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "itcare_operator",
            "run",
            f"--namespace={ns}",
            "--standalone",
            f"--allowed-token-url={prefix}",
            f"--health-port={health}",
            f"--metrics-port={free_port()}",
            "--log-level=WARNING",
        ],
        env={**os.environ, "KUBECONFIG": str(env.kubeconfig)},
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        latencies = []
        for i in range(args.n):
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                ns,
                PLURAL,
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "ITCareCredential",
                    "metadata": {"name": f"c{i}"},
                    "spec": {
                        "clientSecretRef": {"name": "acct"},
                        "tokenURL": realm["token_url"],
                        "targetSecret": {"name": f"t{i}"},
                    },
                },
            )
            created = time.monotonic()
            while True:
                try:
                    core.read_namespaced_secret(f"t{i}", ns)
                    break
                except ApiException:
                    time.sleep(0.01)
            latencies.append(time.monotonic() - created)
            time.sleep(0.5)
        print(
            json.dumps(
                {
                    "n": args.n,
                    "median_s": round(statistics.median(latencies), 3),
                    "max_s": round(max(latencies), 3),
                    "min_s": round(min(latencies), 3),
                }
            )
        )
    finally:
        op.terminate()
        op.wait(20)
        core.delete_namespace(ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
