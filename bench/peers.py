"""Side by side: our operator and External Secrets Operator's Webhook generator.

    make bench-peers                          # N = 100, 1,000 and 5,000: about an hour
    make bench-peers PEERS_ARGS="--n 100"     # one N
    scripts/build-eso && .venv/bin/python -m bench.peers --n 100 --only ours

Both operators run as local processes, one after the other, against the same test
control plane and the same Keycloak-compatible token server (``bench.token_server``,
tokens of 120 s). ESO v0.16.2 gets, per credential, a labelled Secret with the API
account, a ``Webhook`` generator (POST ``grant_type=client_credentials``, Basic auth
templated from the Secret, ``result.jsonPath: "$"``) and an ``ExternalSecret`` whose
``dataFrom.sourceRef.generatorRef`` names it, with ``refreshInterval`` 60 s (half the
token's life; see docs/bench/peers.md for the choice). Ours gets the same Secret and
an ITCareCredential. Per operator and N, in this order:

1. creation: time until all N target Secrets hold a token, p50/p99 per object;
2. steady state (a): token requests per object per token lifetime, expired-token
   seconds, CPU and API requests per refresh;
3. restart with valid tokens stored: token requests it caused (a request is caused
   by the restart when it comes sooner after that object's previous request than
   80 % of the operator's median steady refresh interval);
4. (c) a 90 s token-server outage (503) starting 30 s before the median next
   refresh point: expired-token seconds until every object holds a valid token;
5. (b) the token server shortens the lifetime to 60 s: expired-token seconds over
   the following 150 s.

Expiry is read from the token itself (the JWT ``exp`` claim of ``access_token``),
the same way for both. The floor and the semantic floor (bench/run.py) run on the
same rig in the same run. Results: docs/bench/peers.json and docs/bench/peers.md.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime as dt
import functools
import importlib.metadata
import itertools
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import kubernetes
from prometheus_client.parser import text_string_to_metric_families
from tests import environment
from tests.environment import Environment, free_port

from bench.run import (
    GROUP,
    PLURAL,
    ROOT,
    THREADS,
    VERSION,
    Operator,
    TargetWatch,
    cpu_seconds,
    floor,
    kube_requests,
    machine,
    released,
    save_rows,
    semantic_floor,
    wait_out_create_delay,
)

__all__ = ["main"]

OUT = ROOT / "docs" / "bench"
ESO_VERSION = "v0.16.2"
ESO_DIR = Path(os.environ.get("ITCARE_CACHE", Path.home() / ".cache" / "itcare-operator")) / (
    f"eso-{ESO_VERSION}"
)
LIFETIME = 120
SHORT_LIFETIME = 60
ESO_REFRESH = 60
OUTAGE_S = 90
OUTAGE_LEAD_S = 30
RECOVERY_LIMIT_S = 300  # after the outage, how long to wait for every object's new token


class JwtWatch(TargetWatch):
    """Target Secrets' versions, the expiry read from the token's own ``exp`` claim."""

    def expires_at(self, data: dict[str, str]) -> float:
        token = base64.b64decode(data["access_token"]).decode()
        claims = token.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["exp"])


class TokenServer:
    """bench.token_server as a child process, steered through its stdin."""

    def __init__(self, n: int, lifetime: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.token_server",
                f"--port={self.port}",
                f"--generated-clients={n}",
                f"--access-lifespan={lifetime}",
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.token_url = self.proc.stdout.readline().strip()

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"token server: {line!r} answered {answer!r}")

    def requests(self, since: float, until: float) -> list[tuple[float, str, int]]:
        """(arrival, client id, status) of every token request in [since, until)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stats", timeout=30) as r:
            rows = json.loads(r.read())["requests"]
        return [(at, cid, status) for at, cid, status in rows if since <= at < until]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Peer(Protocol):
    """What the measurement needs from an operator process."""

    name: str
    selector: str
    peak_rss_kib: int

    @property
    def pid(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def sample(self) -> None: ...

    def api_requests(self) -> float: ...

    def source(self, core: kubernetes.client.CoreV1Api, namespace: str, i: int) -> None: ...

    def submit(
        self, custom: kubernetes.client.CustomObjectsApi, namespace: str, i: int
    ) -> None: ...


class Ours(Operator):
    name = "ours"
    selector = "app.kubernetes.io/managed-by=itcare-token-operator"

    def api_requests(self) -> float:
        return kube_requests(self.metrics())

    def source(self, core: kubernetes.client.CoreV1Api, namespace: str, i: int) -> None:
        released(
            core.create_namespaced_secret(
                namespace,
                {
                    "metadata": {
                        "name": f"acct-{i}",
                        "labels": {"itcare.cegedim.cloud/api-account": "true"},
                    },
                    "stringData": {"client-id": f"bench-{i}", "client-secret": f"bench-secret-{i}"},
                },
                _preload_content=False,
            )
        )

    def submit(self, custom: kubernetes.client.CustomObjectsApi, namespace: str, i: int) -> None:
        released(
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "ITCareCredential",
                    "metadata": {"name": f"cred-{i}"},
                    "spec": {
                        "clientSecretRef": {"name": f"acct-{i}"},
                        "tokenURL": self.token_url,
                        "targetSecret": {"name": f"tok-{i}"},
                    },
                },
                _preload_content=False,
            )
        )


