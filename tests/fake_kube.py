"""An in-memory API server for the service tier, faithful where the reconciler relies on it.

Every write gets a new ``resourceVersion`` (increasing integers, as strings); a replace
with a stale one, or a create of an existing name, is a 409 :class:`Conflict`; status
patches are RFC 7386 merge patches (``None`` deletes the key); ``generation`` moves only
with the spec; a ClusterITCareCredential with finalizers is only marked for deletion.
Every write is also queued as a watch event (``pending``) that the test delivers, drops
or reorders, as a real watch would deliver it later. The methods are exactly the
:class:`itcare_operator.kube.KubeClient` calls the controllers and the elector make.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from itcare_operator.fanout import ClusterController
from itcare_operator.kube_api import Conflict, NotFound
from itcare_operator.metrics import Metrics
from itcare_operator.namespaced import Controller
from itcare_operator.secret_watch import MANAGED_SELECTOR, SOURCE_SELECTOR, SecretRouter
from itcare_operator.settings import Settings
from itcare_operator.source_secret import SOURCE_LABEL
from itcare_operator.token_endpoint import TokenEndpoint, TokenEndpoints

__all__ = [
    "Clock",
    "Event",
    "FakeKube",
    "Operator",
    "TokenServer",
    "WatchEvent",
    "condition",
    "credential",
    "merge_patch",
    "oauth_error",
    "selects",
    "source_secret",
    "token_handler",
    "token_in",
]

ALLOWED = "https://accounts.cegedim.cloud/auth/realms/cloud/"
URL = ALLOWED + "protocol/openid-connect/token"

Key = tuple[str, str]
SECRET, CREDENTIAL, CLUSTER, NAMESPACE = (
    "Secret",
    "ITCareCredential",
    "ClusterITCareCredential",
    "Namespace",
)


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    kind: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Event:
    namespace: str
    involved: dict[str, Any]
    type: str
    reason: str
    message: str


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``None`` removes a key, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def selects(selector: str, labels: Mapping[str, str]) -> bool:
    """Equality-based label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class FakeKube:
    """Secrets, both credential kinds, Namespaces, Leases and Events in memory."""

    def __init__(self) -> None:
        self.secrets: dict[Key, dict[str, Any]] = {}
        self.credentials: dict[Key, dict[str, Any]] = {}
        self.cluster_credentials: dict[str, dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.leases: dict[Key, dict[str, Any]] = {}
        self.events: list[tuple[str, str]] = []  # (type, reason)
        self.event_log: list[Event] = []
        self.calls: list[tuple[str, str]] = []  # (method, object name)
        self.pending: list[WatchEvent] = []  # watch events not delivered yet
        self.faults: dict[str, list[Exception]] = {}
        self.listed_accepts: list[str] = []  # Accept of every list_page
        self._rv = itertools.count(100)
        self._uid = itertools.count(1)

    # -- test controls ---------------------------------------------------------------
    def fail(self, method: str, error: Exception, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` raise ``error`` (before doing anything)."""
        self.faults.setdefault(method, []).extend([error] * times)

    def take_pending(self) -> list[WatchEvent]:
        events, self.pending = self.pending, []
        return events

    def put(self, ns: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Another client creates or overwrites a Secret (no resourceVersion check)."""
        meta = dict(body.get("metadata") or {})
        current = self.secrets.get((ns, meta["name"]))
        meta.pop("resourceVersion", None)
        if current is not None:
            meta["uid"] = current["metadata"]["uid"]
            return self._store_secret(ns, {**body, "metadata": meta}, "MODIFIED")
        return self._store_secret(ns, {**body, "metadata": meta}, "ADDED")

    def remove(self, ns: str, name: str) -> None:
        """Another client deletes a Secret."""
        gone = self.secrets.pop((ns, name))
        self._echo(SECRET, "DELETED", gone)

    def apply_credential(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create or update an ITCareCredential as a user would (spec, metadata)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        current = self.credentials.get(key)
        stored = self.credentials[key] = self._apply(current, body)
        self._echo(CREDENTIAL, "ADDED" if current is None else "MODIFIED", stored)
        return copy.deepcopy(stored)

    def delete_credential(self, ns: str, name: str) -> None:
        """Delete an ITCareCredential; garbage collection takes what it owns."""
        gone = self.credentials.pop((ns, name))
        self._echo(CREDENTIAL, "DELETED", gone)
        uid = gone["metadata"]["uid"]
        for key, secret in list(self.secrets.items()):
            refs = secret["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in refs):
                self.remove(*key)

    def apply_cluster_credential(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        current = self.cluster_credentials.get(name)
        stored = self.cluster_credentials[name] = self._apply(current, body)
        self._echo(CLUSTER, "ADDED" if current is None else "MODIFIED", stored)
        return copy.deepcopy(stored)

    def delete_cluster_credential(self, name: str) -> None:
        """With finalizers: only marked (``deletionTimestamp``); without: gone."""
        stored = self.cluster_credentials[name]
        if stored["metadata"].get("finalizers"):
            stored["metadata"]["deletionTimestamp"] = "2026-11-28T12:00:00Z"
            stored["metadata"]["resourceVersion"] = self._next_rv()
            self._echo(CLUSTER, "MODIFIED", stored)
        else:
            del self.cluster_credentials[name]
            self._echo(CLUSTER, "DELETED", stored)

    def apply_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        kind = "MODIFIED" if name in self.namespaces else "ADDED"
        current = self.namespaces.get(name)
        self.namespaces[name] = {
            "metadata": {
                "name": name,
                "labels": dict(labels or {}),
                "uid": current["metadata"]["uid"] if current else self._next_uid(),
                "resourceVersion": self._next_rv(),
            },
            "status": {"phase": "Active"},
        }
        self._echo(NAMESPACE, kind, self.namespaces[name])

    def delete_namespace(self, name: str) -> None:
        """The namespace and its Secrets are gone (as once the namespace controller is done)."""
        for key in [k for k in self.secrets if k[0] == name]:
            self.remove(*key)
        self._echo(NAMESPACE, "DELETED", self.namespaces.pop(name))

    def status_of(self, ns: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.credentials[(ns, name)].get("status") or {})

    def reasons(self) -> list[str]:
        return [reason for _type, reason in self.events]

    # -- Secrets ---------------------------------------------------------------------
    def _listed(self, path: str, selector: str | None) -> list[dict[str, Any]]:
        parts = path.strip("/").split("/")
        namespace = parts[parts.index("namespaces") + 1] if "namespaces" in parts[:-1] else None
        store: Mapping[Any, dict[str, Any]] = {
            "secrets": self.secrets,
            "itcarecredentials": self.credentials,
            "clusteritcarecredentials": self.cluster_credentials,
            "namespaces": self.namespaces,
        }[parts[-1]]
        return [
            copy.deepcopy(obj)
            for obj in store.values()
            if (namespace is None or obj["metadata"].get("namespace") == namespace)
            and (not selector or selects(selector, obj["metadata"].get("labels") or {}))
        ]

    async def pages(
        self, path: str, accept: str = "application/json", selector: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """A paged list (two per page, to exercise paging) of the path's kind."""
        self._call("list", path)
        items = self._listed(path, selector)
        for start in range(0, max(len(items), 1), 2):
            yield items[start : start + 2]

    async def list_page(
        self,
        path: str,
        *,
        accept: str = "application/json",
        selector: str | None = None,
        cont: str | None = None,
    ) -> dict[str, Any]:
        """One page of two; ``accept`` for metadata only keeps the metadata."""
        self._call("list", path)
        items = self._listed(path, selector)
        start = int(cont or 0)
        page = items[start : start + 2]
        if "PartialObjectMetadata" in accept:
            page = [{"metadata": item["metadata"]} for item in page]
        meta: dict[str, Any] = {"resourceVersion": str(next(self._rv))}
        if start + 2 < len(items):
            meta["continue"] = str(start + 2)
        self.listed_accepts.append(accept)
        return {"items": page, "metadata": meta}

    async def watch(
        self,
        path: str,
        resource_version: str,
        *,
        selector: str | None = None,
        accept: str = "application/json",
    ) -> AsyncIterator[dict[str, Any]]:
        """The service tier delivers watch events itself (Operator.deliver)."""
        raise AssertionError("the service tier delivers watch events itself")
        yield {}  # an async generator

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._call("get_secret", name)
        found = self.secrets.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self._call("create_secret", name)
        if (namespace, name) in self.secrets:
            raise Conflict(f"create Secret {namespace}/{name}: 409 Conflict (AlreadyExists)", 409)
        meta = {k: v for k, v in body["metadata"].items() if k != "resourceVersion"}
        return self._store_secret(namespace, {**body, "metadata": meta}, "ADDED")

    async def replace_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self._call("replace_secret", name)
        current = self.secrets.get((namespace, name))
        if current is None:
            raise NotFound(f"replace Secret {namespace}/{name}: 404 Not Found", 404)
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise Conflict(f"replace Secret {namespace}/{name}: 409 Conflict", 409)
        meta = {**body["metadata"], "uid": current["metadata"]["uid"]}
        return self._store_secret(namespace, {**body, "metadata": meta}, "MODIFIED")

    async def delete_secret(self, namespace: str, name: str, uid: str | None = None) -> None:
        self._call("delete_secret", name)
        current = self.secrets.get((namespace, name))
        if current is None:
            return  # absent is fine (as KubeClient.delete_secret)
        if uid and current["metadata"]["uid"] != uid:
            raise Conflict(f"delete Secret {namespace}/{name}: 409 Conflict (uid)", 409)
        self.remove(namespace, name)

    async def list_secrets(self, label_selector: str) -> list[dict[str, Any]]:
        self._call("list_secrets", label_selector)
        return [
            copy.deepcopy(s)
            for s in self.secrets.values()
            if selects(label_selector, s["metadata"].get("labels") or {})
        ]

    # -- credentials -----------------------------------------------------------------
    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._call("patch_status", name)
        stored = self.credentials.get((namespace, name))
        if stored is None:
            raise NotFound(f"patch status of ITCareCredential {namespace}/{name}: 404", 404)
        self._patch_status(CREDENTIAL, stored, status)

    async def patch_cluster_status(self, name: str, status: Mapping[str, Any]) -> None:
        self._call("patch_cluster_status", name)
        stored = self.cluster_credentials.get(name)
        if stored is None:
            raise NotFound(f"patch status of ClusterITCareCredential {name}: 404", 404)
        self._patch_status(CLUSTER, stored, status)

    async def set_cluster_finalizers(
        self, name: str, finalizers: list[str], resource_version: str | None
    ) -> dict[str, Any]:
        self._call("set_cluster_finalizers", name)
        stored = self.cluster_credentials.get(name)
        if stored is None:
            raise NotFound(f"patch finalizers of ClusterITCareCredential {name}: 404", 404)
        meta = stored["metadata"]
        if resource_version and resource_version != meta["resourceVersion"]:
            raise Conflict(f"patch finalizers of ClusterITCareCredential {name}: 409", 409)
        meta["finalizers"] = list(finalizers)
        meta["resourceVersion"] = self._next_rv()
        if meta.get("deletionTimestamp") and not finalizers:
            del self.cluster_credentials[name]
            self._echo(CLUSTER, "DELETED", stored)
        else:
            self._echo(CLUSTER, "MODIFIED", stored)
        return copy.deepcopy(stored)

    # -- Leases ----------------------------------------------------------------------
    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._call("get_lease", name)
        found = self.leases.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self._call("create_lease", name)
        if (namespace, name) in self.leases:
            raise Conflict(f"create Lease {namespace}/{name}: 409 (AlreadyExists)", 409)
        stored = copy.deepcopy(dict(body))
        stored["metadata"] = {
            **stored["metadata"],
            "uid": self._next_uid(),
            "resourceVersion": self._next_rv(),
        }
        self.leases[(namespace, name)] = stored
        return copy.deepcopy(stored)

    async def replace_lease(
        self, namespace: str, body: Mapping[str, Any], what: str = "update Lease"
    ) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self._call("replace_lease", name)
        current = self.leases.get((namespace, name))
        if current is None:
            raise NotFound(f"{what}: 404", 404)
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise Conflict(f"{what}: 409 Conflict", 409)
        stored = copy.deepcopy(dict(body))
        stored["metadata"] = {**stored["metadata"], "resourceVersion": self._next_rv()}
        self.leases[(namespace, name)] = stored
        return copy.deepcopy(stored)

    # -- Events ----------------------------------------------------------------------
    async def create_event(
        self,
        involved: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        *,
        namespace: str | None = None,
    ) -> None:
        self._call("create_event", reason)
        where = involved.get("namespace") or namespace or "default"
        self.events.append((type_, reason))
        self.event_log.append(Event(where, dict(involved), type_, reason, message))

    # -- internals -------------------------------------------------------------------
    def _call(self, method: str, name: str) -> None:
        self.calls.append((method, name))
        queued = self.faults.get(method)
        if queued:
            raise queued.pop(0)

    def _next_rv(self) -> str:
        return str(next(self._rv))

    def _next_uid(self) -> str:
        return f"uid-{next(self._uid)}"

    def _echo(self, kind: str, type_: str, obj: Mapping[str, Any]) -> None:
        self.pending.append(WatchEvent(kind, type_, copy.deepcopy(dict(obj))))

    def _store_secret(self, ns: str, body: Mapping[str, Any], type_: str) -> dict[str, Any]:
        stored = copy.deepcopy(dict(body))
        meta = stored["metadata"]
        meta["namespace"] = ns
        meta.setdefault("uid", self._next_uid())
        meta["resourceVersion"] = self._next_rv()
        self.secrets[(ns, meta["name"])] = stored
        self._echo(SECRET, type_, stored)
        return copy.deepcopy(stored)

    def _apply(self, current: dict[str, Any] | None, body: Mapping[str, Any]) -> dict[str, Any]:
        """A user's create or update: spec and metadata from ``body``, status kept."""
        stored = copy.deepcopy(dict(body))
        stored.pop("status", None)
        meta = stored["metadata"]
        if current is None:
            meta.update(uid=self._next_uid(), generation=1)
        else:
            old = current["metadata"]
            changed = stored.get("spec") != current.get("spec")
            meta.update(
                uid=old["uid"],
                generation=old["generation"] + (1 if changed else 0),
                finalizers=meta.get("finalizers", old.get("finalizers")),
            )
            if current.get("status"):
                stored["status"] = copy.deepcopy(current["status"])
        if not meta.get("finalizers"):
            meta.pop("finalizers", None)
        meta["resourceVersion"] = self._next_rv()
        return stored

    def _patch_status(self, kind: str, stored: dict[str, Any], status: Mapping[str, Any]) -> None:
        stored["status"] = merge_patch(stored.get("status") or {}, dict(status))
        stored["metadata"]["resourceVersion"] = self._next_rv()
        self._echo(kind, "MODIFIED", stored)


# -- the driver: a fake clock, a token endpoint, the controllers fed like the runner --

START = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
LIFETIME = 1200  # seconds: Keycloak's default access token lifespan in the tests


class Clock:
    """The wall clock the controllers and token endpoints read; only tests move it."""

    def __init__(self, now: dt.datetime = START) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def oauth_error(status: int, error: str, description: str = "", **headers: str) -> httpx.Response:
    """A Keycloak-shaped error answer."""
    return httpx.Response(
        status, json={"error": error, "error_description": description}, headers=headers
    )


class TokenServer:
    """A Keycloak-like token endpoint behind ``httpx.MockTransport``: answers ``tok-N``
    valid for :data:`LIFETIME` seconds, or the scripted answers first, and keeps every
    request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.times: list[dt.datetime] = []  # the fake time of each request
        self.script: list[httpx.Response] = []
        self._clock = Clock()

    def answer(self, *responses: httpx.Response) -> None:
        self.script.extend(responses)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(self._clock())
        if self.script:
            return self.script.pop(0)
        return httpx.Response(
            200,
            json={
                "access_token": f"tok-{len(self.requests)}",
                "expires_in": LIFETIME,
                "token_type": "Bearer",
            },
        )

    def endpoints(self, clock: Clock) -> TokenEndpoints:
        self._clock = clock
        transport = httpx.MockTransport(self.handle)
        return TokenEndpoints(lambda url, ca: TokenEndpoint(url, transport=transport, clock=clock))


class Operator:
    """One operator process over a :class:`FakeKube`: the namespaced controller (and
    the cluster one), fed watch events the way ``runner`` routes them, reconciled when
    the fake clock makes them due. Nothing sleeps: :meth:`advance` jumps the clock from
    one due time to the next."""

    def __init__(
        self,
        kube: FakeKube,
        clock: Clock,
        tokens: TokenServer,
        settings: Settings | None = None,
        *,
        rand: float = 0.0,
    ) -> None:
        self.kube, self.clock, self.tokens = kube, clock, tokens
        self.settings = settings or Settings(allowed_token_urls=(ALLOWED,))
        self.metrics = Metrics()
        endpoints = tokens.endpoints(clock)
        client: Any = kube  # the KubeClient calls the controllers make, in memory
        self.controller = Controller(
            self.settings, client, endpoints, self.metrics, clock=clock, rand=lambda: rand
        )
        self.cluster = (
            ClusterController(
                self.settings,
                client,
                endpoints,
                self.metrics,
                self.controller.sources,
                clock=clock,
                rand=lambda: rand,
            )
            if self.settings.cluster_credentials
            else None
        )
        registries: list[Any] = [self.controller, *([self.cluster] if self.cluster else [])]
        self.route = SecretRouter(
            self.controller.sources, registries, self.controller, self.cluster
        )
        # Which of the operator's two Secret selectors each Secret matched last: one
        # that stops matching is DELETED for that watch, as the API server reports it.
        self._selected: dict[str, set[Key]] = {"source": set(), "managed": set()}

    async def start(self, *, targets_first: bool = True) -> None:
        """The start-up listings (type None), then the first reconciles."""
        self.kube.take_pending()  # the listing is newer than any queued event
        secrets = list(self.kube.secrets.values())
        credentials = list(self.kube.credentials.values())
        if not targets_first:
            self._list_credentials(credentials)
        for secret in secrets:
            self._secret(None, secret)
        if targets_first:
            self._list_credentials(credentials)
        if self.cluster is not None:
            for namespace in self.kube.namespaces.values():
                self.cluster.namespace_event(None, copy.deepcopy(namespace))
            items = [copy.deepcopy(c) for c in self.kube.cluster_credentials.values()]
            for item in items:
                self.cluster.credential_event(None, item)
            await self.cluster.delete_orphans()
        await self.run()

    def _list_credentials(self, credentials: list[dict[str, Any]]) -> None:
        items = [copy.deepcopy(c) for c in credentials]
        for item in items:
            self.controller.credential_event(None, item)

    def deliver(self, events: list[WatchEvent] | None = None) -> int:
        """Deliver watch events (default: every pending one, in order)."""
        events = self.kube.take_pending() if events is None else events
        for event in events:
            if event.kind == SECRET:
                self._secret(event.type, event.obj)
            elif event.kind == CREDENTIAL:
                self.controller.credential_event(event.type, event.obj)
            elif self.cluster is not None and event.kind == CLUSTER:
                self.cluster.credential_event(event.type, event.obj)
            elif self.cluster is not None and event.kind == NAMESPACE:
                self.cluster.namespace_event(event.type, event.obj)
        return len(events)

    def _secret(self, type_: str | None, secret: dict[str, Any]) -> None:
        """One Secret event, as the operator's label-selected watches deliver it."""
        meta = secret.get("metadata") or {}
        where = (meta.get("namespace", ""), meta.get("name", ""))
        labels = meta.get("labels") or {}
        if not self.settings.require_source_label:
            self.route.touched(type_, {"metadata": copy.deepcopy(meta)})
        watches = [("managed", MANAGED_SELECTOR, self.route.managed)]
        if self.settings.require_source_label:
            watches.append(("source", SOURCE_SELECTOR, self.route.source))
        for name, selector, take in watches:
            seen = self._selected[name]
            if type_ != "DELETED" and selects(selector, labels):
                seen.add(where)
                take(type_, copy.deepcopy(secret))
            elif where in seen:
                seen.discard(where)
                take("DELETED", copy.deepcopy(secret))

    async def run(self, *, echoes: bool = True) -> list[object]:
        """Deliver echoes (unless told not to) and run what is due, until quiet."""
        ran: list[object] = []
        for _round in range(50):
            delivered = self.deliver() if echoes else 0
            now = list(await self.controller.scheduler.run_due())
            if self.cluster is not None:
                now += await self.cluster.scheduler.run_due()
            await self.controller.drain_events()
            if self.cluster is not None:
                await self.cluster.drain_events()
            ran += now
            if not now and not delivered:
                return ran
        raise AssertionError(f"no quiet state after 50 rounds: {ran[-10:]}")

    def next_due(self) -> dt.datetime | None:
        schedulers = [self.controller.scheduler]
        if self.cluster is not None:
            schedulers.append(self.cluster.scheduler)
        times = [t for s in schedulers if (t := s.next_due()) is not None]
        return dt.datetime.fromtimestamp(min(times), dt.UTC) if times else None

    async def advance(self, seconds: float, *, echoes: bool = True) -> list[object]:
        """Move the clock ``seconds`` on, stopping at every due time on the way."""
        end = self.clock.now + dt.timedelta(seconds=seconds)
        ran = await self.run(echoes=echoes)  # what happened so far is seen now
        while (due := self.next_due()) is not None and due <= end:
            self.clock.now = max(self.clock.now, due)
            ran += await self.run(echoes=echoes)
        self.clock.now = end
        return ran + await self.run(echoes=echoes)


def source_secret(ns: str, name: str = "acct", secret: str = "secret") -> dict[str, Any]:
    """An API-account Secret (labelled for the operator)."""
    return {
        "metadata": {"name": name, "namespace": ns, "labels": {SOURCE_LABEL: "true"}},
        "data": {
            "client-id": base64.b64encode(b"id").decode(),
            "client-secret": base64.b64encode(secret.encode()).decode(),
        },
    }


def credential(ns: str, name: str = "billing", **spec: Any) -> dict[str, Any]:
    """An ITCareCredential reading ``acct`` into ``itcare-token``; ``spec`` overrides."""
    return {
        "metadata": {"namespace": ns, "name": name},
        "spec": {
            "clientSecretRef": {"name": "acct"},
            "tokenURL": URL,
            "targetSecret": {"name": "itcare-token"},
            **spec,
        },
    }


def token_in(kube: FakeKube, ns: str, name: str = "itcare-token") -> str:
    return base64.b64decode(kube.secrets[(ns, name)]["data"]["access_token"]).decode()


def condition(status: Mapping[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c.get("type") == type_)


def token_handler(counter: list[int]) -> httpx.MockTransport:
    """A token endpoint that appends to ``counter`` and answers ``tok-N`` (the simpler
    form some unit modules use; :class:`TokenServer` also scripts answers)."""

    def handle(request: httpx.Request) -> httpx.Response:
        counter.append(1)
        return httpx.Response(
            200,
            json={
                "access_token": f"tok-{len(counter)}",
                "expires_in": LIFETIME,
                "token_type": "bearer",
            },
        )

    return httpx.MockTransport(handle)


def feed_source(controller: Controller, type_: str | None, secret: Mapping[str, Any]) -> None:
    """An API account Secret event, as the operator's source watch routes it."""
    SecretRouter(controller.sources, [controller], controller, None).source(type_, secret)
