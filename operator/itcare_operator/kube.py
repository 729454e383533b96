"""The one module that talks to the Kubernetes API server.

One asynchronous client on the event loop: one ``aiohttp`` session (the HTTP stack
``kubernetes.aio`` and kopf run on), no thread pool. The cluster configuration comes
from ``kubernetes.aio.config`` (kubeconfig, in-cluster service account, exec plugins
and their token refresh). Responses are read as raw JSON dicts (no model
deserialisation: cheaper, and the shapes match the API documentation). Error answers
become :class:`NotFound`, :class:`Conflict`, :class:`Invalid` or :class:`KubeError`
here, once, naming the server and never quoting a body.

The proxy is resolved once from the configuration or the environment
(``HTTPS_PROXY``/``NO_PROXY``): ``kubernetes.aio``'s own session sets
``trust_env``, which looks the proxy and ``.netrc`` up again on every request.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import secrets
import ssl
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import kubernetes.aio.client
import kubernetes.aio.config

from itcare_operator._version import __version__
from itcare_operator.kube_api import (
    CLUSTER_PLURAL,
    GROUP,
    PLURAL,
    VERSION,
    KubeError,
    NotFound,
    api_error,
)
from itcare_operator.token import format_time

__all__ = ["Gone", "KubeClient", "connect"]

log = logging.getLogger(__name__)

COMPONENT = "itcare-token-operator"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0  # no API call may hang a reconcile slot
WATCH_TIMEOUT = 300  # seconds the server keeps a watch open (then it is resumed)
MERGE_PATCH = "application/merge-patch+json"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{}/leases"
USER_AGENT = f"itcare-token-operator/{__version__}"
PAGE = "500"
# A watch event is one JSON line: a Secret of 1 MiB (the API server's limit) is about
# 1.4 MB of Base64; the reader's buffer holds twice this.
READ_BUFFER = 2**22


class Gone(KubeError):
    """410: the resourceVersion a list or watch resumed from is too old: relist."""


async def connect(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    on_call: Callable[[str, str], None] | None = None,
) -> KubeClient:
    """A client for the cluster: in-cluster configuration, else ``KUBECONFIG`` /
    ``~/.kube/config``; an explicit kubeconfig file or context wins. Raises
    ``kubernetes.aio.config.ConfigException`` (or ``OSError``/YAML errors) when no
    configuration is usable."""
    config = kubernetes.aio.client.Configuration()
    if kubeconfig or context:
        await kubernetes.aio.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=config
        )
    else:
        try:
            kubernetes.aio.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=config
            )
        except kubernetes.aio.config.ConfigException:
            await kubernetes.aio.config.load_kube_config(  # type: ignore[no-untyped-call]
                client_configuration=config
            )
    return KubeClient(config, on_call=on_call)


def _ssl_context(config: kubernetes.aio.client.Configuration) -> ssl.SSLContext:
    """The TLS settings ``kubernetes.aio``'s REST client builds from a configuration."""
    context = ssl.create_default_context(cafile=config.ssl_ca_cert)
    if config.cert_file:
        context.load_cert_chain(config.cert_file, keyfile=config.key_file)
    if not config.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _proxy_for(url: str, configured: str | None) -> str | None:
    """The proxy for the API server: the configuration's, else the environment's
    (``NO_PROXY`` honoured), decided once."""
    if configured:
        return configured
    proxies = urllib.request.getproxies_environment()
    host = urllib.parse.urlsplit(url).hostname or ""
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if not proxies or bypass(host, proxies):
        return None
    scheme = urllib.parse.urlsplit(url).scheme
    return proxies.get(scheme) or proxies.get("all")