class Eso:
    """ESO's controller as a local process: namespaced, no leader election, metrics on
    a free port, the reconcilers that play no part here (cluster-scoped and push) off."""

    name = "eso"
    selector = "reconcile.external-secrets.io/managed=true"

    def __init__(
        self,
        env: Environment,
        namespace: str,
        token_url: str,
        log: Path,
        concurrent: int,
        refresh: int = ESO_REFRESH,
    ) -> None:
        self.env, self.namespace, self.token_url, self.log = env, namespace, token_url, log
        self.concurrent, self.refresh = concurrent, refresh
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_rss_kib = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                str(ESO_DIR / "external-secrets"),
                f"--namespace={self.namespace}",
                "--enable-leader-election=false",
                f"--metrics-addr=127.0.0.1:{self.metrics_port}",
                f"--concurrent={self.concurrent}",
                # The same API budget as ours (--requests-per-second=1000).
                "--client-qps=1000",
                "--client-burst=2000",
                "--enable-cluster-store-reconciler=false",
                "--enable-cluster-external-secret-reconciler=false",
                "--enable-cluster-push-secret-reconciler=false",
                "--enable-push-secret-reconciler=false",
                "--loglevel=error",
            ],
            env={**os.environ, "KUBECONFIG": str(self.env.kubeconfig)},
            stdout=open(self.log, "ab"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.metrics()
                return
            except OSError:
                if self.proc.poll() is not None:
                    code = self.proc.returncode
                    raise RuntimeError(f"ESO exited {code}; see {self.log}") from None
                time.sleep(0.1)
        raise RuntimeError("ESO metrics never answered")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def sample(self) -> None:
        Operator.sample(self)  # type: ignore[arg-type]

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10
        ) as r:
            text = r.read().decode()
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, []).append((s.labels, s.value))
        return out

    def api_requests(self) -> float:
        """client-go's own count of the requests it sent to the API server."""
        return sum(v for _, v in self.metrics().get("rest_client_requests_total", []))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def source(self, core: kubernetes.client.CoreV1Api, namespace: str, i: int) -> None:
        released(
            core.create_namespaced_secret(
                namespace,
                {
                    "metadata": {
                        "name": f"acct-{i}",
                        # ESO's Webhook generator reads only Secrets labelled so.
                        "labels": {"external-secrets.io/type": "webhook"},
                    },
                    "stringData": {"id": f"bench-{i}", "secret": f"bench-secret-{i}"},
                },
                _preload_content=False,
            )
        )

    def submit(self, custom: kubernetes.client.CustomObjectsApi, namespace: str, i: int) -> None:
        generator = {
            "apiVersion": "generators.external-secrets.io/v1alpha1",
            "kind": "Webhook",
            "metadata": {"name": f"tok-{i}"},
            "spec": {
                "url": self.token_url,
                "method": "POST",
                "headers": {
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Authorization": 'Basic {{ print .auth.id ":" .auth.secret | b64enc }}',
                },
                "body": "grant_type=client_credentials",
                "result": {"jsonPath": "$"},
                "secrets": [{"name": "auth", "secretRef": {"name": f"acct-{i}", "key": "id"}}],
            },
        }
        released(
            custom.create_namespaced_custom_object(
                "generators.external-secrets.io",
                "v1alpha1",
                namespace,
                "webhooks",
                generator,
                _preload_content=False,
            )
        )
        external = {
            "apiVersion": "external-secrets.io/v1",
            "kind": "ExternalSecret",
            "metadata": {"name": f"tok-{i}"},
            "spec": {
                "refreshInterval": f"{self.refresh}s",
                "target": {"name": f"tok-{i}"},
                "dataFrom": [
                    {
                        "sourceRef": {
                            "generatorRef": {
                                "apiVersion": "generators.external-secrets.io/v1alpha1",
                                "kind": "Webhook",
                                "name": f"tok-{i}",
                            }
                        }
                    }
                ],
            },
        }
        released(
            custom.create_namespaced_custom_object(
                "external-secrets.io",
                "v1",
                namespace,
                "externalsecrets",
                external,
                _preload_content=False,
            )
        )


