"""The Secrets the operator needs, and no other: label-selected lists and watches.

In a real cluster most Secrets are not ours (Helm keeps every release as a Secret of
up to 1 MiB). kopf cannot select server-side, so Secrets are watched here, on our own
client, with one label selector per use (a selector cannot OR two labels):

- API accounts: ``itcare.cegedim.cloud/api-account=true``;
- target Secrets and the cluster kind's copies:
  ``app.kubernetes.io/managed-by=itcare-token-operator``;
- with ``--no-require-source-label`` an API account carries no label to select by:
  then every Secret is watched as metadata only (``PartialObjectMetadata``, as
  cert-manager does), and a Secret some credential reads is fetched when it changes.

Each :class:`Reflector` lists (page by page), then watches from the list's
``resourceVersion`` with bookmarks, resumes from the last version seen after the
server ends a watch, and relists after ``410 Gone``; a relist reports what vanished
meanwhile as deleted. An object that stops matching its selector arrives as
``DELETED`` (the API server does that for selected watches).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from itcare_operator.kube import METADATA, METADATA_LIST, Gone
from itcare_operator.kube_api import KubeError, secrets_path
from itcare_operator.model import Key
from itcare_operator.source_secret import SOURCE_LABEL, slim_source
from itcare_operator.spec import CredentialSpec
from itcare_operator.target_secret import CLUSTER_CREDENTIAL_LABEL, MANAGED_BY, MANAGED_BY_LABEL

__all__ = [
    "MANAGED_SELECTOR",
    "SOURCE_SELECTOR",
    "Lister",
    "Reflector",
    "SecretRouter",
    "Take",
    "reflectors",
]

MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
SOURCE_SELECTOR = f"{SOURCE_LABEL}=true"
# Kept of every API account Secret even before a credential names it (the defaults).
DEFAULT_SOURCE_KEYS = frozenset({CredentialSpec.client_id_key, CredentialSpec.client_secret_key})


class Registry(Protocol):
    """What the router needs of each credential kind (``Reconciler``)."""

    def source_secret_event(self, type_: str | None, secret: Any) -> None: ...

    def source_touched(self, where: Key) -> None: ...

    def keys_read(self, where: Key) -> set[str]: ...


class Targets(Protocol):
    def target_secret_event(self, type_: str | None, secret: Any) -> None: ...


class Copies(Protocol):
    def copy_event(self, type_: str | None, secret: Any) -> None: ...


log = logging.getLogger(__name__)

Take = Callable[[str | None, Any], None]
RETRY_MIN, RETRY_MAX = 1.0, 30.0  # seconds between attempts after an error
QUIET_WATCH = 1.0  # a watch that ends at once with nothing waits this long to resume


class Lister(Protocol):
    """What a reflector needs of the Kubernetes client."""

    async def list_page(
        self,
        path: str,
        *,
        accept: str = ...,
        selector: str | None = ...,
        cont: str | None = ...,
    ) -> dict[str, Any]: ...

    def watch(
        self,
        path: str,
        resource_version: str,
        *,
        selector: str | None = ...,
        accept: str = ...,
    ) -> AsyncIterator[dict[str, Any]]: ...


def _key(obj: Any) -> tuple[str, str]:
    meta = obj.get("metadata") or {} if isinstance(obj, dict) else {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class Reflector:
    """One label-selected collection, listed then watched, fed to ``take(type, obj)``.

    ``take`` gets ``None`` for each listed object (as kopf's listing does), then
    ``ADDED``/``MODIFIED``/``DELETED``. It is expected not to raise (wrap it with
    :func:`isolation.guarded`)."""

    def __init__(
        self,
        kube: Lister,
        path: str,
        take: Take,
        *,
        selector: str | None = None,
        metadata_only: bool = False,
        name: str = "Secrets",
    ) -> None:
        self.kube, self.path, self.take = kube, path, take
        self.selector, self.name = selector, name
        self.list_accept = METADATA_LIST if metadata_only else "application/json"
        self.watch_accept = METADATA if metadata_only else "application/json"
        self.resource_version: str | None = None
        self.known: set[tuple[str, str]] = set()
        self.relists = 0

    async def list(self) -> None:
        """List the collection: every object to ``take(None, obj)``, one page of
        bodies in memory at a time; what was known and is gone is reported deleted."""
        seen: set[tuple[str, str]] = set()
        cont: str | None = None
        version = ""
        while True:
            page = await self.kube.list_page(
                self.path, accept=self.list_accept, selector=self.selector, cont=cont
            )
            for item in page.get("items") or []:
                seen.add(_key(item))
                self.take(None, item)
            meta = page.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            cont = meta.get("continue")
            if not cont:
                break
            await asyncio.sleep(0)  # the loop is free between pages
        for namespace, name in self.known - seen:
            self.take("DELETED", {"metadata": {"namespace": namespace, "name": name}})
        self.known = seen
        self.resource_version = version

    async def run(self) -> None:
        """Watch forever (list first if :meth:`list` was not called)."""
        failures = 0
        while True:
            try:
                if self.resource_version is None:
                    await self.list()
                started = asyncio.get_running_loop().time()
                if await self._watch() == 0 and (
                    asyncio.get_running_loop().time() - started < QUIET_WATCH
                ):
                    await asyncio.sleep(QUIET_WATCH)  # a server ending watches at once
                failures = 0
            except Gone:
                log.info("%s: resourceVersion too old; relisting", self.name)
                self.resource_version = None
                self.relists += 1
            except KubeError as exc:
                failures += 1
                delay = min(RETRY_MAX, RETRY_MIN * 2 ** min(failures, 6)) * (
                    0.5 + random.random() / 2
                )
                log.warning("%s: %s; retrying in %.0f s", self.name, exc, delay)
                await asyncio.sleep(delay)

    async def _watch(self) -> int:
        """One watch request; the number of events it brought."""
        assert self.resource_version is not None
        events = 0
        async for event in self.kube.watch(
            self.path, self.resource_version, selector=self.selector, accept=self.watch_accept
        ):
            events += 1
            obj = event.get("object")
            if not isinstance(obj, dict):
                continue
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if event.get("type") == "BOOKMARK":
                if version:
                    self.resource_version = str(version)
                continue
            type_ = str(event.get("type"))
            key = _key(obj)
            if type_ == "DELETED":
                self.known.discard(key)
            else:
                self.known.add(key)
            self.take(type_, obj)
            if version:
                self.resource_version = str(version)
        return events


class SecretRouter:
    """Where each selected Secret's event goes.

    API accounts (the ``api-account`` selector) are kept slim in the shared
    ``sources`` map (identity, label and the keys credentials read; see
    :func:`slim_source`) and reported to every kind; managed Secrets (the
    ``managed-by`` selector) go to the namespaced kind as targets, or to the cluster
    kind as copies when labelled so.
    """

    def __init__(
        self,
        sources: dict[Key, Any],
        registries: Sequence[Registry],
        targets: Targets,
        copies: Copies | None,
    ) -> None:
        self.sources, self._registries = sources, registries
        self._targets, self._copies = targets, copies
        self._copy_keys: set[Key] = set()  # managed Secrets routed as copies

    def source(self, type_: str | None, secret: Any) -> None:
        where = _key(secret)
        if type_ == "DELETED":
            self.sources.pop(where, None)
            kept = secret
        else:
            keys = set(DEFAULT_SOURCE_KEYS)
            for registry in self._registries:
                keys |= registry.keys_read(where)
            kept = self.sources[where] = slim_source(secret, keys)
        for registry in self._registries:
            registry.source_secret_event(type_, kept)

    def touched(self, type_: str | None, meta: Any) -> None:
        """A Secret's metadata changed (the watch of every Secret by name, without
        ``--require-source-label``): its readers read it again."""
        if type_ is None:
            return  # the start-up listing: the first reconcile reads what it needs
        where = _key(meta)
        self.sources.pop(where, None)
        for registry in self._registries:
            registry.source_touched(where)

    def managed(self, type_: str | None, secret: Any) -> None:
        where = _key(secret)
        labels = (secret.get("metadata") or {}).get("labels") or {}
        copy = self._copies is not None and (
            CLUSTER_CREDENTIAL_LABEL in labels or (type_ == "DELETED" and where in self._copy_keys)
        )
        if copy:
            assert self._copies is not None
            if type_ == "DELETED":
                self._copy_keys.discard(where)
            else:
                self._copy_keys.add(where)
            self._copies.copy_event(type_, secret)
        else:
            self._targets.target_secret_event(type_, secret)


def reflectors(
    kube: Lister,
    namespaces: tuple[str, ...],
    route: SecretRouter,
    guard: Callable[[str, Take], Take],
    *,
    require_source_label: bool,
) -> list[Reflector]:
    """The Secret watches an operator needs: per watched namespace (or the whole
    cluster), one for its managed Secrets and one for API accounts (metadata only
    when API accounts carry no label). ``guard(stage, take)`` isolates each event."""
    # (stage, take, selector, metadata only, what)
    uses: list[tuple[str, Take, str | None, bool, str]] = [
        ("managed", route.managed, MANAGED_SELECTOR, False, "managed Secrets"),
        ("source", route.source, SOURCE_SELECTOR, False, "API account Secrets")
        if require_source_label
        else ("metadata", route.touched, None, True, "Secret names"),
    ]
    out: list[Reflector] = []
    for namespace in namespaces or (None,):
        where = namespace or "all namespaces"
        for stage, take, selector, metadata_only, what in uses:
            out.append(
                Reflector(
                    kube,
                    secrets_path(namespace),
                    guard(stage, take),
                    selector=selector,
                    metadata_only=metadata_only,
                    name=f"{what} in {where}",
                )
            )
    return out
