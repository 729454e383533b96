"""ClusterITCareCredential fan-out benchmark, against the real control plane.

    .venv/bin/python -m bench.cluster                 # 1,000 namespaces
    .venv/bin/python -m bench.cluster --namespaces 50 # quicker

One ClusterITCareCredential selects N labelled namespaces; the token endpoint is the
Keycloak-compatible server (its own process, one client). Measured in one run:

- sync_s: credential created -> the token in all N namespaces; floor_s: the same
  number of Secrets created by a bare script with 16 threads (as in bench/run.py);
- refresh_sync_s: a refresh's token request -> the new token in all N namespaces;
- token_requests_per_cycle: token requests per refresh cycle (ideal 1, whatever N);
- api_writes_per_cycle: Secret writes + status patches the operator made in one
  cycle (ideal N + 1), and all API requests per cycle;
- late_namespace_s: a namespace labelled after the fan-out -> its copy;
- delete_s: credential deleted -> every copy deleted and the finalizer released;
- operator peak RSS and CPU per cycle.

Results: docs/bench/cluster-results.json (one object per N) and a section in
docs/bench/cluster-results.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import platform
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes
from tests import environment
from tests.environment import Environment, free_port

from bench.run import ROOT, THREADS, Operator, floor, released, save_rows, stats

OUT = ROOT / "docs" / "bench"
GROUP, VERSION, PLURAL = "itcare.cegedim.cloud", "v1alpha1", "clusteritcarecredentials"
LIFETIME = 60  # seconds: refresh 20 s before expiry, so a cycle fits in a short run


def copies(core: kubernetes.client.CoreV1Api, name: str) -> dict[str, str]:
    """namespace -> expires-at annotation of every copy of ``name``."""
    resp = core.list_secret_for_all_namespaces(
        label_selector=f"itcare.cegedim.cloud/cluster-credential={name}", _preload_content=False
    )
    doc = json.loads(resp.data)
    resp.release_conn()
    return {
        item["metadata"]["namespace"]: item["metadata"]["annotations"][
            "itcare.cegedim.cloud/expires-at"
        ]
        for item in doc["items"]
    }


def token_requests(keycloak_url: str) -> int:
    return sum(1 for _, _, status in stats(keycloak_url)["requests"] if status == 200)


def wait(what: str, fn: Any, timeout: float, interval: float = 0.2) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if fn():
            return time.monotonic() - started
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def run(env: Environment, api: kubernetes.client.ApiClient, n: int, work: Path) -> dict[str, Any]:
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    tag = secrets.token_hex(2)
    kc_port = free_port()
    kc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.keycloak_fake",
            "--port",
            str(kc_port),
            "--generated-clients",
            "1",
            "--access-lifespan",
            str(LIFETIME),
            "--no-refresh-tokens",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    token_url = kc.stdout.readline().strip() if kc.stdout else ""
    keycloak_url = f"http://127.0.0.1:{kc_port}"
    platform_ns = f"cbench-{tag}-platform"
    core.create_namespace({"metadata": {"name": platform_ns}})
    core.create_namespaced_secret(
        platform_ns,
        {
            "metadata": {
                "name": "acct",
                "labels": {"itcare.cegedim.cloud/api-account": "true"},
            },
            "stringData": {"client-id": "bench-0", "client-secret": "bench-secret-0"},
        },
    )
    names = [f"cbench-{tag}-{i}" for i in range(n)]
    print(f"[{n} namespaces] creating namespaces...", flush=True)

    def namespace(name: str) -> None:
        released(
            core.create_namespace(
                {"metadata": {"name": name, "labels": {"cbench": tag}}}, _preload_content=False
            )
        )

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(namespace, names))
    floor_s = floor(core, n)  # the same number of Secret creations, by a bare script
    late = f"cbench-{tag}-late"
    core.create_namespace({"metadata": {"name": late}})
    op = Operator(
        env,
        None,
        token_url,
        work / f"operator-cluster-{n}.log",
        ("--cluster-credentials", f"--allowed-source-namespace={platform_ns}"),
    )
    op.start()
    try:
        result = measure(core, custom, op, keycloak_url, token_url, platform_ns, late, n, tag)
        return {
            **result,
            "floor_s": round(floor_s, 2),
            "sync_ratio_to_floor": round(result["sync_s"] / floor_s, 2),
        }
    finally:
        op.stop()
        kc.terminate()
        for name in [*names, late, platform_ns]:
            released(core.delete_namespace(name, _preload_content=False))


def measure(
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    op: Operator,
    keycloak_url: str,
    token_url: str,
    platform_ns: str,
    late: str,
    n: int,
    tag: str,
) -> dict[str, Any]:
    cred = f"cbench-{tag}"
    created = time.monotonic()
    custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ClusterITCareCredential",
            "metadata": {"name": cred},
            "spec": {
                "clientSecretRef": {"name": "acct", "namespace": platform_ns},
                "tokenURL": token_url,
                "targetSecret": {"name": "itcare-token"},
                "namespaceSelector": {"matchLabels": {"cbench": tag}},
            },
        },
    )
    print(f"[{n} namespaces] waiting for the fan-out...", flush=True)
    wait("all copies", lambda: op.sample() or len(copies(core, cred)) == n, 600)
    sync_s = time.monotonic() - created
    first_expiry = next(iter(copies(core, cred).values()))
    requests_before = token_requests(keycloak_url)
    metrics = op.metrics()
    writes_before = _writes(metrics)
    all_before = _all_requests(metrics)
    cpu_before = op.cpu_seconds()
    # One refresh cycle: the next token, then all copies holding it.
    print(f"[{n} namespaces] synced in {sync_s:.1f}s; waiting for a refresh...", flush=True)
    wait(
        "a refresh",
        lambda: op.sample() or token_requests(keycloak_url) > requests_before,
        LIFETIME + 30,
        0.05,
    )
    refreshed_at = time.monotonic()
    wait(
        "the new token everywhere",
        lambda: (
            op.sample()
            or (len(c := copies(core, cred)) == n and all(v != first_expiry for v in c.values()))
        ),
        600,
    )
    refresh_sync_s = time.monotonic() - refreshed_at
    time.sleep(2)  # let the status patch land
    metrics = op.metrics()
    after = _writes(metrics)
    cycle_writes = {k: after[k] - writes_before[k] for k in after}
    cycle_all = _all_requests(metrics) - all_before
    cycle_cpu = op.cpu_seconds() - cpu_before
    cycle_requests = token_requests(keycloak_url) - requests_before
    # A namespace labelled later.
    labelled = time.monotonic()
    core.patch_namespace(late, {"metadata": {"labels": {"cbench": tag}}})
    late_s = wait("the late namespace", lambda: late in copies(core, cred), 60, 0.05)
    del labelled
    # Deletion: every copy, then the finalizer.
    deleted = time.monotonic()
    custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, cred)
    wait(
        "cleanup",
        lambda: (
            not copies(core, cred)
            and not custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, field_selector=f"metadata.name={cred}"
            )["items"]
        ),
        600,
    )
    delete_s = time.monotonic() - deleted
    op.sample()
    return {
        "namespaces": n,
        "sync_s": round(sync_s, 2),
        "refresh_sync_s": round(refresh_sync_s, 2),
        "token_requests_per_cycle": cycle_requests,
        "secret_writes_per_cycle": round(cycle_writes["secrets"]),
        "status_patches_per_cycle": round(cycle_writes["status"]),
        "api_requests_per_cycle": round(cycle_all),
        "late_namespace_s": round(late_s, 2),
        "delete_s": round(delete_s, 2),
        "cpu_s_per_cycle": round(cycle_cpu, 2),
        "peak_rss_mib": round(op.peak_rss_kib / 1024, 1),
        "token_lifetime_s": LIFETIME,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _writes(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, float]:
    out = {"secrets": 0.0, "status": 0.0}
    for labels, value in metrics.get("itcare_kube_requests_total", []):
        if labels["resource"] == "secrets" and labels["verb"] in ("create", "update"):
            out["secrets"] += value
        elif labels["resource"] == f"{PLURAL}/status":
            out["status"] += value
    return out


def _all_requests(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> float:
    return sum(v for _, v in metrics.get("itcare_kube_requests_total", []))


def write(results: list[dict[str, Any]]) -> None:
    ordered = save_rows(OUT / "cluster-results.json", results, key="namespaces")
    keys = list(ordered[0])
    lines = [
        "# ClusterITCareCredential fan-out benchmark",
        "",
        "Generated by `.venv/bin/python -m bench.cluster` (`bench/cluster.py`): one",
        "ClusterITCareCredential selecting N namespaces, one refresh cycle observed.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + " --- |" * len(keys),
    ]
    lines += ["| " + " | ".join(str(r.get(k)) for k in keys) + " |" for r in ordered]
    (OUT / "cluster-results.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, action="append")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    sizes = args.namespaces or [1000]
    state = os.environ.get("ITCARE_TESTENV_STATE")
    if state and (Path(state) / "state.json").exists() and Environment.load(Path(state)).alive():
        env, own = Environment.load(Path(state)), False
    else:
        env, own = environment.start(keycloak=False), True
    try:
        subprocess.run(
            [
                str(env.bin_dir / "kubectl"),
                f"--kubeconfig={env.kubeconfig}",
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                str(ROOT / "crds" / f"{PLURAL}.{GROUP}.yaml"),
                "-f",
                str(ROOT / "crds" / f"itcarecredentials.{GROUP}.yaml"),
            ],
            check=True,
            capture_output=True,
        )
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(env.kubeconfig), client_configuration=config)
        config.connection_pool_maxsize = THREADS * 2
        api = kubernetes.client.ApiClient(config)
        results = [run(env, api, n, env.directory) for n in sizes]
        for r in results:
            print(json.dumps(r))
        if not args.no_write:
            write(results)
    finally:
        if own:
            env.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