def expired_seconds(
    versions: dict[str, list[tuple[float, float]]], since: float, until: float
) -> tuple[float, int]:
    """Seconds in [since, until) during which a target Secret held an expired token,
    summed over objects, and how many objects it happened to."""
    total, objects = 0.0, 0
    for seen in versions.values():
        gap = 0.0
        for i, (at, expires) in enumerate(seen):
            replaced = seen[i + 1][0] if i + 1 < len(seen) else until
            gap += max(0.0, min(replaced, until) - max(at, expires, since))
        total += gap
        objects += gap > 0
    return total, objects


def quantiles(values: list[float]) -> list[float]:
    """The 0th, 5th, ..., 100th percentile of sorted ``values`` (21 numbers: the plots'
    CDFs without keeping every sample in peers.json)."""
    if not values:
        return []
    return [round(values[round(q / 20 * (len(values) - 1))], 3) for q in range(21)]


def gaps(versions: dict[str, list[tuple[float, float]]], since: float, until: float) -> list[float]:
    """Seconds between consecutive versions of each target Secret, both in the window."""
    return [
        b[0] - a[0]
        for seen in versions.values()
        for a, b in itertools.pairwise(seen)
        if since <= a[0] and b[0] < until
    ]


@dataclass
class Run:
    """One operator's measurements at one N."""

    peer: Peer
    n: int
    tokens: TokenServer
    watch: JwtWatch
    result: dict[str, Any] = field(default_factory=dict)

    def snapshot(self) -> dict[str, list[tuple[float, float]]]:
        with self.watch.lock:
            return {k: list(v) for k, v in self.watch.versions.items()}

    def wait(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            self.peer.sample()
            time.sleep(min(0.5, max(0.0, end - time.time())))

    def wait_until(self, done: Callable[[], bool], limit: float) -> bool:
        end = time.time() + limit
        while time.time() < end:
            self.peer.sample()
            if done():
                return True
            time.sleep(0.2)
        return False

    def renewed_since(self, since: float) -> bool:
        """Every object holds a valid token first seen after ``since``."""
        now = time.time()
        with self.watch.lock:
            return len(self.watch.versions) >= self.n and all(
                v[-1][0] > since and v[-1][1] > now for v in self.watch.versions.values()
            )


def measure(
    peer: Peer,
    run: Run,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    namespace: str,
    steady_s: float,
    full: bool,
) -> dict[str, Any]:
    n, r = run.n, run.result
    tag = f"[{peer.name} N={n}]"
    created: dict[str, float] = {}

    def submit(i: int) -> None:
        created[f"tok-{i}"] = time.time()
        peer.submit(custom, namespace, i)

    print(f"{tag} creating...", flush=True)
    began = time.time()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(submit, range(n)))
    r["submitted_s"] = round(time.time() - began, 2)
    if not run.wait_until(lambda: len(run.watch.versions) >= n, 1800):
        raise RuntimeError(f"{tag} not all target Secrets appeared within 30 min")
    firsts = {k: v[0][0] for k, v in run.snapshot().items()}
    latencies = sorted(firsts[k] - created[k] for k in firsts)
    r["all_ready_s"] = round(max(firsts.values()) - began, 2)
    r["latency_p50_s"] = round(statistics.median(latencies), 3)
    r["latency_p99_s"] = round(latencies[int(0.99 * (len(latencies) - 1))], 3)
    r["latency_quantiles_s"] = quantiles(latencies)  # for the plot
    r["create_token_requests_per_object"] = round(
        len(run.tokens.requests(began, time.time())) / n, 2
    )
    print(f"{tag} all ready in {r['all_ready_s']} s; steady {steady_s:.0f} s...", flush=True)

    # (a) steady state
    t0, cpu0, api0 = time.time(), cpu_seconds(peer.pid), peer.api_requests()
    run.wait(steady_s)
    t1, cpu1, api1 = time.time(), cpu_seconds(peer.pid), peer.api_requests()
    versions = run.snapshot()
    refreshes = sum(1 for seen in versions.values() for at, _ in seen[1:] if t0 <= at < t1)
    requests = [q for q in run.tokens.requests(t0, t1) if q[2] == 200]
    steady_gaps = gaps(versions, t0, t1)
    expired, objects = expired_seconds(versions, t0, t1)
    r["refreshes_observed"] = refreshes
    r["token_requests_per_object_per_lifetime"] = round(
        len(requests) / n / ((t1 - t0) / LIFETIME), 2
    )
    r["token_requests_per_refresh"] = round(len(requests) / max(refreshes, 1), 3)
    last: dict[str, float] = {}
    doubles = 0  # a second token request for the same object within 5 s
    for at, cid, _ in sorted(requests):
        doubles += at - last.get(cid, -1e9) < 5
        last[cid] = at
    r["token_requests_within_5s_of_previous"] = doubles
    r["refresh_interval_median_s"] = (
        round(statistics.median(steady_gaps), 1) if steady_gaps else None
    )
    before_expiry = sorted(
        a[1] - b[0]
        for seen in versions.values()
        for a, b in itertools.pairwise(seen)
        if t0 <= b[0] < t1
    )
    r["refresh_before_expiry_median_s"] = (
        round(statistics.median(before_expiry), 1) if before_expiry else None
    )
    r["refresh_before_expiry_quantiles_s"] = quantiles(before_expiry)
    r["expired_token_s_steady"] = round(expired, 1)
    r["objects_expired_steady"] = objects
    r["cpu_ms_per_refresh"] = round((cpu1 - cpu0) * 1000 / max(refreshes, 1), 2)
    r["api_requests_per_refresh"] = round((api1 - api0) / max(refreshes, 1), 2)

    # Restart with valid tokens stored
    print(f"{tag} restart...", flush=True)
    stopped = time.time()
    peer.stop()
    peer.start()
    run.wait(20)
    # Sooner than this after the object's previous request is not the steady cadence.
    cadence = 0.8 * (statistics.median(steady_gaps) if steady_gaps else ESO_REFRESH)
    after = time.time()
    previous: dict[str, float] = {}
    for at, cid, status in run.tokens.requests(0, stopped):
        if status == 200:
            previous[cid] = at
    premature = 0
    for at, cid, status in run.tokens.requests(stopped, after):
        if status == 200:
            if cid in previous and at - previous[cid] < cadence:
                premature += 1
            previous[cid] = at
    r["restart_token_requests"] = premature
    r["restart_all_requests_in_20s"] = len(run.tokens.requests(stopped, after))
    if not full:
        return r

    # (c) outage of 90 s starting 30 s before the median next refresh point
    versions = run.snapshot()
    interval = statistics.median(steady_gaps) if steady_gaps else ESO_REFRESH
    upcoming = sorted(seen[-1][0] + interval for seen in versions.values())
    point = (
        statistics.median(t for t in upcoming if t > time.time() + OUTAGE_LEAD_S)
        if any(t > time.time() + OUTAGE_LEAD_S for t in upcoming)
        else time.time() + interval
    )
    run.wait(max(0.0, point - OUTAGE_LEAD_S - time.time()))
    print(f"{tag} outage {OUTAGE_S} s...", flush=True)
    outage_at = time.time()
    run.tokens.command("outage on")
    run.wait(OUTAGE_S)
    run.tokens.command("outage off")
    outage_end = time.time()
    # Over when every object holds a token issued after the outage (the ones held
    # through it expire about when it ends).
    recovered = run.wait_until(lambda: run.renewed_since(outage_end), RECOVERY_LIMIT_S)
    run.wait(2)
    versions = run.snapshot()
    renewed = [
        min((at for at, _ in seen if at > outage_end), default=time.time())
        for seen in versions.values()
    ]
    expired, objects = expired_seconds(versions, outage_at, max(renewed))
    r["expired_token_s_outage"] = round(expired, 1)
    r["objects_expired_outage"] = objects
    # Not recovered within the limit: the expired seconds above are a lower bound.
    r["outage_recovery_s"] = round(max(renewed) - outage_end, 1) if recovered else None
    r["outage_recovered"] = recovered
    r["outage_failed_requests"] = sum(
        1 for q in run.tokens.requests(outage_at, outage_end) if q[2] != 200
    )

    # (b) the lifetime shrinks to 60 s
    print(f"{tag} lifetime {SHORT_LIFETIME} s...", flush=True)
    run.tokens.command(f"lifespan {SHORT_LIFETIME}")
    changed = time.time()
    run.wait(150)
    expired, objects = expired_seconds(run.snapshot(), changed, time.time())
    run.tokens.command(f"lifespan {LIFETIME}")
    r["expired_token_s_short_lifetime"] = round(expired, 1)
    r["objects_expired_short_lifetime"] = objects
    return r


