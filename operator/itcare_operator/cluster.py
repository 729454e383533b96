"""ClusterITCareCredential: one token per cycle, copied into every selected namespace.

A platform team keeps the API account in one namespace the operator allows
(``--allowed-source-namespace``); application namespaces get only the short-lived
token. Inputs are watch events (the cluster credentials, Namespaces, source Secrets,
the copies); one reconcile

1. deletes the copies in namespaces that are no longer selected (and all of them,
   then the finalizer, when the credential is being deleted: garbage collection does
   not delete namespaced objects for a cluster-scoped owner we do not reference),
2. obtains a token when one is due (the same rules as :mod:`controller`),
3. writes the token to every selected namespace that does not hold it yet
   (conflicts are per namespace and never block the others),
4. publishes status, metrics and the next wake-up.

A copy carries no ownerReference: it is owned through the label
``itcare.cegedim.cloud/cluster-credential`` and the annotation
``itcare.cegedim.cloud/owner-uid``, and deleted by the operator itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from itcare_operator.controller import (
    REFRESH_ANNOTATION,
    TokenURLNotAllowed,
    forced_refresh_allowed_at,
    refused_target,
    resumed_refresh_at,
    slim,
    slim_credential,
    source_fingerprint,
)
from itcare_operator.errors import CredentialError, FailureKind, Reason, TokenEndpointError
from itcare_operator.kube import (
    GROUP,
    VERSION,
    Conflict,
    Invalid,
    KubeClient,
    KubeError,
    NotFound,
)
from itcare_operator.logs import Resource, about, fields
from itcare_operator.metrics import CLUSTER, Metrics
from itcare_operator.refresh_policy import (
    RefreshPolicy,
    backoff_delay,
    margin_notice,
    next_refresh_at,
)
from itcare_operator.scheduler import Scheduler
from itcare_operator.settings import Settings
from itcare_operator.source_secret import credentials_from_secret
from itcare_operator.spec import ClusterCredentialSpec, InvalidSpec, parse_cluster_spec
from itcare_operator.status import (
    Condition,
    Fanout,
    Observation,
    ready_condition,
    render_cluster_status,
    status_changed,
)
from itcare_operator.target_secret import (
    CLUSTER_CREDENTIAL_LABEL,
    CLUSTER_KIND,
    OWNER_UID_ANNOTATION,
    Owner,
    desired_secret,
    is_owned,
    needs_write,
    trusted_token,
    updated_secret,
)
from itcare_operator.token import Token, digest, format_time
from itcare_operator.token_endpoint import Grant, TokenEndpoints, utcnow

__all__ = ["FINALIZER", "ClusterController"]

log = logging.getLogger(__name__)


FINALIZER = "itcare.cegedim.cloud/cleanup"
NAMESPACE_RETRY = 15.0  # seconds before a failed namespace is tried again
WRITE_CONCURRENCY = 16  # copies written at once by one credential

CopyKey = tuple[str, str]  # (namespace, Secret name)


def _resource(name: str) -> Resource:
    """What a log line about this ClusterITCareCredential names (cluster-scoped)."""
    return Resource("ClusterITCareCredential", "", name)


class SourceNamespaceNotAllowed(CredentialError):
    reason = Reason.SOURCE_NAMESPACE_NOT_ALLOWED


@dataclasses.dataclass(slots=True)
class ClusterState:
    """What the operator knows about one ClusterITCareCredential between reconciles."""

    name: str
    uid: str = ""
    generation: int = 0
    body: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    spec: ClusterCredentialSpec | InvalidSpec | None = None  # parsed once per generation
    token: Token | None = None
    token_loaded: bool = False
    refresh_at: dt.datetime | None = None
    force: bool = False
    retry_at: dt.datetime | None = None
    forced_at: dt.datetime | None = None
    refresh_request: str | None = None
    source_fingerprint: str | None = None
    selected: frozenset[str] = frozenset()
    failed: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    synced: int = 0
    failures: int = 0
    last_failure: dt.datetime | None = None
    last_refresh: dt.datetime | None = None
    refreshed: Condition | None = None
    status_sent: dict[str, Any] | None = None
    event_reason: str | None = None
    ready_reason: str | None = None
    state: str = "not_ready"

    @property
    def involved(self) -> dict[str, str]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": CLUSTER_KIND,
            "name": self.name,
            "uid": self.uid,
        }

    @property
    def deleting(self) -> bool:
        return bool((self.body.get("metadata") or {}).get("deletionTimestamp"))


class ClusterController:
    """All ClusterITCareCredentials of this operator instance."""

    def __init__(
        self,
        settings: Settings,
        kube: KubeClient,
        endpoints: TokenEndpoints,
        metrics: Metrics,
        sources: Mapping[tuple[str, str], dict[str, Any]],
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        rand: Callable[[], float] = random.random,
        concurrency: int = 8,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.endpoints = endpoints
        self.metrics = metrics
        self._sources = sources  # shared with the namespaced controller (one source watch)
        self._clock = clock
        self._rand = rand
        self.credentials: dict[str, ClusterState] = {}
        self.namespaces: dict[str, tuple[Mapping[str, str], bool]] = {}  # labels, terminating
        # Copies by credential name, as last listed, watched or written.
        self.copies: dict[str, dict[CopyKey, dict[str, Any]]] = {}
        self._by_source: dict[tuple[str, str], set[str]] = {}
        self._counts = {"ready": 0, "not_ready": 0, "suspended": 0}
        self.scheduler = Scheduler(
            self._reconcile_key, concurrency=concurrency, clock=lambda: self._clock().timestamp()
        )

    # -- watch events --------------------------------------------------------------
    def credential_event(self, type_: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        name = meta.get("name", "")
        if type_ == "DELETED":
            self._forget(name)
            return
        state = self.credentials.get(name)
        if state is None or state.uid != meta.get("uid"):
            if state is not None:
                self._forget(name)
            state = self.credentials[name] = ClusterState(name, uid=meta.get("uid", ""))
            self._counts[state.state] += 1
            state.refresh_request = (meta.get("annotations") or {}).get(REFRESH_ANNOTATION)
            state.status_sent = dict(body.get("status") or {}) or None
            self._set_body(state, body)
            self.scheduler.now(name)
            return
        was_deleting = state.deleting
        generation = int(meta.get("generation") or 0)
        request = (meta.get("annotations") or {}).get(REFRESH_ANNOTATION)
        changed = generation != state.generation
        self._set_body(state, body)
        if changed:
            state.force, state.retry_at = True, None
            self.scheduler.now(name)
        if state.deleting and not was_deleting:
            self.scheduler.now(name)
        if request != state.refresh_request:
            state.refresh_request = request
            if request:  # the reconcile applies FORCED_REFRESH_INTERVAL
                state.force, state.retry_at = True, None
                self.scheduler.now(name)

    def credentials_listed(self, items: list[dict[str, Any]]) -> None:
        """After a (re)list: forget credentials deleted while the watch was down."""
        present = {(i.get("metadata") or {}).get("name", "") for i in items}
        for name in [n for n in self.credentials if n not in present]:
            self._forget(name)

    def _set_body(self, state: ClusterState, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        generation = int(meta.get("generation") or 0)
        state.body = slim_credential(body)
        if state.spec is None or generation != state.generation:
            state.generation = generation
            try:
                parsed = parse_cluster_spec(body.get("spec"))
                state.spec = dataclasses.replace(
                    parsed,
                    credential=dataclasses.replace(
                        parsed.credential, volume_delivery=self.settings.volume_delivery
                    ),
                )
            except InvalidSpec as exc:
                state.spec = exc
            self._index(state)

    def namespace_event(self, type_: str | None, namespace: Mapping[str, Any]) -> None:
        meta = namespace.get("metadata") or {}
        name = meta.get("name", "")
        if type_ == "DELETED":
            self.namespaces.pop(name, None)
        else:
            terminating = (namespace.get("status") or {}).get("phase") == "Terminating"
            self.namespaces[name] = (dict(meta.get("labels") or {}), terminating)
        if type_ is None:
            return  # initial listing: the first reconcile looks at every namespace
        for state in self.credentials.values():
            spec = state.spec
            if not isinstance(spec, ClusterCredentialSpec):
                continue
            if (name in state.selected) != self._selects(spec, name):
                self.scheduler.now(state.name)

    def source_secret_event(self, type_: str | None, secret: Mapping[str, Any]) -> None:
        meta = secret.get("metadata") or {}
        where = (meta.get("namespace", ""), meta.get("name", ""))
        fingerprint = source_fingerprint(None if type_ == "DELETED" else secret)
        for name in self._by_source.get(where, ()):
            state = self.credentials.get(name)
            if state is None:
                continue
            if state.source_fingerprint is None:
                state.source_fingerprint = fingerprint
            elif state.source_fingerprint != fingerprint:
                log.info(
                    "source Secret of ClusterITCareCredential %s changed; refreshing",
                    name,
                    extra=fields("SourceSecretChanged", resource=_resource(name)),
                )
                state.force, state.retry_at = True, None
                self.scheduler.now(name)

    def copy_event(self, type_: str | None, secret: Mapping[str, Any]) -> None:
        """A Secret labelled with a ClusterITCareCredential's name changed."""
        meta = secret.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(CLUSTER_CREDENTIAL_LABEL, "")
        key = (meta.get("namespace", ""), meta.get("name", ""))
        copies = self.copies.setdefault(owner, {})
        if type_ == "DELETED":
            copies.pop(key, None)
            if not copies:
                self.copies.pop(owner, None)
            if owner in self.credentials and key[0] in self.credentials[owner].selected:
                self.scheduler.now(owner)  # deleted by someone: restore it
            return
        cached = copies.get(key)
        version = meta.get("resourceVersion")
        if cached is not None and (cached.get("metadata") or {}).get("resourceVersion") == version:
            return  # the echo of our own write
        copies[key] = slim(secret)
        if type_ is not None and owner in self.credentials:
            self.scheduler.now(owner)  # edited by someone: repair it

    def _selects(self, spec: ClusterCredentialSpec, namespace: str) -> bool:
        known = self.namespaces.get(namespace)
        return known is not None and not known[1] and spec.selects(namespace, known[0])

    def _index(self, state: ClusterState) -> None:
        for users in self._by_source.values():
            users.discard(state.name)
        if isinstance(state.spec, ClusterCredentialSpec):
            where = (state.spec.source_namespace, state.spec.credential.source_name)
            self._by_source.setdefault(where, set()).add(state.name)

    def _forget(self, name: str) -> None:
        state = self.credentials.pop(name, None)
        if state is None:
            return
        self._counts[state.state] -= 1
        for users in self._by_source.values():
            users.discard(name)
        self.scheduler.cancel(name)
        self.metrics.forget("", name, CLUSTER)
        self._publish_counts()
        log.info(
            "ClusterITCareCredential %s deleted",
            name,
            extra=fields("CredentialDeleted", resource=_resource(name)),
        )

    # -- start-up --------------------------------------------------------------------
    async def delete_orphans(self) -> int:
        """Delete copies whose ClusterITCareCredential no longer exists (its finalizer
        was removed while the operator was away). Call once the watches are synced."""
        uids = {state.uid for state in self.credentials.values()}
        deleted = 0
        for owner, copies in list(self.copies.items()):
            for (namespace, secret_name), secret in list(copies.items()):
                meta = secret.get("metadata") or {}
                uid = (meta.get("annotations") or {}).get(OWNER_UID_ANNOTATION)
                if uid and uid not in uids:
                    try:
                        await self.kube.delete_secret(namespace, secret_name, meta.get("uid"))
                        deleted += 1
                        log.info(
                            "deleted %s/%s: its ClusterITCareCredential %s is gone",
                            namespace,
                            secret_name,
                            owner,
                            extra=fields("CopyDeleted", resource=_resource(owner)),
                        )
                    except KubeError as exc:
                        log.warning(
                            "could not delete orphan %s/%s: %s",
                            namespace,
                            secret_name,
                            exc,
                            extra=fields("CopyDeleteFailed", resource=_resource(owner)),
                        )
        return deleted

    # -- reconcile -------------------------------------------------------------------
    async def _reconcile_key(self, key: Hashable) -> None:
        state = self.credentials.get(key)  # type: ignore[call-overload]
        if state is None:
            return
        with about(_resource(state.name)):
            try:
                await self.reconcile(state)
            except KubeError as exc:
                log.warning(
                    "ClusterITCareCredential %s: %s; retrying in 2s",
                    state.name,
                    exc,
                    extra=fields("KubeRequestFailed"),
                )
                self.scheduler.schedule(state.name, time.time() + 2)

    async def reconcile(self, state: ClusterState) -> None:
        if state.deleting:
            await self._finalize(state)
            return
        finalizers = list((state.body.get("metadata") or {}).get("finalizers") or [])
        if FINALIZER not in finalizers:
            try:
                patched = await self.kube.set_cluster_finalizers(
                    state.name,
                    [*finalizers, FINALIZER],
                    (state.body.get("metadata") or {}).get("resourceVersion"),
                )
                state.body = slim_credential(patched)
            except Conflict:  # changed meanwhile: the watch brings the new version
                self.scheduler.schedule(state.name, time.time() + 1)
                return
        now = self._clock()
        spec = state.spec
        if not isinstance(spec, ClusterCredentialSpec):
            state.force = False
            error = spec if isinstance(spec, InvalidSpec) else InvalidSpec("spec is missing")
            await self._failed(state, None, error, now, retry=False)
            return
        selected = frozenset(ns for ns in self.namespaces if self._selects(spec, ns))
        state.selected = selected
        await self._remove_unselected(state, spec)
        if not state.token_loaded:
            self._load_stored(state, spec)
        if spec.source_namespace not in self.settings.source_namespaces:
            state.force = False
            await self._failed(
                state,
                spec,
                SourceNamespaceNotAllowed(
                    f"clientSecretRef.namespace {spec.source_namespace} is not in the operator's "
                    "--allowed-source-namespace list"
                ),
                now,
                retry=False,
            )
            return
        cred = spec.credential
        if cred.suspend:
            state.force = False
            await self._fan_out(state, spec)
            wake = state.token.expires_at if state.token else None
            await self._settle(state, spec, now, wake=wake)
            return
        token = state.token
        valid = token is not None and token.is_valid(now)
        if token is not None and state.refresh_at is None:
            state.refresh_at = resumed_refresh_at(
                token, state.status_sent, now, cred.policy, self._rand()
            )
        due = state.refresh_at is not None and now >= state.refresh_at
        if not (state.force or not valid or due):
            await self._fan_out(state, spec)
            await self._settle(state, spec, now, wake=state.refresh_at)
            return
        if state.retry_at is not None and now < state.retry_at:
            await self._fan_out(state, spec)
            await self._settle(state, spec, now, wake=state.retry_at, next_attempt=state.retry_at)
            return
        earliest = forced_refresh_allowed_at(state.forced_at)
        if state.force and valid and not due and earliest is not None and now < earliest:
            await self._fan_out(state, spec)
            await self._settle(state, spec, now, wake=earliest, next_attempt=earliest)
            return
        if not self.settings.token_url_allowed(cred.token_url):
            state.force = False
            await self._failed(
                state,
                spec,
                TokenURLNotAllowed(
                    "tokenURL is outside the operator's --allowed-token-url prefixes"
                ),
                now,
                retry=False,
            )
            return
        await self._refresh(state, spec, now)

    def _load_stored(self, state: ClusterState, spec: ClusterCredentialSpec) -> None:
        """The token this credential's copies hold, if it is provably the one the
        operator wrote (restart safety). Any tenant of a selected namespace can edit its
        copy, so a copy proves nothing by itself: its token must match the digest and
        expiry in the status (see :func:`trusted_token`); forged copies are ignored and
        then overwritten."""
        state.token_loaded = True
        best: Token | None = None
        for secret in self.copies.get(state.name, {}).values():
            if not is_owned(secret, state.uid):
                continue
            token = trusted_token(secret, spec.credential.keys, state.status_sent)
            if token is not None and (best is None or token.expires_at > best.expires_at):
                best = token
        if best is not None and (state.token is None or best.expires_at > state.token.expires_at):
            state.token = best

    async def _refresh(
        self, state: ClusterState, spec: ClusterCredentialSpec, now: dt.datetime
    ) -> None:
        cred = spec.credential
        if state.force:
            state.forced_at = now
        where = (spec.source_namespace, cred.source_name)
        try:
            source = self._sources.get(where)
            if source is None and not self.settings.require_source_label:
                # As the namespaced kind: no read of a Secret the label does not allow.
                source = await self.kube.get_secret(*where)
        except KubeError as exc:
            await self._failed(
                state,
                spec,
                CredentialError(str(exc), reason=Reason.SOURCE_SECRET_NOT_FOUND),
                now,
                kind=FailureKind.TRANSIENT,
            )
            return
        state.source_fingerprint = source_fingerprint(source)
        started = time.monotonic()
        try:
            credentials = credentials_from_secret(
                source,
                name=f"{spec.source_namespace}/{cred.source_name}",
                client_id_key=cred.client_id_key,
                client_secret_key=cred.client_secret_key,
                require_label=self.settings.require_source_label,
            )
            endpoint = self.endpoints.get(cred.token_url, self.settings.ca_bundle)
            result = await endpoint.obtain(
                credentials, scope=cred.scope, grant=cred.grant, current=state.token
            )
        except TokenEndpointError as exc:
            self.metrics.observe_request(time.monotonic() - started, ok=False)
            await self._failed(state, spec, exc, self._clock(), retry_after=exc.retry_after)
            return
        except CredentialError as exc:
            await self._failed(state, spec, exc, now)
            return
        self.metrics.observe_request(time.monotonic() - started, ok=True)
        first = state.token is None
        recovered = state.failures > 0
        token = result.token
        if cred.grant is Grant.CLIENT_CREDENTIALS and token.refresh_token:
            token = dataclasses.replace(token, refresh_token=None, refresh_expires_at=None)
        state.token = token
        state.force, state.retry_at = False, None
        state.failures = 0
        state.last_refresh = token.received_at
        state.refresh_at = next_refresh_at(
            token.received_at, token.expires_at, self._clock(), cred.policy, self._rand()
        )
        await self._fan_out(state, spec)
        notice = margin_notice(token.expires_at - token.received_at, cred.policy)
        state.refreshed = Condition(
            "Refreshed",
            True,
            Reason.REFRESH_SUCCEEDED,
            f"token obtained with {result.grant}; next refresh at {format_time(state.refresh_at)}"
            + (f"; {notice}" if notice else ""),
        )
        self.metrics.refreshed("", state.name, str(result.grant), CLUSTER)
        log.info(
            "ClusterITCareCredential %s: token refreshed (%s), written to %d of %d namespaces, "
            "expires at %s, next refresh at %s",
            state.name,
            result.grant,
            state.synced,
            len(state.selected),
            format_time(token.expires_at),
            format_time(state.refresh_at),
            extra=fields("TokenRefreshed"),
        )
        if first:
            await self._event(
                state,
                "Normal",
                "TokenIssued",
                f"token written to Secret {cred.target_name} in {state.synced} namespaces, "
                f"expires at {format_time(token.expires_at)}",
            )
        elif recovered:
            await self._event(
                state,
                "Normal",
                "RefreshRecovered",
                f"token refreshed after failures; expires at {format_time(token.expires_at)}",
            )
        state.event_reason = None
        await self._settle(state, spec, self._clock(), wake=state.refresh_at)

    # -- the copies ------------------------------------------------------------------
    async def _fan_out(self, state: ClusterState, spec: ClusterCredentialSpec) -> None:
        """Write the current token to every selected namespace that lacks it."""
        token = state.token
        failed: dict[str, tuple[str, str]] = {}
        synced = 0
        if token is None or not token.is_valid(self._clock()):
            state.failed, state.synced = failed, 0
            return
        cred = spec.credential
        copies = self.copies.setdefault(state.name, {})
        pending: list[tuple[str, dict[str, Any]]] = []
        for namespace in state.selected:
            desired = desired_secret(
                cred, Owner(namespace, state.name, state.uid, CLUSTER_KIND), token
            )
            current = copies.get((namespace, cred.target_name))
            if (
                current is not None
                and is_owned(current, state.uid)
                and not needs_write(current, desired)
            ):
                synced += 1
            else:
                pending.append((namespace, desired))
        if pending:
            slots = asyncio.Semaphore(WRITE_CONCURRENCY)

            async def write(namespace: str, desired: dict[str, Any]) -> None:
                async with slots:
                    error = await self._write_copy(state, namespace, desired)
                if error is None:
                    nonlocal synced
                    synced += 1
                else:
                    failed[namespace] = error

            await asyncio.gather(*(write(ns, desired) for ns, desired in pending))
        state.failed, state.synced = failed, synced

    async def _write_copy(
        self, state: ClusterState, namespace: str, desired: dict[str, Any]
    ) -> tuple[str, str] | None:
        """Create or update one copy; ``(reason, message)`` when it cannot be done."""
        name = desired["metadata"]["name"]
        copies = self.copies.setdefault(state.name, {})
        target = copies.get((namespace, name))
        conflict = (
            str(Reason.TARGET_SECRET_CONFLICT),
            f"Secret {name} exists and is not owned by this ClusterITCareCredential",
        )
        try:
            for _attempt in range(3):
                if target is None:
                    try:
                        written = await self.kube.create_secret(namespace, desired)
                    except Conflict:
                        target = await self.kube.get_secret(namespace, name)
                        if target is not None and not is_owned(target, state.uid):
                            return conflict
                        continue
                elif not is_owned(target, state.uid):
                    return conflict
                elif not needs_write(target, desired):
                    return None
                else:
                    try:
                        written = await self.kube.replace_secret(
                            namespace, updated_secret(target, desired)
                        )
                    except NotFound:
                        target = None
                        continue
                    except Conflict:
                        target = await self.kube.get_secret(namespace, name)
                        if target is not None and not is_owned(target, state.uid):
                            return conflict
                        continue
                copies[(namespace, name)] = slim(written)
                return None
        except Invalid as exc:
            return str(Reason.INVALID_SPEC), str(refused_target(exc))
        except KubeError as exc:
            return str(Reason.TARGET_WRITE_FAILED), str(exc)
        return str(Reason.TARGET_WRITE_FAILED), f"Secret {name} kept changing under us"

    async def _remove_unselected(self, state: ClusterState, spec: ClusterCredentialSpec) -> None:
        """Delete our copies outside the selection (or under a former target name)."""
        target_name = spec.credential.target_name
        doomed: list[tuple[str, str, Mapping[str, Any]]] = []
        for (namespace, name), secret in list(self.copies.get(state.name, {}).items()):
            if namespace in state.selected and name == target_name:
                continue
            if not is_owned(secret, state.uid):
                continue
            known = self.namespaces.get(namespace)
            if known is None or known[1]:
                continue  # the namespace is gone or going: its Secrets go with it
            doomed.append((namespace, name, secret))
        await self._delete_copies(state, doomed)

    async def _delete_copies(
        self, state: ClusterState, doomed: Sequence[tuple[str, str, Mapping[str, Any]]]
    ) -> None:
        slots = asyncio.Semaphore(WRITE_CONCURRENCY)

        async def delete(namespace: str, name: str, secret: Mapping[str, Any]) -> None:
            async with slots:
                await self._delete_copy(state, namespace, name, secret)

        results = await asyncio.gather(*(delete(*d) for d in doomed), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # a KubeError: the reconcile is retried

    async def _delete_copy(
        self, state: ClusterState, namespace: str, name: str, secret: Mapping[str, Any]
    ) -> None:
        uid = (secret.get("metadata") or {}).get("uid")
        await self.kube.delete_secret(namespace, name, uid)
        self.copies.get(state.name, {}).pop((namespace, name), None)
        log.info(
            "ClusterITCareCredential %s: deleted its Secret %s/%s",
            state.name,
            namespace,
            name,
            extra=fields("CopyDeleted"),
        )

    async def _finalize(self, state: ClusterState) -> None:
        """The credential is being deleted: delete every copy, then let it go."""
        listed = await self.kube.list_secrets(f"{CLUSTER_CREDENTIAL_LABEL}={state.name}")
        await self._delete_copies(
            state,
            [
                (s["metadata"].get("namespace", ""), s["metadata"].get("name", ""), s)
                for s in listed
                if is_owned(s, state.uid)
            ],
        )
        meta = state.body.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER in finalizers:
            finalizers.remove(FINALIZER)
            try:
                await self.kube.set_cluster_finalizers(
                    state.name, finalizers, meta.get("resourceVersion")
                )
            except NotFound:
                pass
            except Conflict:
                self.scheduler.schedule(state.name, time.time() + 1)
                return
        log.info(
            "ClusterITCareCredential %s: %d copies deleted; finalizer removed",
            state.name,
            sum(1 for s in listed if is_owned(s, state.uid)),
            extra=fields("FinalizerRemoved"),
        )

    # -- outcome ---------------------------------------------------------------------
    async def _failed(
        self,
        state: ClusterState,
        spec: ClusterCredentialSpec | None,
        exc: CredentialError,
        now: dt.datetime,
        *,
        retry: bool = True,
        kind: FailureKind | None = None,
        retry_after: float | None = None,
    ) -> None:
        state.failures += 1
        state.last_failure = now
        reason = str(exc.reason)
        token = state.token
        valid = token is not None and token.is_valid(now)
        wake: dt.datetime | None = None
        policy = spec.credential.policy if spec else RefreshPolicy()
        if retry:
            delay = backoff_delay(
                state.failures,
                kind or exc.kind,
                now,
                token.expires_at if valid and token else None,
                policy,
                self._rand(),
                retry_after,
            )
            wake = state.retry_at = now + delay
            message = f"{exc}; next attempt at {format_time(wake)}"
        else:
            message = f"{exc}; fix the resource to retry"
            if valid and token is not None:
                wake = token.expires_at
        state.refreshed = Condition("Refreshed", False, reason, message)
        grant = str(spec.credential.grant) if spec else ""
        self.metrics.failed("", state.name, grant, reason, CLUSTER)
        log.warning(
            "ClusterITCareCredential %s: refresh failed: %s: %s",
            state.name,
            reason,
            message,
            extra=fields("RefreshFailed", reason),
        )
        if state.event_reason != reason:
            state.event_reason = reason
            await self._event(state, "Warning", reason, message)
        if spec is not None and valid:
            await self._fan_out(state, spec)  # a still-valid token still reaches new namespaces
        await self._settle(state, spec, now, wake=wake, next_attempt=wake if retry else None)

    async def _settle(
        self,
        state: ClusterState,
        spec: ClusterCredentialSpec | None,
        now: dt.datetime,
        *,
        wake: dt.datetime | None,
        next_attempt: dt.datetime | None = None,
    ) -> None:
        token = state.token
        suspended = bool(spec and spec.credential.suspend)
        if (
            token is not None
            and token.expires_at > now
            and (wake is None or token.expires_at < wake)
        ):
            wake = token.expires_at
        if any(reason != Reason.INVALID_SPEC for reason, _ in state.failed.values()):
            # A refused copy (422) waits for a spec change; other failures are retried.
            retry = now + dt.timedelta(seconds=NAMESPACE_RETRY)
            wake = retry if wake is None or retry < wake else wake
        next_refresh = None if suspended else (next_attempt or state.refresh_at)
        obs = Observation(
            generation=state.generation,
            suspended=suspended,
            token_expires_at=token.expires_at if token else None,
            token_fingerprint=digest(token.access_token) if token else None,
            refresh_token_expires_at=token.refresh_expires_at
            if token and token.refresh_token
            else None,
            refreshed=state.refreshed,
            last_refresh=state.last_refresh,
            next_refresh=next_refresh,
            last_failure=state.last_failure,
            consecutive_failures=state.failures,
        )
        ready = ready_condition(obs, now)
        if state.ready_reason == Reason.TOKEN_VALID and ready.reason == Reason.TOKEN_EXPIRED:
            await self._event(
                state,
                "Warning",
                "TokenExpired",
                "the token in the target Secrets has expired and no new one could be obtained",
            )
        state.ready_reason = ready.reason
        fanout = Fanout(len(state.selected), state.synced, state.failed)
        status = render_cluster_status(obs, fanout, state.status_sent, now)
        if status_changed(status, state.status_sent):
            try:
                await self.kube.patch_cluster_status(state.name, status)
                state.status_sent = status
            except KubeError as exc:
                log.warning(
                    "ClusterITCareCredential %s: status update failed: %s",
                    state.name,
                    exc,
                    extra=fields("StatusUpdateFailed"),
                )
                if wake is None or wake.timestamp() > time.time() + 5:
                    wake = self._clock() + dt.timedelta(seconds=5)
        self._set_state(
            state, "suspended" if suspended else "ready" if ready.status else "not_ready"
        )
        self.metrics.credential_state(
            "",
            state.name,
            ready=ready.status,
            expires_at=token.expires_at if token else None,
            next_refresh=next_refresh,
            scope=CLUSTER,
            lifetime=token.lifetime if token else None,
            suspended=suspended,
            failures=state.failures,
        )
        self.metrics.namespaces(state.name, len(state.selected), state.synced, len(state.failed))
        if wake is not None:
            self.scheduler.schedule(state.name, wake.timestamp())
        else:
            self.scheduler.cancel(state.name)

    def _set_state(self, state: ClusterState, value: str) -> None:
        if state.state != value and state.name in self.credentials:
            self._counts[state.state] -= 1
            self._counts[value] += 1
            self._publish_counts()
        state.state = value

    def _publish_counts(self) -> None:
        self.metrics.set_counts(
            self._counts["ready"], self._counts["not_ready"], self._counts["suspended"], CLUSTER
        )

    async def _event(self, state: ClusterState, type_: str, reason: str, message: str) -> None:
        # The API server accepts Events of cluster-scoped objects only in "default"
        # (like Node events); kubectl describe finds them there.
        await self.kube.create_event(state.involved, type_, reason, message, namespace="default")
