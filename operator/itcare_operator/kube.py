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
import json
import logging
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import kubernetes
import urllib3

from itcare_operator._version import __version__
from itcare_operator.kube_api import (
    CLUSTER_PLURAL,
    GROUP,
    PLURAL,
    VERSION,
    KubeError,
    NotFound,
    api_error,
    load_config,
)
from itcare_operator.token import format_time

__all__ = ["KubeClient"]

log = logging.getLogger(__name__)

COMPONENT = "itcare-token-operator"
REQUEST_TIMEOUT = (5, 30)  # connect, read: no API call may hang a worker thread
MERGE_PATCH = "application/merge-patch+json"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{}/leases"
USER_AGENT = f"itcare-token-operator/{__version__}"


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
        accept: str = "application/json",
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
            headers = {"User-Agent": USER_AGENT, "Accept": accept}
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
        raise api_error(status, reason, content, what)

    async def _get(self, resource: str, what: str, path: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        try:
            return await self.request("get", resource, what, "GET", path)
        except NotFound:
            return None

    async def pages(
        self, path: str, accept: str = "application/json"
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The objects a list of ``path`` holds, one page of 500 at a time: a caller
        that handles each page holds one page's bodies, not 10,000."""
        params = {"limit": "500"}
        while True:
            page = await self.request(
                "list",
                path.rsplit("/", 1)[-1],
                f"list {path}",
                "GET",
                path,
                params=params,
                accept=accept,
            )
            yield page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            params = {"limit": "500", "continue": token}

    async def list_keys(self, path: str) -> set[tuple[str, str]]:
        """(namespace, name) of every object a list of ``path`` holds, in pages of
        metadata only (a tenth of the full objects' bytes)."""
        keys: set[tuple[str, str]] = set()
        async for items in self.pages(path, accept=METADATA_LIST):
            for item in items:
                meta = item.get("metadata") or {}
                keys.add((meta.get("namespace", ""), meta.get("name", "")))
        return keys

    async def list_objects(self, path: str) -> list[dict[str, Any]]:
        """Every object a list of ``path`` holds."""
        return [item async for items in self.pages(path) for item in items]

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
