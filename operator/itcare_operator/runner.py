"""``itcare-operator run``: wire settings, clients, controller, kopf and leader election."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import kopf
from kopf._core.engines.peering import Identity  # not re-exported; kopf.operator types it

from itcare_operator import handlers
from itcare_operator._version import __version__
from itcare_operator.fanout import ClusterController
from itcare_operator.health import HttpServers
from itcare_operator.isolation import guarded
from itcare_operator.kube import KubeClient, connect
from itcare_operator.kube_api import (
    KubeError,
    cluster_credentials_path,
    credentials_path,
    namespaces_path,
)
from itcare_operator.leader import LeaseElector, LostLeadership
from itcare_operator.logs import configure_logging
from itcare_operator.metrics import Metrics
from itcare_operator.namespaced import KIND, Controller
from itcare_operator.registry import CredentialRegistry
from itcare_operator.secret_watch import SecretRouter, reflectors
from itcare_operator.settings import Settings
from itcare_operator.spec import CredentialSpec
from itcare_operator.target_secret import CLUSTER_KIND
from itcare_operator.token_endpoint import TokenEndpoint, TokenEndpoints

__all__ = ["Runtime", "run_operator"]

log = logging.getLogger(__name__)

VANISHED_CHECK = 300.0  # seconds between listings for credentials deleted unseen
# Seconds the refreshes under way get to finish on shut-down (the pod's default grace
# period is 30 s): one cut after its Secret write costs a token request on restart.
DRAIN_GRACE = 10.0
EVENTS_GRACE = 2.0  # seconds the Events still being posted get on shut-down
# Python's cyclic collector makes a full pass (the event loop stops for time in
# proportion to every object held) whenever the objects promoted to its oldest
# generation grew by a quarter. At the default thresholds (700, 10) anything alive
# 7,000 allocations later is promoted, a watch event's body included: while 10,000
# credentials were created (and part of a cycle), 33 full passes of over 20 ms stopped
# the loop (0.83 s at most while creating; docs/bench/kopf.md). Here an object must
# outlive 500,000 allocations (a second or so) to be promoted, and a young pass stays
# short (at 50,000 they took 0.1-0.34 s).
GC_THRESHOLDS = (10_000, 50, 10)
# glibc gives every thread that allocates a malloc arena of its own (up to eight per
# core) and keeps their freed memory: the API client's 16 threads read and parse
# every response. Two arenas bound that (glibc only; elsewhere nothing changes).
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # mallopt's parameter number (glibc malloc.h)
# Loop lag is how late a timer fires, sampled: each sample wakes the process, and a
# wake-up of an idle process costs CPU (sampling 10 times a second was 80 % of an
# idle operator's CPU: 6.5 ms/s with no credentials, 1.2 after; docs/bench/idle.md).
# Dense while reconciles run, where lag matters; a late timer is a late timer at
# either rate (the samples are not biased by it, only fewer).
LAG_PERIOD_BUSY = 0.1
LAG_PERIOD_IDLE = 1.0


class Runtime:
    """Everything the operator runs beside kopf's watches: the core, scheduler, HTTP."""

    def __init__(self, settings: Settings, kube: KubeClient) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = Metrics()
        self.endpoints = TokenEndpoints(
            lambda url, ca: TokenEndpoint(
                url,
                ca_bundle=ca,
                max_concurrent=settings.max_concurrent_requests,
                rate=settings.requests_per_second,
                read_timeout=min(10.0, settings.token_timeout / 2),
                total_timeout=settings.token_timeout,
            )
        )
        kube.on_call = lambda verb, resource: self.metrics.kube_requests.labels(
            verb, resource
        ).inc()
        self.controller = Controller(settings, kube, self.endpoints, self.metrics)
        self.cluster: ClusterController | None = None
        if settings.cluster_credentials:
            self.cluster = ClusterController(
                settings, kube, self.endpoints, self.metrics, self.controller.sources
            )
        self._tasks: list[asyncio.Task[None]] = []
        registries: list[CredentialRegistry[Any]] = [self.controller]
        if self.cluster is not None:
            registries.append(self.cluster)
        self.route = SecretRouter(
            self.controller.sources, registries, self.controller, self.cluster
        )
        errors = self.metrics.object_errors
        self.secret_watches = reflectors(
            kube,
            settings.namespaces,
            self.route,
            lambda stage, take: guarded("Secret", stage, take, errors),
            require_source_label=settings.require_source_label,
        )
        self.synced = asyncio.Event()  # the initial listing is in memory (see _prime)
        self.stop = asyncio.Event()  # kopf's stop flag: set on shut-down or lost Lease
        self.elector: LeaseElector | None = None
        self.leading = False
        self.http = HttpServers(
            registry=self.metrics.registry,
            heartbeat=self.heartbeat,
            ready=self.ready,
        )

    # A standby must answer its probes: it is alive while its election loop polls the
    # Lease, and ready while that poll reaches the API server (it can take over). Were
    # it unready, a rolling update would wait forever for the new pod, which cannot
    # lead while the old one holds the Lease.
    def heartbeat(self) -> float:
        if self.leading or self.elector is None:
            return self.controller.scheduler.heartbeat
        return self.elector.heartbeat

    def ready(self) -> bool:
        if not self.leading:
            return self.elector is not None and self.elector.reachable
        return self.synced.is_set()

    async def serve_http(self) -> None:
        await self.http.start(self.settings.health_port, self.settings.metrics_port)

    async def start_background(self) -> None:
        """Called by kopf's start-up handler, before kopf starts watching."""
        self.leading = True
        self.controller.scheduler.heartbeat = time.monotonic()
        await self._prime()
        self.controller.scheduler.start()
        if self.cluster is not None:
            await self.cluster.delete_orphans()  # never judged from a partial listing
            self.cluster.scheduler.start()
        self.synced.set()
        self._tasks = [
            asyncio.create_task(self._measure_loop_lag(), name="loop-lag"),
            asyncio.create_task(self._forget_vanished(), name="vanished"),
            *(asyncio.create_task(w.run(), name=w.name) for w in self.secret_watches),
        ]
        log.info(
            "itcare-token-operator %s started (%s%s)",
            __version__,
            ", ".join(self.settings.namespaces) or "all namespaces",
            "; ClusterITCareCredentials with sources in "
            + ", ".join(self.settings.source_namespaces)
            if self.cluster
            else "",
        )

    async def _prime(self) -> None:
        """One listing of the credentials (and, for the cluster kind, of the Namespaces
        and its credentials), then of the Secrets the operator needs, before the first
        reconcile: every stored token, API account and copy is then known without a GET
        per credential (restart safety), every credential is reconciled without waiting
        for kopf's relisting, and orphans are judged against every cluster credential.
        Credentials first, so that an API account Secret is kept with the keys its
        credentials read. The Secret watches then resume from this listing; kopf's
        watches deliver the credentials again and what changed since; the core takes
        both alike.

        Not a kopf index: kopf holds every handler until each indexed object has been
        indexed, and that wait wakes every waiting object at each object indexed:
        30 s of start-up at 1,000 credentials, quadratic (docs/bench/kopf.md)."""
        started = time.monotonic()
        while True:
            try:
                for namespace in self.settings.namespaces or [None]:
                    # kopf relists everything after a restart, and at 10,000
                    # credentials its delivery took minutes: tokens would lapse before
                    # their credential was known again.
                    await self._list(
                        credentials_path(namespace), self.controller.credential_event, KIND
                    )
                if self.cluster is not None:
                    await self._list(namespaces_path(), self.cluster.namespace_event, "Namespace")
                    await self._list(
                        cluster_credentials_path(), self.cluster.credential_event, CLUSTER_KIND
                    )
                for watch in self.secret_watches:
                    await watch.list()
                break
            except KubeError as exc:
                log.warning("initial listing failed: %s; retrying in 5 s", exc)
                await asyncio.sleep(5)
        log.info("initial listing done in %.1f s", time.monotonic() - started)

    async def _list(self, path: str, take: Callable[[str | None, Any], None], kind: str) -> None:
        # Page by page: the bodies of one page in memory at a time (peak RSS at
        # 10,000 credentials), and the event loop free between pages. One object's
        # error skips that object (logged, counted), never the listing.
        take = guarded(kind, "listing", take, self.metrics.object_errors)
        async for items in self.kube.pages(path):
            for item in items:
                take(None, item)

    async def _forget_vanished(self) -> None:
        """kopf relists after 410 Gone or a lost connection, and a relist reports no
        deletions: a credential deleted meanwhile would stay in memory and be
        refreshed for nothing. A metadata-only listing now and then finds them."""
        kinds: list[tuple[CredentialRegistry[Any], list[str]]] = [
            (self.controller, [credentials_path(ns) for ns in self.settings.namespaces or [None]])
        ]
        if self.cluster is not None:
            kinds.append((self.cluster, [cluster_credentials_path()]))
        while True:
            await asyncio.sleep(VANISHED_CHECK)
            for registry, paths in kinds:
                known = dict(registry.credentials)
                try:
                    listed = set().union(*[await self.kube.list_keys(p) for p in paths])
                except KubeError as exc:
                    log.warning("could not list credentials: %s", exc)
                    continue
                if gone := registry.forget_vanished(known, listed):
                    log.info("%d credentials deleted while the watch was down forgotten", gone)
            await self._evict_endpoints()

    async def _evict_endpoints(self) -> None:
        """Close the token endpoints of origins no credential names any more."""
        ca = self.settings.ca_bundle
        registries: list[CredentialRegistry[Any]] = [self.controller]
        if self.cluster is not None:
            registries.append(self.cluster)
        used = [
            (state.spec.token_url, ca)
            for registry in registries
            for state in registry.credentials.values()
            if isinstance(state.spec, CredentialSpec)
        ]
        if closed := await self.endpoints.retain(used):
            log.info("%d token endpoints no credential uses closed", closed)

    async def _measure_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            busy = self.controller.scheduler.busy or bool(
                self.cluster and self.cluster.scheduler.busy
            )
            period = LAG_PERIOD_BUSY if busy else LAG_PERIOD_IDLE
            before = loop.time()
            await asyncio.sleep(period)
            self.metrics.loop_lag.observe(max(0.0, loop.time() - before - period))

    async def stop_background(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        schedulers = [self.controller.scheduler]
        if self.cluster is not None:
            schedulers.append(self.cluster.scheduler)
        await asyncio.gather(*(s.stop(grace=DRAIN_GRACE) for s in schedulers))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EVENTS_GRACE):  # best effort, as Events are
                await self.controller.drain_events()
                if self.cluster is not None:
                    await self.cluster.drain_events()
        await self.endpoints.aclose()
        await self.http.stop()
        self.stop.set()  # else kopf waits 5 s for its stop-flag waiter on SIGTERM


