"""kopf at the edge: the custom resources and Namespaces, and where each event goes.

kopf lists and watches our custom resources (and, for the cluster kind, Namespaces), in
chunks, resuming, relisting after 410 Gone, and calls the handlers registered here; they
only hand events to the core (:mod:`registry` and the delivery adapters), which never
calls kopf. They are coroutines: kopf runs plain functions in worker threads, and the
core lives on the event loop alone. Registered at run time on the operator's own
registry, so an operator without ``--cluster-credentials`` does not watch Namespaces or
the cluster kind it has no RBAC for. Secrets are not watched through kopf: it cannot
select server-side, and most Secrets of a cluster are not ours (:mod:`secret_watch`
selects them by label).

Restart safety needs every stored token and API account in memory before the first
reconcile: the runner lists them once before kopf starts (``Runtime._prime``), not
through kopf indexes, whose start-up wait grows with the square of the objects
(docs/bench/kopf.md). kopf keeps no per-object state of ours (no finalizers,
annotations or diff bases: there are no change handlers) and posts no Events (the
core's are aggregated).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import kopf

from itcare_operator.fanout import ClusterController
from itcare_operator.isolation import guarded
from itcare_operator.kube_api import CLUSTER_PLURAL, GROUP, PLURAL, VERSION, load_config
from itcare_operator.metrics import Metrics
from itcare_operator.namespaced import KIND, Controller
from itcare_operator.settings import Settings
from itcare_operator.target_secret import CLUSTER_KIND

__all__ = ["NoDiffBase", "Operator", "connection_info", "register"]

log = logging.getLogger(__name__)

IDLE_WORKER = 0.5  # seconds a per-object kopf worker outlives its last event


class Operator(Protocol):
    """What the handlers need of the running operator (``runner.Runtime``)."""

    settings: Settings
    metrics: Metrics
    controller: Controller
    cluster: ClusterController | None

    async def start_background(self) -> None: ...

    async def stop_background(self) -> None: ...


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf compares every body with a stored essence to detect field changes for
    change handlers; we have none (our handlers take raw events), so nothing is built,
    copied or stored."""

    def build(self, *, body: Any, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()  # empty: no copy of the body

    def fetch(self, *, body: Any) -> None:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def register(registry: kopf.OperatorRegistry, operator: Operator) -> None:
    """Register the handlers this operator's settings call for."""
    settings = operator.settings

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # the core posts aggregated Events itself
        settings.scanning.disabled = True  # no CRD watching: needs no cluster-wide CRD access
        settings.watching.chunk_size = 500  # list 10,000 Secrets in pieces, not one body
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60
        settings.peering.standalone = True  # leader election is ours (leader.py)
        settings.persistence.diffbase_storage = NoDiffBase()
        # kopf keeps a worker task per object until it has been idle this long, holding
        # the object's last body: at its default (5 s) thousands of bodies stay alive
        # while 10,000 credentials are created, and the garbage collector promotes them
        # all. Our handlers return at once, so a worker has nothing to wait for.
        settings.queueing.idle_timeout = IDLE_WORKER
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        await operator.start_background()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await operator.stop_background()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(settings)

    errors = operator.metrics.object_errors
    take_credential = guarded(KIND, "event", operator.controller.credential_event, errors)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def credential(type: str | None, body: kopf.Body, **_: Any) -> None:
        take_credential(type, body)

    cluster = operator.cluster
    if cluster is None:
        return

    take_cluster = guarded(CLUSTER_KIND, "event", cluster.credential_event, errors)
    take_namespace = guarded("Namespace", "event", cluster.namespace_event, errors)

    @kopf.on.event(GROUP, VERSION, CLUSTER_PLURAL, registry=registry)
    async def cluster_credential(type: str | None, body: kopf.Body, **_: Any) -> None:
        take_cluster(type, body)

    @kopf.on.event("v1", "namespaces", registry=registry)
    async def namespace(type: str | None, body: kopf.Body, **_: Any) -> None:
        take_namespace(type, body)


def connection_info(settings: Settings) -> kopf.ConnectionInfo:
    """kopf logs in with the cluster configuration of our own client
    (``--kubeconfig``, ``--context``); its default login knows neither flag."""
    config = load_config(settings.kubeconfig, settings.context)
    bearer = config.auth_settings().get("BearerToken")
    header = str(bearer.get("value") or "") if bearer else ""
    scheme, _sep, token = header.rpartition(" ")  # "Bearer <token>"
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )
