"""The one module that talks to the Kubernetes API server.

The ``kubernetes`` client is synchronous: every call runs in a dedicated thread pool
so the event loop never blocks. Responses are read as raw JSON dicts (no model
deserialisation: cheaper, and the shapes match the API documentation).
``ApiException`` is converted here into :class:`NotFound`, :class:`Conflict` or
:class:`KubeError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import functools
import json
import logging
import secrets
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from itcare_operator._version import __version__
from itcare_operator.errors import CredentialError, Reason
from itcare_operator.source_secret import credentials_from_secret
from itcare_operator.token import ClientCredentials, format_time

__all__ = [
    "CLUSTER_PLURAL",
    "GROUP",
    "PLURAL",
    "VERSION",
    "Conflict",
    "Invalid",
    "KubeClient",
    "KubeError",
    "NotFound",
    "SecretWatch",
    "Watch",
    "cluster_credential_watch",
    "credential_watch",
    "load_config",
    "namespace_watch",
    "read_credentials_sync",
]

log = logging.getLogger(__name__)

GROUP = "itcare.cegedim.cloud"
VERSION = "v1alpha1"
PLURAL = "itcarecredentials"
CLUSTER_PLURAL = "clusteritcarecredentials"
COMPONENT = "itcare-token-operator"
REQUEST_TIMEOUT = (5, 30)  # connect, read: no API call may hang a worker thread
MERGE_PATCH = "application/merge-patch+json"
LIST_PAGE = 500  # objects per list request
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{}/leases"
USER_AGENT = f"itcare-token-operator/{__version__}"


class KubeError(Exception):
    """An API call failed. The message holds the status and reason, never a body."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: resourceVersion conflict or AlreadyExists."""


class Invalid(KubeError):
    """422: the object breaks a validation rule; resending it cannot succeed."""


def load_config(
    kubeconfig: str | None = None, context: str | None = None
) -> kubernetes.client.Configuration:
    """In-cluster configuration, else ``KUBECONFIG`` / ``~/.kube/config``; an explicit
    kubeconfig file or context (the CLI flags) wins over in-cluster configuration."""
    config = kubernetes.client.Configuration()
    if kubeconfig or context:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=config
        )
        return config
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)  # type: ignore[no-untyped-call]
    return config


def _json(response: Any) -> dict[str, Any]:
    """Read a raw urllib3 response, give its connection back to the pool, parse it.

    With ``_preload_content=False`` urllib3 keeps the connection until
    ``release_conn()``; without it every request opens a new TLS connection.
    """
    try:
        data = response.data
    finally:
        response.release_conn()
    return json.loads(data) if data else {}


def _error(status: int, reason: str, body: bytes, what: str) -> KubeError:
    """A non-2xx answer as :class:`NotFound`, :class:`Conflict` or :class:`KubeError`;
    the message holds the status and the Status object's reason, never the body."""
    try:
        doc = json.loads(body or b"{}")
        detail = (doc.get("reason") or "") if isinstance(doc, dict) else ""
    except ValueError:
        detail = ""
    message = f"{what}: {status} {reason}{f' ({detail})' if detail else ''}"
    if status == 404:
        return NotFound(message, status)
    if status == 409:
        return Conflict(message, status)
    if status == 422:
        return Invalid(message, status)
    return KubeError(message, status)