def run_peer(
    make: Callable[[str], Peer],
    n: int,
    api: kubernetes.client.ApiClient,
    tokens: TokenServer,
    steady_s: float,
    full: bool,
) -> dict[str, Any]:
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    namespace = f"peers-{n}-{secrets.token_hex(2)}"
    core.create_namespace({"metadata": {"name": namespace}})
    peer = make(namespace)
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda i: peer.source(core, namespace, i), range(n)))
    peer.start()
    watch = JwtWatch(core, namespace, peer.selector)
    watch.start()
    time.sleep(1)
    run = Run(peer, n, tokens, watch)
    try:
        result = measure(peer, run, core, custom, namespace, steady_s, full)
    finally:
        peer.sample()
        watch.stop()
        peer.stop()
    result["peak_rss_mib"] = round(peer.peak_rss_kib / 1024, 1)
    # The stopped operator's finalizers (ours) would hold the namespace: leave it.
    with_finalizers = peer.name == "ours"
    if not with_finalizers:
        core.delete_namespace(namespace)
    print(f"[{peer.name} N={n}] {json.dumps(result)}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append")
    parser.add_argument("--steady", type=float, default=3 * ESO_REFRESH + 10, metavar="SECONDS")
    parser.add_argument(
        "--full-max-n",
        type=int,
        default=5000,
        help="run the outage and short-lifetime phases only for N up to this",
    )
    parser.add_argument("--eso-concurrent", type=int, default=32)
    parser.add_argument("--only", choices=["ours", "eso"], help="one operator only")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite peers.md from peers.json"
    )
    args = parser.parse_args()
    if args.render:
        render()
        return 0
    if args.only != "ours" and not (ESO_DIR / "external-secrets").exists():
        print(f"{ESO_DIR}/external-secrets missing: run scripts/build-eso", file=sys.stderr)
        return 1
    ns = args.n or [100, 1000, 5000]
    state = os.environ.get("ITCARE_TESTENV_STATE")
    if state and (Path(state) / "state.json").exists() and Environment.load(Path(state)).alive():
        env, own = Environment.load(Path(state)), False
    else:
        env, own = environment.start(keycloak=False), True
    work = env.directory
    rows: list[dict[str, Any]] = []
    try:
        apply_crds(env, eso=args.only != "ours")
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(env.kubeconfig), client_configuration=config)
        config.connection_pool_maxsize = THREADS * 2
        api = kubernetes.client.ApiClient(config)
        core = kubernetes.client.CoreV1Api(api)
        wait_out_create_delay(api)
        for n in ns:
            tokens = TokenServer(n, LIFETIME)
            try:
                floor_s = floor(core, n)
                semantic_s = semantic_floor(api, n, tokens.token_url)
                print(f"[N={n}] floor {floor_s:.2f} s, semantic floor {semantic_s:.2f} s")
                row: dict[str, Any] = {
                    "n": n,
                    "floor_s": round(floor_s, 2),
                    "semantic_floor_s": round(semantic_s, 2),
                }
                url, logs = tokens.token_url, work / f"peers-{n}"
                makers: dict[str, Callable[[str], Peer]] = {
                    "ours": functools.partial(
                        lambda ns, u, log: Ours(env, ns, u, log),
                        u=url,
                        log=Path(f"{logs}-ours.log"),
                    ),
                    "eso": functools.partial(
                        lambda ns, u, log: Eso(env, ns, u, log, args.eso_concurrent),
                        u=url,
                        log=Path(f"{logs}-eso.log"),
                    ),
                }
                for name, make in makers.items():
                    if args.only and name != args.only:
                        continue
                    result = run_peer(make, n, api, tokens, args.steady, n <= args.full_max_n)
                    result["ratio_to_floor"] = round(result["all_ready_s"] / floor_s, 2)
                    result["ratio_to_semantic_floor"] = round(result["all_ready_s"] / semantic_s, 2)
                    row[name] = result
                rows.append(row)
            finally:
                tokens.stop()
        write(rows, args)
    finally:
        if own:
            env.stop()
    return 0


