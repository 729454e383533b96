"""kopf at the edge: what the operator watches, and where each event goes.

kopf lists and watches (chunked, resuming, relisting after 410 Gone) and calls the
functions registered here; they only hand events to the core (:mod:`registry` and
the delivery adapters), which never calls kopf. They are coroutines: kopf runs
plain functions in worker threads, and the core lives on the event loop alone.
Registered at run time on the
operator's own registry, so an operator without ``--cluster-credentials`` does not
watch Namespaces or the cluster kind it has no RBAC for.

Order at start-up is what restart safety needs: the Secrets (API accounts, target
Secrets, copies), the ClusterITCareCredentials and the Namespaces are **indexes**,
which kopf fills from their initial listings before it runs any other handler. So
when the first ITCareCredential event arrives, every stored token and API account is
already in memory: no GET per credential, no refresh because a source looked absent.
Secret events reach the index function (as a listing would: it stores, never wakes)
and then the event handler (with the real type: it wakes). kopf keeps no per-object
state for us (no finalizers, annotations or diff bases: there are no change handlers),
and posts no Events (ours are aggregated by the core).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import kopf

from itcare_operator.fanout import ClusterController
from itcare_operator.kube import CLUSTER_PLURAL, GROUP, PLURAL, VERSION, load_config
from itcare_operator.model import Key
from itcare_operator.namespaced import Controller
from itcare_operator.settings import Settings
from itcare_operator.source_secret import SOURCE_LABEL
from itcare_operator.target_secret import CLUSTER_CREDENTIAL_LABEL, MANAGED_BY, MANAGED_BY_LABEL

__all__ = ["NoDiffBase", "Operator", "SecretRouter", "connection_info", "register"]

log = logging.getLogger(__name__)

LISTING = None  # kopf's event type for an object of an initial listing


class Operator(Protocol):
    """What the handlers need of the running operator (``runner.Runtime``)."""

    settings: Settings
    controller: Controller
    cluster: ClusterController | None

    def watching(self) -> None:
        """An event handler ran: kopf has filled every index."""

    async def start_background(self) -> None: ...

    async def stop_background(self) -> None: ...


class SecretRouter:
    """One Secret watch serves three uses: API accounts (labelled, unless the label
    is not required), the target Secrets and the cluster kind's copies (labelled
    ``managed-by``). kopf watches a resource once and ANDs the label selectors of a
    resource, so the OR of these two labels is filtered here. A Secret that stops
    matching is reported as deleted, as a label-selected watch would."""

    def __init__(
        self, settings: Settings, controller: Controller, cluster: ClusterController | None
    ) -> None:
        self._controller, self._cluster = controller, cluster
        self._require_label = settings.require_source_label
        self._managed: set[Key] = set()  # managed Secrets seen, to notice a label removed

    def __call__(self, type_: str | None, secret: Mapping[str, Any]) -> None:
        meta = secret.get("metadata") or {}
        labels = meta.get("labels") or {}
        where = (meta.get("namespace", ""), meta.get("name", ""))
        controller, cluster = self._controller, self._cluster
        gone = type_ == "DELETED"
        source = not gone and (not self._require_label or labels.get(SOURCE_LABEL) == "true")
        if source or where in controller.sources:
            kind = type_ if source else "DELETED"
            controller.source_secret_event(kind, secret)
            if cluster is not None:
                cluster.source_secret_event(kind, secret)
        if not gone and labels.get(MANAGED_BY_LABEL) == MANAGED_BY:
            self._managed.add(where)
        elif where in self._managed:
            self._managed.discard(where)
            type_ = "DELETED"
        else:
            return
        if cluster is not None and CLUSTER_CREDENTIAL_LABEL in labels:
            cluster.copy_event(type_, secret)
        else:
            controller.target_secret_event(type_, secret)


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
    route = SecretRouter(settings, operator.controller, operator.cluster)

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
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        await operator.start_background()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await operator.stop_background()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(settings)

    @kopf.index("v1", "secrets", registry=registry)
    async def secrets(body: kopf.Body, **_: Any) -> None:
        route(LISTING, body)

    @kopf.on.event("v1", "secrets", registry=registry)
    async def secret_changed(type: str | None, body: kopf.Body, **_: Any) -> None:
        operator.watching()
        if type is not LISTING:  # a listed one went through the index already
            route(type, body)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def credential(type: str | None, body: kopf.Body, **_: Any) -> None:
        operator.watching()
        operator.controller.credential_event(type, body)

    cluster = operator.cluster
    if cluster is None:
        return

    @kopf.index(GROUP, VERSION, CLUSTER_PLURAL, registry=registry)
    async def cluster_credentials(body: kopf.Body, **_: Any) -> None:
        # Known before the first reconcile, so that orphaned copies are judged
        # against every cluster credential, never a partial listing.
        cluster.credential_event(LISTING, body)

    @kopf.on.event(GROUP, VERSION, CLUSTER_PLURAL, registry=registry)
    async def cluster_credential_deleted(type: str | None, body: kopf.Body, **_: Any) -> None:
        operator.watching()
        if type == "DELETED":  # the index function saw every other version
            cluster.credential_event(type, body)

    @kopf.index("v1", "namespaces", registry=registry)
    async def namespaces(body: kopf.Body, **_: Any) -> None:
        cluster.namespace_event(LISTING, body)

    @kopf.on.event("v1", "namespaces", registry=registry)
    async def namespace_changed(type: str | None, body: kopf.Body, **_: Any) -> None:
        operator.watching()
        if type is not LISTING:
            cluster.namespace_event(type, body)


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
