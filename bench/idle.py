"""Idle CPU: what each operator costs between refreshes, the common case.

    scripts/build-eso && .venv/bin/python -m bench.idle            # ours and ESO
    .venv/bin/python -m bench.idle --only ours --n 0 --n 10

A real ITCare token lives 1200 s, and most installations hold a handful of
credentials: the operator spends nearly all its time waiting. Per operator and N
(default 0 and 10): N credentials whose tokens live 1200 s (ESO refreshing every
600 s, half of it, as in ``bench.peers``), all target Secrets written, 10 s to
settle, then the CPU the operator process uses over ``--seconds`` in which no
refresh falls due (the token requests in the window are counted: they must be 0).

CPU is read from ``/proc/PID/task/*/schedstat`` (the scheduler's nanoseconds per
thread), not from ``/proc/PID/stat``'s 10 ms ticks: an idle operator uses a few
milliseconds a second. Results: docs/bench/idle.json and docs/bench/idle.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes
from tests import environment
from tests.environment import Environment

from bench.peers import (
    ESO_DIR,
    ESO_VERSION,
    Eso,
    JwtWatch,
    Ours,
    Peer,
    TokenServer,
    apply_crds,
)
from bench.run import OUT, THREADS, machine, save_rows, wait_out_create_delay

__all__ = ["main"]

LIFETIME = 1200  # ITCare's token lifetime


def cpu_ns(pid: int) -> int:
    """Nanoseconds on a CPU so far, summed over the process's live threads."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return total


def measure(
    peer: Peer,
    n: int,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    namespace: str,
    tokens: TokenServer,
    seconds: float,
) -> dict[str, Any]:
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda i: peer.source(core, namespace, i), range(n)))
    peer.start()
    watch = JwtWatch(core, namespace, peer.selector)
    watch.start()
    try:
        for i in range(n):
            peer.submit(custom, namespace, i)
        deadline = time.time() + 120
        while len(watch.versions) < n:
            if time.time() > deadline:
                raise RuntimeError(f"{peer.name} N={n}: not all target Secrets within 120 s")
            time.sleep(0.2)
        time.sleep(10)  # the last status writes and watch events settle
        began, cpu0 = time.time(), cpu_ns(peer.pid)
        time.sleep(seconds)
        ended, cpu1 = time.time(), cpu_ns(peer.pid)
        peer.sample()
        return {
            "cpu_ms_per_s": round((cpu1 - cpu0) / 1e6 / (ended - began), 3),
            "token_requests_in_window": len(tokens.requests(began, ended)),
            "rss_mib": round(peer.peak_rss_kib / 1024, 1),
            "seconds": round(ended - began, 1),
        }
    finally:
        watch.stop()
        peer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="credentials (default 0 and 10)")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--only", choices=["ours", "eso"])
    args = parser.parse_args()
    ns = args.n or [0, 10]
    if args.only != "ours" and not (ESO_DIR / "external-secrets").exists():
        print(f"{ESO_DIR}/external-secrets missing: run scripts/build-eso", file=sys.stderr)
        return 1
    env = environment.start(keycloak=False)
    rows: list[dict[str, Any]] = []
    try:
        apply_crds(env, eso=args.only != "ours")
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(env.kubeconfig), client_configuration=config)
        api = kubernetes.client.ApiClient(config)
        core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        wait_out_create_delay(api)
        for n in ns:
            tokens = TokenServer(max(n, 1), LIFETIME)
            row: dict[str, Any] = {"n": n}
            try:
                for name in ("ours", "eso"):
                    if args.only and name != args.only:
                        continue
                    namespace = f"idle-{n}-{name}-{secrets.token_hex(2)}"
                    core.create_namespace({"metadata": {"name": namespace}})
                    log = env.directory / f"{namespace}.log"
                    peer = make(name, env, namespace, tokens.token_url, log)
                    row[name] = measure(peer, n, core, custom, namespace, tokens, args.seconds)
                    print(f"[{name} N={n}] {json.dumps(row[name])}", flush=True)
            finally:
                tokens.stop()
            rows.append(row)
        write(rows, args)
    finally:
        env.stop()
    return 0


def make(name: str, env: Environment, namespace: str, url: str, log: Path) -> Peer:
    if name == "ours":
        return Ours(env, namespace, url, log)
    return Eso(env, namespace, url, log, concurrent=32, refresh=LIFETIME // 2)


def write(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": "python -m bench.idle " + " ".join(sys.argv[1:]),
        "eso_version": ESO_VERSION,
    }
    # merge: a run with --only keeps the other operator's numbers for that N
    ordered = save_rows(OUT / "idle.json", [{**row, **meta} for row in rows], merge=True)
    lines = [
        "# Idle CPU: between refreshes",
        "",
        "Generated by `.venv/bin/python -m bench.idle` (`bench/idle.py`; ESO built by",
        "`scripts/build-eso`). Do not edit: rerun. Tokens live 1200 s (ITCare's lifetime);",
        "ESO refreshes every 600 s. CPU over a window in which no refresh falls due, from",
        "the scheduler's per-thread nanoseconds; the same control plane, one after the other.",
        "",
        "| N credentials | ours CPU (ms/s) | ESO CPU (ms/s) | ours RSS (MiB) | ESO RSS (MiB) "
        "| token requests in the window (ours / ESO) | date, machine |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def get(result: dict[str, Any], key: str) -> str:
        return str(result.get(key, "-"))

    for row in ordered:
        ours, eso = row.get("ours", {}), row.get("eso", {})
        lines.append(
            f"| {row['n']} | {get(ours, 'cpu_ms_per_s')} | {get(eso, 'cpu_ms_per_s')} "
            f"| {get(ours, 'rss_mib')} | {get(eso, 'rss_mib')} "
            f"| {get(ours, 'token_requests_in_window')} / {get(eso, 'token_requests_in_window')} "
            f"| {row['date']}, {row['machine']} |"
        )
    (OUT / "idle.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