class KubeClient:
    """Async facade over the API server, requests on their own thread pool.

    Single-object reads and writes go straight to the ``kubernetes`` client's urllib3
    pool (same server, TLS, proxy and bearer-token refresh as the client) with our JSON
    bodies: the generated API methods validate every dict body into pydantic models and
    back, over a quarter of the operator's Python time per refresh in a profile at
    N=1000. The long-lived watches and the CLI use the generated methods.
    """

    def __init__(
        self,
        configuration: kubernetes.client.Configuration | None = None,
        *,
        threads: int = 16,
        on_call: Callable[[str, str], None] | None = None,
    ) -> None:
        configuration = configuration or load_config()
        # Workers and the long-lived watches share the pool: if it is smaller than both
        # together, urllib3 discards connections and pays a TLS handshake per request
        # (29 % of the operator's CPU in a profile at N=1000).
        configuration.connection_pool_maxsize = threads + 16
        self.configuration = configuration
        self.api_client = kubernetes.client.ApiClient(configuration)
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self._http = self.api_client.rest_client.pool_manager
        self._timeout = urllib3.Timeout(connect=REQUEST_TIMEOUT[0], read=REQUEST_TIMEOUT[1])
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="kube")
        self.on_call = on_call  # (verb, resource) of every request, for metrics

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()  # type: ignore[no-untyped-call]

    async def request(
        self,
        verb: str,
        resource: str,
        what: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One API request, answered as a JSON dict; ``verb``/``resource`` label the
        metric, ``what`` starts every error message."""
        if self.on_call is not None:
            self.on_call(verb, resource)
        url = self.configuration.host + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None

        def send() -> tuple[int, str, bytes]:
            headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = content_type
            # Bearer tokens (in-cluster, exec plugins) are re-read by the configuration's
            # refresh hook, as the kubernetes client does on every request.
            bearer = self.configuration.auth_settings().get("BearerToken")
            if bearer and bearer.get("value"):
                headers["Authorization"] = str(bearer["value"])
            resp = self._http.request(
                method, url, body=data, headers=headers, timeout=self._timeout
            )
            return resp.status, resp.reason or "", resp.data

        loop = asyncio.get_running_loop()
        try:
            status, reason, content = await loop.run_in_executor(self._pool, send)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # API server unreachable or restarting: a KubeError, retried by the caller.
            raise KubeError(f"{what}: API server unreachable ({type(exc).__name__})") from None
        if 200 <= status < 300:
            return json.loads(content) if content else {}
        raise _error(status, reason, content, what)

    async def _get(self, resource: str, what: str, path: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        try:
            return await self.request("get", resource, what, "GET", path)
        except NotFound:
            return None

    # -- Secrets -------------------------------------------------------------------
    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(
            "secrets",
            f"get Secret {namespace}/{name}",
            f"/api/v1/namespaces/{namespace}/secrets/{name}",
        )

    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request(
            "create",
            "secrets",
            f"create Secret {namespace}/{body['metadata']['name']}",
            "POST",
            f"/api/v1/namespaces/{namespace}/secrets",
            body=_typed(body, "v1", "Secret"),
        )

    async def replace_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        return await self.request(
            "update",
            "secrets",
            f"replace Secret {namespace}/{name}",
            "PUT",
            f"/api/v1/namespaces/{namespace}/secrets/{name}",
            body=_typed(body, "v1", "Secret"),
        )

    async def delete_secret(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete a Secret (only the one with ``uid`` when given); absent is fine."""
        with contextlib.suppress(NotFound):
            await self.request(
                "delete",
                "secrets",
                f"delete Secret {namespace}/{name}",
                "DELETE",
                f"/api/v1/namespaces/{namespace}/secrets/{name}",
                body={
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    **({"preconditions": {"uid": uid}} if uid else {}),
                },
            )

    async def list_secrets(self, label_selector: str) -> list[dict[str, Any]]:
        """Secrets in every namespace with this label selector."""
        doc = await self.request(
            "list",
            "secrets",
            f"list Secrets ({label_selector})",
            "GET",
            "/api/v1/secrets",
            params={"labelSelector": label_selector},
        )
        return list(doc.get("items") or [])

    # -- ClusterITCareCredential -------------------------------------------------------
    async def patch_cluster_status(self, name: str, status: Mapping[str, Any]) -> None:
        await self.request(
            "patch",
            f"{CLUSTER_PLURAL}/status",
            f"patch status of ClusterITCareCredential {name}",
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/{CLUSTER_PLURAL}/{name}/status",
            body={"status": status},
            content_type=MERGE_PATCH,
        )

    async def set_cluster_finalizers(
        self, name: str, finalizers: list[str], resource_version: str | None
    ) -> dict[str, Any]:
        """Replace the finalizer list (a conflict if the object changed meanwhile)."""
        meta: dict[str, Any] = {"finalizers": finalizers}
        if resource_version:
            meta["resourceVersion"] = resource_version
        return await self.request(
            "patch",
            CLUSTER_PLURAL,
            f"patch finalizers of ClusterITCareCredential {name}",
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/{CLUSTER_PLURAL}/{name}",
            body={"metadata": meta},
            content_type=MERGE_PATCH,
        )

    # -- ITCareCredential ------------------------------------------------------------
    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await self.request(
            "patch",
            "itcarecredentials/status",
            f"patch status of ITCareCredential {namespace}/{name}",
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status",
            body={"status": status},
            content_type=MERGE_PATCH,
        )

    # -- Leases (leader election) ------------------------------------------------------
    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(
            "leases", f"get Lease {namespace}/{name}", f"{LEASES.format(namespace)}/{name}"
        )

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request(
            "create",
            "leases",
            "create Lease",
            "POST",
            LEASES.format(namespace),
            body=_typed(body, "coordination.k8s.io/v1", "Lease"),
        )

    async def replace_lease(
        self, namespace: str, body: Mapping[str, Any], what: str = "update Lease"
    ) -> dict[str, Any]:
        name = body["metadata"]["name"]
        return await self.request(
            "update",
            "leases",
            what,
            "PUT",
            f"{LEASES.format(namespace)}/{name}",
            body=_typed(body, "coordination.k8s.io/v1", "Lease"),
        )

    # -- Events ------------------------------------------------------------------------
    async def create_event(
        self,
        involved: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        *,
        namespace: str | None = None,
    ) -> None:
        """Post an Event; for a cluster-scoped object, in ``namespace`` (as for Nodes)."""
        now = dt.datetime.now(dt.UTC)
        stamp = format_time(now)
        namespace = involved.get("namespace") or namespace or "default"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{involved['name']}.{secrets.token_hex(8)}",
                "namespace": namespace,
            },
            "involvedObject": dict(involved),
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.request(
                "create",
                "events",
                f"create Event in {namespace}",
                "POST",
                f"/api/v1/namespaces/{namespace}/events",
                body=body,
            )
        except KubeError as exc:  # events are best effort
            log.warning("could not post event %s: %s", reason, exc)


