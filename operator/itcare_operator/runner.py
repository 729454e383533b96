"""``itcare-operator run``: wire settings, clients, controller, kopf and leader election."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from typing import Any

import kopf
from kopf._core.engines.peering import Identity  # not re-exported; kopf.operator types it

from itcare_operator import handlers  # noqa: F401 - registers the kopf handlers
from itcare_operator._version import __version__
from itcare_operator.fanout import ClusterController
from itcare_operator.health import HttpServers
from itcare_operator.kube import (
    KubeClient,
    SecretWatch,
    Watch,
    cluster_credential_watch,
    credential_watch,
    load_config,
    namespace_watch,
)
from itcare_operator.leader import LeaseElector, LostLeadership
from itcare_operator.logs import configure_logging
from itcare_operator.metrics import Metrics
from itcare_operator.namespaced import Controller
from itcare_operator.settings import Settings
from itcare_operator.source_secret import SOURCE_LABEL
from itcare_operator.target_secret import CLUSTER_CREDENTIAL_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from itcare_operator.token_endpoint import TokenEndpoint, TokenEndpoints

__all__ = ["Runtime", "run_operator"]

log = logging.getLogger(__name__)


class Runtime:
    """Everything that runs beside kopf's own CRD watch: watches, scheduler, HTTP."""

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
        self._lag_task: asyncio.Task[None] | None = None
        self.watches: list[Watch] = []
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
        return bool(self.watches) and all(w.synced.is_set() for w in self.watches)

    def _source_event(self, type_: str | None, secret: dict[str, Any]) -> None:
        self.controller.source_secret_event(type_, secret)
        if self.cluster is not None:
            self.cluster.source_secret_event(type_, secret)

    def _target_event(self, type_: str | None, secret: dict[str, Any]) -> None:
        labels = (secret.get("metadata") or {}).get("labels") or {}
        if self.cluster is not None and CLUSTER_CREDENTIAL_LABEL in labels:
            self.cluster.copy_event(type_, secret)
        else:
            self.controller.target_secret_event(type_, secret)

    async def serve_http(self) -> None:
        await self.http.start(self.settings.health_port, self.settings.metrics_port)

    async def start(self) -> None:
        self.leading = True
        self.controller.scheduler.heartbeat = time.monotonic()
        source_selector = f"{SOURCE_LABEL}=true" if self.settings.require_source_label else ""
        target_selector = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
        for namespace in self.settings.namespaces or [None]:
            self.watches.append(
                SecretWatch(self.kube, source_selector, self._source_event, namespace=namespace)
            )
            self.watches.append(
                SecretWatch(self.kube, target_selector, self._target_event, namespace=namespace)
            )
            self.watches.append(
                credential_watch(
                    self.kube,
                    self.controller.credential_event,
                    functools.partial(self.controller.credentials_listed, namespace),
                    namespace=namespace,
                )
            )
        if self.cluster is not None:
            self.watches.append(namespace_watch(self.kube, self.cluster.namespace_event))
            self.watches.append(
                cluster_credential_watch(
                    self.kube,
                    self.cluster.credential_event,
                    functools.partial(self.cluster.credentials_listed, None),
                )
            )
        for watch in self.watches:
            watch.start()
        # Reconcile only once the Secrets are listed: stored tokens are then known
        # without one GET per credential (restart safety at scale).
        try:
            async with asyncio.timeout(60):
                for watch in self.watches:
                    await watch.synced.wait()
        except TimeoutError:
            log.warning("Secret watches not synced after 60 s; starting anyway")
        self.controller.scheduler.start()
        if self.cluster is not None:
            if self.ready():  # never judge copies orphaned from a partial listing
                await self.cluster.delete_orphans()
            self.cluster.scheduler.start()
        self._lag_task = asyncio.create_task(self._measure_loop_lag(), name="loop-lag")
        log.info(
            "itcare-token-operator %s started (%s%s)",
            __version__,
            ", ".join(self.settings.namespaces) or "all namespaces",
            "; ClusterITCareCredentials with sources in "
            + ", ".join(self.settings.source_namespaces)
            if self.cluster
            else "",
        )

    async def _measure_loop_lag(self, period: float = 0.1) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(period)
            self.metrics.loop_lag.observe(max(0.0, loop.time() - before - period))

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
        for watch in self.watches:
            watch.stop()
        await self.controller.scheduler.stop()
        if self.cluster is not None:
            await self.cluster.scheduler.stop()
        await self.endpoints.aclose()
        await self.http.stop()


class _Memo(kopf.Memo):
    runtime: Runtime
    stop: asyncio.Event

    async def start_background(self, controller: Controller) -> None:
        await self.runtime.start()

    async def stop_background(self) -> None:
        await self.runtime.stop()
        self.stop.set()  # else kopf waits 5 s for its stop-flag waiter on SIGTERM


async def _operate(settings: Settings) -> int:
    kube = KubeClient(load_config(settings.kubeconfig, settings.context), threads=16)
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
            kube.close()
            raise
    memo = _Memo(controller=runtime.controller)
    memo.runtime = runtime
    stop = memo.stop = asyncio.Event()
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
            memo=memo,
            stop_flag=stop,
        )
    finally:
        if holder:
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holder
        if elector is not None and code == 0:
            await elector.release()
        kube.close()
    return code


def run_operator(settings: Settings) -> int:
    configure_logging(settings.log_format, settings.log_level)
    started = time.monotonic()
    try:
        return asyncio.run(_operate(settings))
    except KeyboardInterrupt:
        return 0
    finally:
        log.info("stopped after %.0fs", time.monotonic() - started)