class KubeClient:
    """The operator's Kubernetes API client: requests, paged lists and watches, on one
    ``aiohttp`` session created on first use (inside the running event loop)."""

    def __init__(
        self,
        configuration: kubernetes.aio.client.Configuration,
        *,
        on_call: Callable[[str, str], None] | None = None,
        max_connections: int = 64,
    ) -> None:
        self.configuration = configuration
        self.server = str(configuration.host).rstrip("/")
        self._ssl = _ssl_context(configuration)
        self._proxy = _proxy_for(self.server, configuration.proxy)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=CONNECT_TIMEOUT + READ_TIMEOUT, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
        )
        self.on_call = on_call  # (verb, resource) of every request, for metrics

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=self._ssl),
                trust_env=False,
                read_bufsize=READ_BUFFER,
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _headers(self, accept: str, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": accept}
        if content_type is not None:
            headers["Content-Type"] = content_type
        # Bearer tokens (in-cluster, exec plugins) are refreshed by the configuration's
        # hook when they expire, as the kubernetes client does on every request.
        bearer = (await self.configuration.auth_settings()).get("BearerToken")
        if bearer and bearer.get("value"):
            headers["Authorization"] = str(bearer["value"])
        return headers

    def _unreachable(self, what: str, exc: BaseException) -> KubeError:
        return KubeError(f"{what}: API server {self.server} unreachable ({type(exc).__name__})")

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
        accept: str = "application/json",
    ) -> dict[str, Any]:
        """One API request, answered as a JSON dict; ``verb``/``resource`` label the
        metric, ``what`` starts every error message."""
        if self.on_call is not None:
            self.on_call(verb, resource)
        data = json.dumps(body).encode() if body is not None else None
        try:
            headers = await self._headers(accept, content_type if data is not None else None)
            async with self._http().request(
                method,
                self.server + path,
                params=params,
                data=data,
                headers=headers,
                proxy=self._proxy,
                timeout=self._timeout,
            ) as resp:
                content = await resp.read()
                status, reason = resp.status, resp.reason or ""
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # API server unreachable or restarting: a KubeError, retried by the caller.
            raise self._unreachable(what, exc) from None
        if 200 <= status < 300:
            return json.loads(content) if content else {}
        if status == 410:
            raise Gone(f"{what}: 410 Gone", status)
        raise api_error(status, reason, content, what)

    async def _get(self, resource: str, what: str, path: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        try:
            return await self.request("get", resource, what, "GET", path)
        except NotFound:
            return None

    async def list_page(
        self,
        path: str,
        *,
        accept: str = "application/json",
        selector: str | None = None,
        cont: str | None = None,
    ) -> dict[str, Any]:
        """One page (up to 500 objects) of a list; ``cont`` is the previous page's
        ``metadata.continue``."""
        params = {"limit": PAGE}
        if selector:
            params["labelSelector"] = selector
        if cont:
            params["continue"] = cont
        return await self.request(
            "list",
            path.rsplit("/", 1)[-1],
            f"list {path}" + (f" ({selector})" if selector else ""),
            "GET",
            path,
            params=params,
            accept=accept,
        )

    async def pages(
        self, path: str, accept: str = "application/json", selector: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The objects a list of ``path`` holds, one page of 500 at a time: a caller
        that handles each page holds one page's bodies, not 10,000."""
        cont: str | None = None
        while True:
            page = await self.list_page(path, accept=accept, selector=selector, cont=cont)
            yield page.get("items") or []
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return

    async def list_keys(self, path: str) -> set[tuple[str, str]]:
        """(namespace, name) of every object a list of ``path`` holds, in pages of
        metadata only (a tenth of the full objects' bytes)."""
        keys: set[tuple[str, str]] = set()
        async for items in self.pages(path, accept=METADATA_LIST):
            for item in items:
                meta = item.get("metadata") or {}
                keys.add((meta.get("namespace", ""), meta.get("name", "")))
        return keys

    async def watch(
        self,
        path: str,
        resource_version: str,
        *,
        selector: str | None = None,
        accept: str = "application/json",
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request from ``resource_version`` (bookmarks
        included), until the server ends it (every ``WATCH_TIMEOUT`` seconds). An
        ``ERROR`` event with code 410 raises :class:`Gone`: the caller relists."""
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT),
        }
        if selector:
            params["labelSelector"] = selector
        what = f"watch {path}" + (f" ({selector})" if selector else "")
        timeout = aiohttp.ClientTimeout(
            total=None, connect=CONNECT_TIMEOUT, sock_read=WATCH_TIMEOUT + READ_TIMEOUT
        )
        try:
            headers = await self._headers(accept, None)
            async with self._http().get(
                self.server + path,
                params=params,
                headers=headers,
                proxy=self._proxy,
                timeout=timeout,
            ) as resp:
                if resp.status == 410:
                    raise Gone(f"{what}: 410 Gone", 410)
                if resp.status != 200:
                    raise api_error(resp.status, resp.reason or "", await resp.read(), what)
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        code = int(status.get("code") or 0)
                        if code == 410:
                            raise Gone(f"{what}: 410 Gone", 410)
                        raise KubeError(f"{what}: error event {code} {status.get('reason', '')}")
                    yield event
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise self._unreachable(what, exc) from None

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
        return [
            item
            async for items in self.pages("/api/v1/secrets", selector=label_selector)
            for item in items
        ]

    # -- custom resources --------------------------------------------------------------
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