def _typed(body: Mapping[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """The body with its apiVersion and kind (the API server wants them in a write)."""
    return {"apiVersion": api_version, "kind": kind, **body}


class Watch:
    """List-then-watch objects matching a label selector, in a background thread.

    ``on_event(type, obj)`` is called on the event loop for every object listed
    (type ``None``) or changed (``ADDED``/``MODIFIED``/``DELETED``). The watch resumes
    from the last resourceVersion; on 410 Gone or any error it lists again. ``synced``
    is set once the first listing has been delivered.
    """

    def __init__(
        self,
        client: KubeClient,
        label_selector: str,
        on_event: Callable[[str | None, dict[str, Any]], None],
        *,
        list_fn: Callable[..., Any],
        what: str = "Secret",
        timeout_seconds: int = 60,
        on_listed: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self._client = client
        self._on_listed = on_listed  # after every (re)list: objects deleted meanwhile
        self._what = f"{what} watch ({label_selector or 'all'})"
        self._selector = label_selector
        self._list_call = list_fn
        self._on_event = on_event
        self._timeout = timeout_seconds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.synced = asyncio.Event()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=self._what, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _deliver(
        self,
        events: list[tuple[str | None, dict[str, Any]]],
        *,
        listed: list[dict[str, Any]] | None = None,
    ) -> None:
        """Hand a batch of events to the event loop in one wake-up (one per chunk read,
        not one per object: waking the loop per object cost 5 % of its time at N=1000).
        ``listed``: a (re)list is complete; the identities of everything it held."""
        assert self._loop is not None
        if self._loop.is_closed():  # shutting down
            self._stopping.set()
            return
        if events or listed is not None:
            self._loop.call_soon_threadsafe(self._dispatch, events, listed)

    def _dispatch(
        self,
        events: list[tuple[str | None, dict[str, Any]]],
        listed: list[dict[str, Any]] | None,
    ) -> None:
        for type_, obj in events:
            self._on_event(type_, obj)
        if listed is not None:
            if self._on_listed is not None:
                self._on_listed(listed)
            self.synced.set()

    def _list_fn(self) -> Callable[..., Any]:
        return self._list_call

    def _run(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                version = self._list()
                delay = 0.5
                while not self._stopping.is_set():
                    version = self._watch(version)
            except _Gone:
                log.info("%s expired; listing again", self._what)
            except Exception as exc:  # network, API server restart: list again after a pause
                log.warning(
                    "%s failed: %s; retrying in %.1fs",
                    self._what,
                    _safe(exc),
                    delay,
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, 10.0)

    def _list(self) -> str:
        """List in pages of LIST_PAGE (one consistent snapshot): a restart at 10,000
        credentials never holds a whole list's JSON and objects at once."""
        identities: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {}
        while True:
            resp = self._list_fn()(
                label_selector=self._selector,
                limit=LIST_PAGE,
                _preload_content=False,
                _request_timeout=30,
                **kwargs,
            )
            doc = _json(resp)
            items = doc.get("items") or []
            identities += [_identity(item) for item in items]
            self._deliver([(None, item) for item in items])
            del resp, items
            meta = doc.get("metadata") or {}
            if not meta.get("continue"):
                break
            kwargs["_continue"] = meta["continue"]
        self._deliver([], listed=identities)
        return str(meta["resourceVersion"])

    def _watch(self, version: str) -> str:
        resp = self._list_fn()(
            label_selector=self._selector,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._timeout,
            _preload_content=False,
            _request_timeout=self._timeout + 10,
        )
        try:
            for batch in _batches(resp):
                events: list[tuple[str | None, dict[str, Any]]] = []
                try:
                    for event in batch:
                        type_ = event.get("type")
                        obj = event.get("object") or {}
                        if type_ == "ERROR":
                            if obj.get("code") == 410:
                                raise _Gone
                            raise KubeError(f"watch error {obj.get('code')} {obj.get('reason')}")
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if type_ != "BOOKMARK":
                            events.append((type_, obj))
                finally:
                    self._deliver(events)
                if self._stopping.is_set():
                    break
        finally:
            resp.release_conn()
        return version


class SecretWatch(Watch):
    """A :class:`Watch` of Secrets, in one namespace or all."""

    def __init__(
        self,
        client: KubeClient,
        label_selector: str,
        on_event: Callable[[str | None, dict[str, Any]], None],
        *,
        namespace: str | None = None,
        timeout_seconds: int = 60,
    ) -> None:
        core = client.core
        list_fn = (
            functools.partial(core.list_namespaced_secret, namespace)
            if namespace
            else core.list_secret_for_all_namespaces
        )
        super().__init__(
            client, label_selector, on_event, list_fn=list_fn, timeout_seconds=timeout_seconds
        )


def namespace_watch(
    client: KubeClient, on_event: Callable[[str | None, dict[str, Any]], None]
) -> Watch:
    return Watch(client, "", on_event, list_fn=client.core.list_namespace, what="Namespace")


def credential_watch(
    client: KubeClient,
    on_event: Callable[[str | None, dict[str, Any]], None],
    on_listed: Callable[[list[dict[str, Any]]], None],
    *,
    namespace: str | None = None,
) -> Watch:
    """ITCareCredentials in one namespace or all (our own watch, not kopf's: kopf's
    per-event processing was a third of the event loop's time at N=1000)."""
    custom = client.custom
    list_fn = (
        functools.partial(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)
        if namespace
        else functools.partial(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
    )
    return Watch(
        client, "", on_event, list_fn=list_fn, what="ITCareCredential", on_listed=on_listed
    )


def cluster_credential_watch(
    client: KubeClient,
    on_event: Callable[[str | None, dict[str, Any]], None],
    on_listed: Callable[[list[dict[str, Any]]], None],
) -> Watch:
    list_fn = functools.partial(
        client.custom.list_cluster_custom_object, GROUP, VERSION, CLUSTER_PLURAL
    )
    return Watch(
        client,
        "",
        on_event,
        list_fn=list_fn,
        what="ClusterITCareCredential",
        on_listed=on_listed,
    )


class _Gone(Exception):
    pass


def _safe(exc: BaseException) -> str:
    """Status and class of an error (API bodies are not logged)."""
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {str(exc)[:160]}"


def _identity(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Just the object's namespace, name and uid (what an ``on_listed`` needs)."""
    meta = obj.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in ("namespace", "name", "uid") if k in meta}}


def _batches(resp: Any) -> Iterator[list[dict[str, Any]]]:
    """The watch stream's events, as the lists that each read completed."""
    buffer = b""
    for chunk in resp.stream(amt=65536, decode_content=False):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield [json.loads(line) for line in lines if line.strip()]
    if buffer.strip():
        yield [json.loads(buffer)]


def read_credentials_sync(
    namespace: str,
    name: str,
    client_id_key: str,
    client_secret_key: str,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> ClientCredentials:
    """For ``itcare-operator token --from-secret``: read an API account Secret now."""
    client = kubernetes.client.ApiClient(load_config(kubeconfig, context))
    try:
        core = kubernetes.client.CoreV1Api(client)
        try:
            secret = _json(core.read_namespaced_secret(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                secret = None
            else:
                raise CredentialError(
                    f"cannot read Secret {namespace}/{name}: {exc.status} {exc.reason}",
                    reason=Reason.SOURCE_SECRET_NOT_FOUND,
                ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise CredentialError(
                f"cannot reach the API server ({type(exc).__name__})",
                reason=Reason.SOURCE_SECRET_NOT_FOUND,
            ) from None
        return credentials_from_secret(
            secret,
            name=f"{namespace}/{name}",
            client_id_key=client_id_key,
            client_secret_key=client_secret_key,
            require_label=False,
        )
    finally:
        client.close()  # type: ignore[no-untyped-call]