def apply_crds(env: Environment, *, eso: bool) -> None:
    """Our CRDs and (``eso``) ESO's, applied and served."""
    kubectl = [str(env.bin_dir / "kubectl"), f"--kubeconfig={env.kubeconfig}"]
    for crds in (ROOT / "crds", *([ESO_DIR / "crds"] if eso else [])):
        applied = subprocess.run(
            [*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(crds)],
            capture_output=True,
            text=True,
        )
        if applied.returncode:
            raise RuntimeError(f"kubectl apply {crds}: {applied.stderr}")
        # ESO's controller exits when a kind is not served yet.
        subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds)],
            check=True,
            capture_output=True,
        )


def write(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """docs/bench/peers.json (rows replaced per N) and the table in peers.md."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "peers.json"
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "eso_version": ESO_VERSION,
        "eso_refresh_interval_s": ESO_REFRESH,
        "eso_concurrent": args.eso_concurrent,
        "token_lifetime_s": LIFETIME,
        "steady_s": args.steady,
        "command": "python -m bench.peers " + " ".join(sys.argv[1:]),
        "cpu": cpu_model(),
        "ours_version": importlib.metadata.version("itcare-token-operator"),
        "eso_go": eso_go_version(),
    }
    save_rows(path, [{**row, **meta} for row in rows])
    render()


def render() -> None:
    """docs/bench/peers.md from docs/bench/peers.json (the latest row's versions)."""
    rows = json.loads((OUT / "peers.json").read_text())
    latest = max(rows, key=lambda r: r["date"])
    (OUT / "peers.md").write_text(HEADER.format(**latest) + table(rows) + PLOTS + FOOTER)
    plot(rows)


def plot(rows: list[dict[str, Any]]) -> None:
    """peers_latency.png (CDFs per N, ours and ESO) and peers_scaling.png (measures
    against N); skipped without matplotlib (``.[bench]``)."""
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = [q / 20 for q in range(21)]
    styles = {"ours": "-", "eso": "--"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for row in rows:
        for name, style in styles.items():
            result = row.get(name, {})
            label = f"{NAMES[name]} N={row['n']}"
            if result.get("latency_quantiles_s"):
                axes[0].plot(result["latency_quantiles_s"], fractions, style, label=label)
            if result.get("refresh_before_expiry_quantiles_s"):
                axes[1].plot(
                    result["refresh_before_expiry_quantiles_s"], fractions, style, label=label
                )
    axes[0].set_xlabel("create-to-Secret latency (s)")
    axes[1].set_xlabel("new token seen this long before the old one expired (s)")
    for ax in axes:
        ax.set_ylabel("fraction")
        ax.grid(alpha=0.3)
        if ax.lines:  # rows measured before the quantiles were kept have none
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "peers_latency.png", dpi=100)
    plt.close(fig)

    measures = [
        ("all_ready_s", "all N Secrets hold a token (s)"),
        ("cpu_ms_per_refresh", "CPU per refresh (ms)"),
        ("peak_rss_mib", "peak RSS (MiB)"),
        ("api_requests_per_refresh", "API requests per refresh"),
    ]
    fig, axes = plt.subplots(1, len(measures), figsize=(14, 3.5))
    for ax, (key, title) in zip(axes, measures, strict=True):
        for name, style in styles.items():
            points = [(r["n"], r[name][key]) for r in rows if r.get(name, {}).get(key)]
            if points:
                ax.plot(*zip(*points, strict=True), style, marker="o", label=NAMES[name])
        if key == "all_ready_s":
            points = [(r["n"], r["semantic_floor_s"]) for r in rows]
            ax.plot(*zip(*points, strict=True), ":", marker=".", label="semantic floor")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("N")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "peers_scaling.png", dpi=100)
    plt.close(fig)


NAMES = {"ours": "ours", "eso": "ESO"}


def eso_go_version() -> str:
    """The Go toolchain the ESO binary was built with (``go version FILE``)."""
    try:
        done = subprocess.run(
            ["go", "version", str(ESO_DIR / "external-secrets")], capture_output=True, text=True
        )
    except OSError:
        return "Go (version unknown)"
    return done.stdout.rsplit(":", 1)[-1].strip() or "Go (version unknown)"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


HEADER = """# Side by side: ours and External Secrets Operator's Webhook generator

Generated by `make bench-peers` (`bench/peers.py`; ESO built by `scripts/build-eso`).
Do not edit: rerun. What the numbers mean: [peers-findings.md](peers-findings.md).

Machine: {machine} ({cpu}), shared with other work during the run (absolute
times are noisy; CPU seconds, RSS and request counts much less). Versions:
itcare-token-operator {ours_version}, External Secrets Operator {eso_version}
(built with {eso_go}), kube-apiserver and etcd of the test environment
(`scripts/versions.env`). Each N's date and command are in its heading.

Both operators run as local processes, one after the other, on the same control plane
and the same Keycloak-compatible token server (`bench/token_server.py`), tokens of
{token_lifetime_s} s; namespaced, no leader election. ESO: a labelled Secret, a `Webhook`
generator (`POST`, body `grant_type=client_credentials`, `Authorization: Basic` templated
from the Secret, `result.jsonPath: "$"`) and an `ExternalSecret` with
`dataFrom[].sourceRef.generatorRef` and `refreshInterval: {eso_refresh_interval_s}s`, per
credential; `--concurrent={eso_concurrent} --client-qps=1000 --client-burst=2000` (ours:
`--max-concurrent-requests=32 --requests-per-second=1000`). Ours: the same Secret and an
ITCareCredential. Expiry is read from the token's own `exp` claim for both.

- floor: N Secrets written by a bare client (16 threads); semantic floor: per
  credential create the CR, one token request, write the Secret, patch the status
  (16 threads) — the least work for the operator's outcome.
- steady (a): {steady_s:.0f} s after all are ready; token requests per object per
  token lifetime, CPU and API requests per observed refresh (a new token in the Secret).
- restart: stop and start with valid tokens stored; a token request within 20 s of the
  restart counts when it came sooner after that object's previous one than 80 % of the
  operator's own median steady refresh interval.
- (c) outage: the token server answers 503 for 90 s from 30 s before the median next
  refresh point; expired-token seconds until every object holds a token issued after it.
- (b) the token server cuts the lifetime to 60 s; expired-token seconds over 150 s.
  (b) and (c) run for N up to `--full-max-n` only (time).

"""

PLOTS = """
![create-to-Secret latency and refresh-before-expiry, CDFs](peers_latency.png)

![measures against N](peers_scaling.png)
"""

FOOTER = """
Rerun: `make bench-peers` (N = 100, 1,000 and 5,000, about an hour), or one N:
`make bench-peers PEERS_ARGS="--n 100"`.
Raw numbers: `peers.json`.
"""


ROWS: list[tuple[str, str]] = [
    ("submitted_s", "the benchmark's N (ESO: 2N) creates, done at (s)"),
    ("all_ready_s", "all N target Secrets hold a token (s)"),
    ("ratio_to_floor", "ratio to the floor (bare Secret writes)"),
    ("ratio_to_semantic_floor", "ratio to the semantic floor"),
    ("latency_p50_s", "p50 create-to-Secret latency (s)"),
    ("latency_p99_s", "p99 create-to-Secret latency (s)"),
    ("token_requests_per_object_per_lifetime", "token requests per object per 120 s token"),
    ("token_requests_per_refresh", "token requests per refresh"),
    ("token_requests_within_5s_of_previous", "steady: token requests within 5 s of the previous"),
    ("create_token_requests_per_object", "token requests per object until all ready"),
    ("refresh_interval_median_s", "median refresh interval (s)"),
    ("refresh_before_expiry_median_s", "median refresh before expiry (s)"),
    ("restart_token_requests", "token requests caused by a restart"),
    ("expired_token_s_steady", "(a) expired-token seconds, steady"),
    ("expired_token_s_short_lifetime", "(b) expired-token seconds, lifetime cut to 60 s (150 s)"),
    ("objects_expired_short_lifetime", "(b) objects that held an expired token"),
    ("expired_token_s_outage", "(c) expired-token seconds, 90 s outage"),
    ("objects_expired_outage", "(c) objects that held an expired token"),
    ("outage_recovery_s", "(c) outage end until all hold a new token (s)"),
    ("cpu_ms_per_refresh", "CPU per refresh (ms)"),
    ("peak_rss_mib", "peak RSS (MiB)"),
    ("api_requests_per_refresh", "API requests per refresh"),
]


def cell(result: dict[str, Any], key: str) -> str:
    value = result.get(key)
    if key == "outage_recovery_s" and value is None and "expired_token_s_outage" in result:
        # The outage phase ran but not every object held a new token when it gave up.
        return f"not all within {RECOVERY_LIMIT_S} s"
    gave_up = result.get("outage_recovered") is False or result.get("outage_recovery_s") is None
    if key == "expired_token_s_outage" and value is not None and gave_up:
        return f">= {value}"  # counted until the wait gave up
    return "-" if value is None else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for row in rows:
        lines += [
            f"### N = {row['n']}",
            "",
            f"{row['date']}: `{row['command']}`",
            "",
            f"Floor {row['floor_s']} s, semantic floor {row['semantic_floor_s']} s.",
            "",
            "| measure | ours | ESO | ours / ESO |",
            "| --- | --- | --- | --- |",
        ]
        ours, eso = row.get("ours", {}), row.get("eso", {})
        for key, label in ROWS:
            a, b = ours.get(key), eso.get(key)
            ratio = (
                f"{a / b:.2f}"
                if isinstance(a, int | float) and isinstance(b, int | float) and b
                else "-"
            )
            lines.append(f"| {label} | {cell(ours, key)} | {cell(eso, key)} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