async def _operate(settings: Settings) -> int:
    kube = await connect(settings.kubeconfig, settings.context)
    runtime = Runtime(settings, kube)
    elector: LeaseElector | None = None
    identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    if not settings.standalone:
        namespace = (
            os.environ.get("POD_NAMESPACE")
            or (settings.namespaces or (settings.operator_namespace,))[0]
        )
        elector = runtime.elector = LeaseElector(kube, namespace, settings.peering_name, identity)
    # Probes are served from the start: a standby waiting for the Lease is live.
    await runtime.serve_http()
    if elector is not None:
        try:
            await elector.acquire()
        except BaseException:
            await runtime.http.stop()
            await kube.aclose()
            raise
    registry = kopf.OperatorRegistry()
    handlers.register(registry, runtime)
    stop = runtime.stop
    code = 0

    async def keep_leadership() -> None:
        nonlocal code
        assert elector is not None
        try:
            await elector.hold()
        except LostLeadership as exc:
            log.error("lost leadership: %s; stopping", exc)
            code = 1
            stop.set()

    holder = asyncio.create_task(keep_leadership()) if elector else None
    try:
        await kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            standalone=True,
            # Given, not detected: kopf would ask getpass.getuser(), which raises for a
            # uid without a passwd entry (the image runs as 65532, listed nowhere).
            identity=Identity(identity),
            registry=registry,
            stop_flag=stop,
        )
    finally:
        if holder:
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holder
        if elector is not None and code == 0:
            await elector.release()
        await kube.aclose()
    return code


def _fewer_malloc_arenas() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def run_operator(settings: Settings) -> int:
    configure_logging(settings.log_format, settings.log_level)
    gc.set_threshold(*GC_THRESHOLDS)
    _fewer_malloc_arenas()  # before any thread starts
    started = time.monotonic()
    try:
        return asyncio.run(_operate(settings))
    except KeyboardInterrupt:
        return 0
    finally:
        log.info("stopped after %.0fs", time.monotonic() - started)
