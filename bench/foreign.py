"""Foreign Secrets: what Secrets the operator does not own cost it (issue 22).

    make bench-foreign                                  # N = 1,000, F = 5,000
    .venv/bin/python -m bench.foreign --n 100 --foreign 500 --large 10 --no-write

The operator watches Secrets with server-side label selectors only
(``itcare.cegedim.cloud/api-account=true``, ``app.kubernetes.io/managed-by=
itcare-token-operator``), so Secrets it does not own should cost it nothing. One run,
one control plane of its own (``tests.environment``, no node), one token server
(``bench.token_server``), one cluster-wide operator process (``bench.run.Operator``):

1. N credentials (one API account each) in one namespace, all ready, ``--warmup``
   token lifetimes for their refresh instants to drift apart (they start in step);
   then phase A, "without": ``--restarts`` restarts (median time until all N are ready again), then
   a window of ``--cycles`` token lifetimes: operator CPU in the window, CPU per
   refresh, peak RSS (VmHWM of the last process: its restart and the window);
2. F foreign Secrets in ``--namespaces`` other namespaces (mostly TLS- and
   service-account-shaped of a few KiB, ``--large`` Helm-release-shaped of 900 KiB of
   incompressible base64), created with 16 threads while the operator runs; a churner
   rewrites ``--churn`` of them a second (one in five a large one) from then on;
3. phase B, "with": the same restarts and window. Ratios B/A; the target is <= 1.1.

Results: docs/bench/foreign.json and docs/bench/foreign.md (unless ``--no-write``).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import secrets
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
from tests import environment

from bench.peers import Ours, TokenServer, apply_crds
from bench.run import (
    OUT,
    THREADS,
    TargetWatch,
    cpu_seconds,
    kube_requests,
    lifetime_for,
    machine,
    wait_out_create_delay,
)

__all__ = ["main"]

TARGET_RATIO = 1.1
ETCD_REQUEST_LIMIT = 1536 * 1024  # etcd's --max-request-bytes default: 1.5 MiB
LARGE_BYTES = 900 * 1024  # a Helm release's stored value: base64 of gzip
SMALL_BYTES = 3 * 1024  # a TLS or service-account Secret: a few KiB
# The ratios reported, and which of them the target applies to.
RATIO_KEYS = ("cpu_ms_per_refresh", "window_cpu_s", "peak_rss_mib", "restart_s")
EXTRA_RATIO_KEYS = (
    "restart_quiet_s",
    "restart_cpu_s",
    "api_requests_per_refresh",
    "control_plane_cpu_s",
)
QUIET = 0.1  # a quiet restart: fewer token requests meanwhile than this share of N


@dataclass(frozen=True)
class Foreign:
    """One foreign Secret: its kind (``tls``, ``sa`` or ``helm``) and namespace index."""

    index: int
    kind: str
    namespace: int

    @property
    def name(self) -> str:
        if self.kind == "helm":
            return f"sh.helm.release.v1.app{self.index}.v1"
        return f"{self.kind}-{self.index}"

    @property
    def large(self) -> bool:
        return self.kind == "helm"


def plan(foreign: int, large: int, namespaces: int) -> list[Foreign]:
    """``foreign`` Secrets: the first ``large`` Helm releases, then TLS and
    service-account ones alternately; spread round-robin over the namespaces."""
    if not 0 <= large <= foreign:
        raise ValueError(f"--large {large} must be between 0 and --foreign {foreign}")
    kinds = ["helm"] * large + ["tls" if i % 2 == 0 else "sa" for i in range(foreign - large)]
    return [Foreign(i, kind, i % max(namespaces, 1)) for i, kind in enumerate(kinds)]


def churn_order(items: list[Foreign], large_every: int = 5) -> list[Foreign]:
    """One round of the churner: the small Secrets in order with a large one (cycling)
    every ``large_every``-th write, so every large one is rewritten over and over."""
    small = [f for f in items if not f.large]
    big = [f for f in items if f.large]
    if not big:
        return small
    if not small:
        return big
    out: list[Foreign] = []
    b = 0
    for s in small:
        if len(out) % large_every == large_every - 1:
            out.append(big[b % len(big)])
            b += 1
        out.append(s)
    return out


def _text(size: int, rng: Any = os.urandom) -> str:
    """``size`` characters of incompressible base64 text."""
    return base64.b64encode(rng(size * 3 // 4 + 3)).decode()[:size]


def _pem(label: str, size: int) -> str:
    body = _text(size)
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def secret_data(item: Foreign) -> dict[str, str]:
    """The Secret's ``data`` (values base64 of the stored bytes), fresh random content."""
    if item.kind == "helm":
        stored = {"release": _text(LARGE_BYTES)}
    elif item.kind == "tls":
        stored = {
            "tls.crt": _pem("CERTIFICATE", SMALL_BYTES // 2),
            "tls.key": _pem("PRIVATE KEY", SMALL_BYTES // 6),
            "ca.crt": _pem("CERTIFICATE", SMALL_BYTES // 3),
        }
    else:  # a legacy service-account token Secret's keys (Opaque: no token controller)
        stored = {
            "token": _text(SMALL_BYTES // 2),
            "ca.crt": _pem("CERTIFICATE", SMALL_BYTES // 3),
            "namespace": f"ns-{item.namespace}",
        }
    return {k: base64.b64encode(v.encode()).decode() for k, v in stored.items()}


def foreign_secret(item: Foreign) -> dict[str, Any]:
    """The Secret's body: shaped like what other tools leave in a shared cluster, labels
    included (some with our ``managed-by`` key, another value): none is ours."""
    metadata: dict[str, Any] = {"name": item.name}
    if item.kind == "helm":
        metadata["labels"] = {
            "owner": "helm",
            "name": f"app{item.index}",
            "status": "deployed",
            "version": "1",
        }
        kind = "helm.sh/release.v1"
    elif item.kind == "tls":
        metadata["labels"] = {"app.kubernetes.io/managed-by": "Helm"}
        metadata["annotations"] = {"cert-manager.io/certificate-name": f"cert-{item.index}"}
        kind = "kubernetes.io/tls"
    else:
        metadata["annotations"] = {"kubernetes.io/service-account.name": f"sa-{item.index}"}
        kind = "Opaque"
    return {"metadata": metadata, "type": kind, "data": secret_data(item)}


def stored_bytes(body: dict[str, Any]) -> int:
    """Bytes the Secret's values take once decoded (what etcd stores, near enough)."""
    return sum(len(base64.b64decode(v)) for v in body.get("data", {}).values())


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM), KiB; 0 when it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_fraction(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The machine's busy share between two ``cpu_times`` readings (all processes)."""
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total > 0 else 0.0


def ratio(with_: float | None, without: float | None) -> float | None:
    """B/A, rounded; None when either is missing or A is 0."""
    if with_ is None or without is None or without == 0:
        return None
    return round(with_ / without, 3)


def quiet_restart_s(times: list[float], requests: list[int], n: int) -> float | None:
    """Median time of the restarts during which fewer than 10 % of the N tokens were
    requested: the restart's own cost, without the refreshes that fell due meanwhile
    (a restart that meets a refresh wave of N is several times longer)."""
    quiet = [t for t, r in zip(times, requests, strict=True) if r < QUIET * n]
    return round(statistics.median(quiet), 2) if quiet else None


def enrich(result: dict[str, Any]) -> dict[str, Any]:
    """Add the quiet restarts' time per phase, then the ratios and verdicts."""
    for key in ("without", "with"):
        p = result[key]
        if "restart_token_requests_all" in p:
            p["restart_quiet_s"] = quiet_restart_s(
                p["restart_s_all"], p["restart_token_requests_all"], result["n"]
            )
    result["ratios"] = ratios(result["without"], result["with"])
    result["met"] = verdicts(result["ratios"], result.get("target_ratio", TARGET_RATIO))
    return result


def ratios(without: dict[str, Any], with_: dict[str, Any]) -> dict[str, float | None]:
    return {k: ratio(with_.get(k), without.get(k)) for k in (*RATIO_KEYS, *EXTRA_RATIO_KEYS)}


def verdicts(rs: dict[str, float | None], target: float = TARGET_RATIO) -> dict[str, bool | None]:
    """Per target key: ratio <= target (None when not measured)."""
    return {k: None if rs.get(k) is None else rs[k] <= target for k in RATIO_KEYS}  # type: ignore[operator]


LABELS = {
    "cpu_ms_per_refresh": "operator CPU per refresh (ms)",
    "window_cpu_s": "operator CPU in the window (s)",
    "peak_rss_mib": "operator peak RSS, VmHWM (MiB)",
    "restart_s": "restart: until all N ready (s, median)",
    "restart_quiet_s": "restart with < 10 % of tokens due meanwhile (s, median)",
    "restart_cpu_s": "restart: operator CPU until all N ready (s, median)",
    "api_requests_per_refresh": "operator API requests per refresh",
    "control_plane_cpu_s": "etcd + kube-apiserver CPU in the window (s)",
    "refreshes": "refreshes seen in the window",
    "token_requests": "token requests in the window",
    "machine_busy": "whole machine busy in the window (share of 2 cores)",
    "loadavg_1m": "load average at the window's end (1 min)",
}


def render(result: dict[str, Any]) -> str:
    """docs/bench/foreign.md from the result (foreign.json's object)."""
    a, b, rs = result["without"], result["with"], result["ratios"]
    met = verdicts(rs, result["target_ratio"])
    f = result["foreign"]
    lines = [
        "# Foreign Secrets: what Secrets that are not ours cost the operator",
        "",
        "Generated by `make bench-foreign` (`nice -n 10 .venv/bin/python -m bench.foreign`,",
        "`bench/foreign.py`). Do not edit: rerun. Raw numbers: `foreign.json`.",
        "",
        f"Run of {result['date']} on {result['machine']}, {result['runtime_s']:.0f} s in all"
        f" (command: `{result['command']}`).",
        "",
        "## Setup",
        "",
        f"- One control plane of the bench's own (etcd + kube-apiserver, no node), one "
        f"token server, one cluster-wide operator process; N = {result['n']} "
        f"ITCareCredentials in one namespace, tokens of {result['token_lifetime_s']} s.",
        f"- Phase A (without): all N ready, {result.get('warmup_s', 0)} s of warm-up (the "
        "refresh instants, in step after the N creates, drift apart by the schedule's "
        f"jitter), then {result['restarts']} operator restart(s) "
        f"(median time until all N are ready again), then a {result['window_s']} s window "
        f"({result['cycles']} token lifetimes).",
        f"- Then F = {f['count']} foreign Secrets in {f['namespaces']} other namespaces, "
        f"created in {f['create_s']} s while the operator ran: {f['small']} TLS- and "
        f"service-account-shaped of about {f['small_kib']} KiB, {f['large']} "
        f"Helm-release-shaped of {f['large_kib']} KiB of incompressible base64 "
        f"({f['total_mib']} MiB in all). Some carry `app.kubernetes.io/managed-by: Helm`: "
        "our selector's key with another value.",
        f"- From then on a churner rewrote foreign Secrets at {f['churn_target_per_s']}/s "
        f"(one write in five a large one): {f['churn_writes']} writes "
        f"({f['churn_large_writes']} large) at {f['churn_per_s']}/s achieved, "
        f"{f['churn_errors']} errors.",
        f"- Phase B (with): the same {result['restarts']} restart(s) and window, "
        "the churner running throughout.",
        "",
        "## Results",
        "",
        f"| measure | A: without | B: with {f['count']} foreign | B/A "
        f"| target B/A <= {result['target_ratio']} |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in (*RATIO_KEYS, *EXTRA_RATIO_KEYS):
        verdict = met.get(key)
        shown = (
            "-"
            if key not in met
            else ("no run" if verdict is None else "met" if verdict else "**missed**")
        )
        lines.append(f"| {LABELS[key]} | {a.get(key)} | {b.get(key)} | {rs.get(key)} | {shown} |")
    for key in ("refreshes", "token_requests", "machine_busy", "loadavg_1m"):
        lines.append(f"| {LABELS[key]} | {a.get(key)} | {b.get(key)} | | |")
    if result.get("notes"):
        lines += ["", "## Notes on this run", "", *(f"- {note}" for note in result["notes"])]
    lines += [
        "",
        "## What the ratio means",
        "",
        "B/A is the operator's cost with the foreign Secrets (and their churn) over its cost "
        "without them, on the same control plane, token server, credentials and window in "
        "one run. 1.0 means they cost it nothing: the API server filters Secrets by label "
        "before they reach the operator, so it neither receives nor decodes them. The target "
        f"(<= {result['target_ratio']}) leaves 10 % for noise. The extra rows (restart CPU, "
        "API requests, control-plane CPU) are context without a target: the control plane "
        "does pay for the foreign Secrets and their churn.",
        "",
        "**Restarts.** With 60 s tokens each credential refreshes about every 40 s, and "
        "refreshes that fall due while the operator restarts appear to be done before it "
        "counts the credential ready: a restart that meets a wave of them (up to all N, the token "
        "server's count per restart is in foreign.json) takes several times longer than "
        "one that does not. So the median over a phase's restarts depends on where they "
        "fall in the refresh cycle more than on anything else; the quiet-restart row "
        "compares only restarts during which fewer than 10 % of the N tokens were requested.",
        "",
        "**Noise.** The machine has 2 cores and is shared: other work (test suites, "
        "mutation testing, other benches) may run during either phase, and the control "
        "plane, the churner and the token server share the cores with the operator. "
        "The machine's busy share and load average per window are in the table; a ratio "
        "a little above the target on one run is within that noise, a large one is not. "
        "Operator CPU is read from /proc/PID/stat (10 ms ticks).",
        "",
        "## Rerun",
        "",
        "    make bench-foreign                 # N = 1,000, F = 5,000: about 17 minutes",
        '    make bench-foreign FOREIGN_ARGS="--n 100 --foreign 500 --large 10 --no-write"',
        "",
        "Options: `--n`, `--foreign`, `--large`, `--namespaces`, `--churn` (writes per "
        "second), `--cycles` (window in token lifetimes), `--restarts`, `--warmup` (token "
        "lifetimes before phase A), `--no-write`.",
    ]
    return "\n".join(lines) + "\n"


class Churner:
    """Rewrites foreign Secrets (merge patch of ``data``) at a steady rate, in a thread."""

    def __init__(
        self, api: kubernetes.client.ApiClient, items: list[Foreign], names: list[str], rate: float
    ) -> None:
        self.api, self.order, self.names, self.rate = api, churn_order(items), names, rate
        self.writes = self.large_writes = self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = self.stopped = 0.0

    def start(self) -> None:
        self.started = time.time()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self.stopped = time.time()

    def per_s(self) -> float:
        return round(self.writes / max((self.stopped or time.time()) - self.started, 1e-9), 2)

    def _write(self, item: Foreign) -> None:
        host = self.api.configuration.host
        url = f"{host}/api/v1/namespaces/{self.names[item.namespace]}/secrets/{item.name}"
        body = {
            "metadata": {"annotations": {"bench.itcare/rev": str(time.time())}},
            "data": secret_data(item),
        }
        try:
            resp = self.api.rest_client.pool_manager.request(
                "PATCH",
                url,
                body=json.dumps(body).encode(),
                headers={
                    "Content-Type": "application/merge-patch+json",
                    "Accept": "application/json",
                },
            )
            ok = resp.status == 200
        except Exception:
            ok = False
        if ok:
            self.writes += 1
            self.large_writes += item.large
        else:
            self.errors += 1

    def _run(self) -> None:
        if not self.order or self.rate <= 0:
            return
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            i, next_at = 0, time.monotonic()
            while not self._stop.is_set():
                pool.submit(self._write, self.order[i % len(self.order)])
                i += 1
                next_at += 1 / self.rate
                self._stop.wait(max(0.0, next_at - time.monotonic()))


def create_foreign(
    api: kubernetes.client.ApiClient, items: list[Foreign], names: list[str]
) -> tuple[float, int]:
    """Create the namespaces and Secrets with 16 threads; (seconds, stored bytes)."""
    core = kubernetes.client.CoreV1Api(api)
    for name in names:
        core.create_namespace({"metadata": {"name": name, "labels": {"bench": "foreign"}}})
    host = api.configuration.host
    headers = {"Content-Type": "application/json", "Accept": "application/json"}

    def create(item: Foreign) -> int:
        body = foreign_secret(item)
        url = f"{host}/api/v1/namespaces/{names[item.namespace]}/secrets"
        resp = api.rest_client.pool_manager.request(
            "POST", url, body=json.dumps(body).encode(), headers=headers
        )
        if resp.status != 201:
            raise RuntimeError(
                f"foreign {item.name}: create answered {resp.status} {resp.data[:300]!r}"
            )
        return stored_bytes(body)

    started = time.monotonic()
    # Large ones first: they take longest; spread over the pool with the small ones after.
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        total = sum(pool.map(create, sorted(items, key=lambda f: not f.large)))
    return time.monotonic() - started, total


def ready_count(op: Ours) -> float:
    return sum(
        v for lb, v in op.metrics().get("itcare_credentials", []) if lb.get("state") == "ready"
    )


def phase(
    op: Ours,
    n: int,
    *,
    label: str,
    restarts: int,
    window_s: float,
    watch: TargetWatch,
    tokens: TokenServer,
    control_plane: list[int],
) -> dict[str, Any]:
    """Restarts (median time until all N are ready), then the window on the last
    process: its CPU, refreshes, API requests, peak RSS (VmHWM: restart and window)."""
    times, cpus, requested = [], [], []
    for r in range(restarts):
        op.stop()
        began = time.time()
        op.start()
        while ready_count(op) < n:
            if time.time() - began > 600:
                raise RuntimeError(f"{label}: not all {n} ready within 600 s of a restart")
            time.sleep(0.1)
        times.append(time.time() - began)
        cpus.append(op.cpu_seconds())
        # Refreshes that fell due while it restarted (the token server counts them).
        requested.append(len(tokens.requests(began, time.time())))
        print(
            f"[{label}] restart {r + 1}: {times[-1]:.2f}s, CPU {cpus[-1]:.2f}s, "
            f"{requested[-1]} token requests meanwhile",
            flush=True,
        )
    time.sleep(5)  # the restart's last writes settle
    with watch.lock:
        versions0 = sum(len(v) for v in watch.versions.values())
    cpu0, cp0, metrics0, machine0 = (
        op.cpu_seconds(),
        cpu_seconds(*control_plane),
        op.metrics(),
        cpu_times(),
    )
    began = time.time()
    print(f"[{label}] window of {window_s:.0f}s...", flush=True)
    while time.time() < began + window_s:
        op.sample()
        time.sleep(0.5)
    ended = time.time()
    cpu1, cp1, metrics1, machine1 = (
        op.cpu_seconds(),
        cpu_seconds(*control_plane),
        op.metrics(),
        cpu_times(),
    )
    with watch.lock:
        versions1 = sum(len(v) for v in watch.versions.values())
    refreshes = versions1 - versions0
    window_cpu = cpu1 - cpu0
    result = {
        "restart_s": round(statistics.median(times), 2),
        "restart_s_all": [round(t, 2) for t in times],
        "restart_cpu_s": round(statistics.median(cpus), 2),
        "restart_cpu_s_all": [round(c, 2) for c in cpus],
        "restart_token_requests_all": requested,
        "window_s": round(ended - began, 1),
        "window_cpu_s": round(window_cpu, 2),
        "refreshes": refreshes,
        "cpu_ms_per_refresh": round(window_cpu * 1000 / max(refreshes, 1), 2),
        "token_requests": len([r for r in tokens.requests(began, ended) if r[2] == 200]),
        "api_requests_per_refresh": round(
            (kube_requests(metrics1) - kube_requests(metrics0)) / max(refreshes, 1), 2
        ),
        "peak_rss_mib": round(vm_hwm_kib(op.pid) / 1024, 1),
        "max_sampled_rss_mib": round(op.peak_rss_kib / 1024, 1),
        "control_plane_cpu_s": round(cp1 - cp0, 1),
        "machine_busy": busy_fraction(machine0, machine1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(f"[{label}] {json.dumps(result)}", flush=True)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    n, lifetime = args.n, lifetime_for(args.n)
    items = plan(args.foreign, args.large, args.namespaces)
    run_id = secrets.token_hex(2)
    env = environment.start(keycloak=False)  # our own, in its own directory: no node
    names = [f"foreign-{k:02d}-{run_id}" for k in range(args.namespaces)]
    namespace = f"bench-foreign-{n}-{run_id}"
    tokens: TokenServer | None = None
    op: Ours | None = None
    churner: Churner | None = None
    watch: TargetWatch | None = None
    api: kubernetes.client.ApiClient | None = None
    try:
        apply_crds(env, eso=False)
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(env.kubeconfig), client_configuration=config)
        config.connection_pool_maxsize = THREADS * 2
        api = kubernetes.client.ApiClient(config)
        core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        wait_out_create_delay(api)
        control_plane = [
            pid for name, pid in env.processes.items() if name in ("etcd", "kube-apiserver")
        ]
        tokens = TokenServer(n, lifetime)
        core.create_namespace({"metadata": {"name": namespace}})
        op = Ours(env, None, tokens.token_url, env.directory / "operator.log")
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda i: op.source(core, namespace, i), range(n)))
        op.start()
        watch = TargetWatch(core, namespace)
        watch.start()
        print(f"creating {n} credentials (token lifetime {lifetime}s)...", flush=True)
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda i: op.submit(custom, namespace, i), range(n)))
        deadline = time.time() + 600
        while ready_count(op) < n:
            if time.time() > deadline:
                raise RuntimeError(f"not all {n} credentials ready within 600 s")
            time.sleep(0.5)
        # Refresh instants start in step (all N created at once) and drift apart by the
        # schedule's jitter: phase A starts once they have, as phase B does.
        print(f"all ready; warm-up of {args.warmup * lifetime}s...", flush=True)
        time.sleep(args.warmup * lifetime)
        window_s = args.cycles * lifetime
        common = {
            "restarts": args.restarts,
            "window_s": window_s,
            "watch": watch,
            "tokens": tokens,
            "control_plane": control_plane,
        }
        without = phase(op, n, label="A without", **common)

        print(f"creating {len(items)} foreign Secrets in {len(names)} namespaces...", flush=True)
        create_s, total = create_foreign(api, items, names)
        print(f"foreign Secrets created in {create_s:.1f}s ({total / 2**20:.0f} MiB)", flush=True)
        churner = Churner(api, items, names, args.churn)
        churner.start()
        with_ = phase(op, n, label="B with", **common)
        churner.stop()
        large = sum(f.large for f in items)
        rs = ratios(without, with_)
        return {
            "n": n,
            "token_lifetime_s": lifetime,
            "cycles": args.cycles,
            "warmup_s": args.warmup * lifetime,
            "window_s": window_s,
            "restarts": args.restarts,
            "foreign": {
                "count": len(items),
                "large": large,
                "small": len(items) - large,
                "namespaces": len(names),
                "large_kib": LARGE_BYTES // 1024,
                "small_kib": round(
                    statistics.mean(
                        stored_bytes(foreign_secret(f)) for f in items[large : large + 20]
                    )
                    / 1024,
                    1,
                )
                if len(items) > large
                else None,
                "total_mib": round(total / 2**20, 1),
                "create_s": round(create_s, 1),
                "churn_target_per_s": args.churn,
                "churn_writes": churner.writes,
                "churn_large_writes": churner.large_writes,
                "churn_errors": churner.errors,
                "churn_per_s": churner.per_s(),
            },
            "without": without,
            "with": with_,
            "ratios": rs,
            "target_ratio": TARGET_RATIO,
            "met": verdicts(rs),
            "runtime_s": round(time.time() - started, 1),
            "machine": machine(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": "python -m bench.foreign " + " ".join(sys.argv[1:]),
        }
    finally:
        if churner:
            churner.stop()
        if watch:
            watch.stop()
        if op:
            op.stop()
        if tokens:
            tokens.stop()
        if api is not None:
            cleanup(kubernetes.client.CoreV1Api(api), [*names, namespace])
        env.stop()


def cleanup(core: kubernetes.client.CoreV1Api, names: list[str], timeout: float = 120) -> None:
    """Delete the namespaces and wait (a while) until they are gone."""
    for name in names:
        with contextlib.suppress(kubernetes.client.ApiException):
            core.delete_namespace(name)
    deadline, left = time.time() + timeout, set(names)
    while time.time() < deadline:
        left = {str(i.metadata.name) for i in core.list_namespace().items if i.metadata} & set(
            names
        )
        if not left:
            print(f"deleted {len(names)} namespaces", flush=True)
            return
        time.sleep(2)
    print(f"namespaces still terminating after {timeout:.0f}s: {len(left)}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="credentials (1000)")
    parser.add_argument("--foreign", type=int, default=5000, help="foreign Secrets (5000)")
    parser.add_argument("--large", type=int, default=100, help="of them Helm releases (100)")
    parser.add_argument("--namespaces", type=int, default=50, help="for the foreign ones (50)")
    parser.add_argument("--churn", type=float, default=5, help="foreign rewrites a second (5)")
    parser.add_argument("--cycles", type=int, default=3, help="window, in token lifetimes (3)")
    parser.add_argument("--restarts", type=int, default=5, help="per phase (5)")
    parser.add_argument(
        "--warmup", type=int, default=3, help="before phase A, in token lifetimes (3)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only, no docs")
    parser.add_argument(
        "--render", action="store_true", help="rewrite foreign.md from foreign.json only"
    )
    args = parser.parse_args()
    if args.render:
        result = enrich(json.loads((OUT / "foreign.json").read_text()))
        (OUT / "foreign.json").write_text(json.dumps(result, indent=2) + "\n")
        (OUT / "foreign.md").write_text(render(result))
        return 0
    result = enrich(run(args))
    print(json.dumps(result, indent=2), flush=True)
    if not args.no_write:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "foreign.json").write_text(json.dumps(result, indent=2) + "\n")
        (OUT / "foreign.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
