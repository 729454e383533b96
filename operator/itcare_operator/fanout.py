"""ClusterITCareCredential: the fan-out delivery adapter, and its controller.

A platform team keeps the API account in one namespace the operator allows
(``--allowed-source-namespace``); application namespaces get only the short-lived
token, as a copy in every selected namespace. A copy carries no ownerReference (a
namespaced object cannot be garbage-collected for a cluster-scoped owner we do not
reference): it is owned through the label ``itcare.cegedim.cloud/cluster-credential``
and the annotation ``itcare.cegedim.cloud/owner-uid``, and deleted by the operator
itself: when its namespace stops matching, and behind a finalizer when the
credential is deleted. Conflicts are per namespace and never block the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

from itcare_operator import cleanup
from itcare_operator.cleanup import FINALIZER, CopyKey
from itcare_operator.delivery import Adapter
from itcare_operator.errors import Reason
from itcare_operator.kube import KubeClient
from itcare_operator.kube_api import GROUP, VERSION, Conflict, Invalid, KubeError
from itcare_operator.metrics import CLUSTER, Metrics
from itcare_operator.model import (
    CredentialState,
    Failure,
    Key,
    slim_credential,
    slim_secret,
)
from itcare_operator.reconciler import Reconciler, refused_target
from itcare_operator.secret_write import TargetTaken, write_secret
from itcare_operator.settings import Settings
from itcare_operator.spec import ClusterCredentialSpec, CredentialSpec, parse_cluster_spec
from itcare_operator.status import Fanout, Observation, render_cluster_status
from itcare_operator.target_secret import (
    CLUSTER_CREDENTIAL_LABEL,
    CLUSTER_KIND,
    Owner,
    desired_secret,
    is_owned,
    needs_write,
    trusted_token,
)
from itcare_operator.token import Token

__all__ = ["FINALIZER", "ClusterController", "Copies", "FanoutDelivery"]

log = logging.getLogger(__name__)

NAMESPACE_RETRY = dt.timedelta(seconds=15)  # before a failed namespace is tried again
FINALIZER_RETRY = dt.timedelta(seconds=1)  # the credential changed under our patch
WRITE_CONCURRENCY = 16  # copies written at once by one credential


@dataclasses.dataclass(slots=True)
class Copies:
    """What one cluster credential's adapter remembers of its selection."""

    placement: ClusterCredentialSpec | None = None  # the parsed spec, with its selection
    selected: frozenset[str] = frozenset()
    failed: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    synced: int = 0
    # Namespaces listed by name: the instance (uid) each was when this generation of the
    # spec was first reconciled; only that instance gets a copy (see _pin).
    pins: dict[str, str] = dataclasses.field(default_factory=dict)
    pinned_generation: int | None = None
    missing: tuple[str, ...] = ()  # listed names without their pinned instance


class Namespace(NamedTuple):
    labels: Mapping[str, str]
    terminating: bool
    uid: str


class FanoutDelivery(Adapter[Copies]):
    """The token goes to a copy in every selected namespace."""

    kind = CLUSTER_KIND
    scope = CLUSTER
    # The API server accepts Events of cluster-scoped objects only in "default"
    # (like Node events); kubectl describe finds them there.
    event_namespace: str | None = "default"

    def __init__(self, settings: Settings, kube: KubeClient, metrics: Metrics) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = metrics
        self.namespaces: dict[str, Namespace] = {}
        # Copies by credential name, as last listed, watched or written.
        self.copies: dict[str, dict[CopyKey, Mapping[str, Any]]] = {}

    # -- the credential's spec and indexes ----------------------------------------
    def new(self) -> Copies:
        return Copies()

    def parse(self, state: CredentialState[Copies], raw: Any) -> CredentialSpec:
        state.out.placement = None
        state.out.placement = parse_cluster_spec(raw)
        return state.out.placement.credential

    def source_of(self, state: CredentialState[Copies], spec: CredentialSpec) -> Key:
        assert state.out.placement is not None
        return (state.out.placement.source_namespace, spec.source_name)

    # -- the Namespace and copy watches -----------------------------------------------
    def namespace_event(self, type_: str | None, namespace: Mapping[str, Any]) -> None:
        meta = namespace.get("metadata") or {}
        name = meta.get("name", "")
        if type_ == "DELETED":
            self.namespaces.pop(name, None)
        else:
            terminating = (namespace.get("status") or {}).get("phase") == "Terminating"
            self.namespaces[name] = Namespace(
                dict(meta.get("labels") or {}), terminating, str(meta.get("uid") or "")
            )
        # A listing (type None) too: kopf's initial listing comes after the start-up
        # one and the first reconciles, and reports what changed in between as listed.
        for state in self.registry.credentials.values():
            placement = state.out.placement
            if placement is not None and (
                (name in state.out.selected) != self._selects(placement, name, state.out.pins)
                or name in placement.namespaces
            ):
                self.registry.wake(state.key)

    def copy_event(self, type_: str | None, secret: Mapping[str, Any]) -> None:
        """A Secret labelled with a ClusterITCareCredential's name changed."""
        meta = secret.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(CLUSTER_CREDENTIAL_LABEL, "")
        where = (meta.get("namespace", ""), meta.get("name", ""))
        copies = self.copies.setdefault(owner, {})
        state = self.registry.credentials.get(("", owner))
        if type_ == "DELETED":
            copies.pop(where, None)
            if not copies:
                self.copies.pop(owner, None)
            if state is not None and where[0] in state.out.selected:
                self.registry.wake(state.key)  # deleted by someone: restore it
            return
        cached = copies.get(where)
        if (
            type_ is not None
            and cached is None
            and (state is None or not is_owned(secret, state.uid))
        ):
            # Anyone who can write a Secret can put our labels on it: a look-alike is
            # neither kept nor a reason to reconcile (only the start-up listing keeps
            # unowned copies, to judge orphans).
            if not copies:
                self.copies.pop(owner, None)
            return
        version = meta.get("resourceVersion")
        if cached is not None and (cached.get("metadata") or {}).get("resourceVersion") == version:
            return  # the echo of our own write
        copies[where] = slim_secret(secret)
        if state is not None and (type_ is not None or cached is not None):
            self.registry.wake(state.key)  # edited by someone (or while away): repair it

    def _selects(
        self, placement: ClusterCredentialSpec, namespace: str, pins: Mapping[str, str]
    ) -> bool:
        """Selected by labels, or listed by name and still the instance pinned: a
        namespace deleted and created again by whoever may create namespaces gets no
        copy until the credential is edited."""
        known = self.namespaces.get(namespace)
        if known is None or known.terminating:
            return False
        if placement.selector is not None and placement.selector.matches(known.labels):
            return True
        return namespace in placement.namespaces and pins.get(namespace) == known.uid

    def _pin(self, state: CredentialState[Copies], placement: ClusterCredentialSpec) -> None:
        """The instances of the namespaces listed by name, fixed once per generation of
        the spec (from the status after a restart): a name that does not exist then,
        or is created again later, is reported, not delivered to."""
        out = state.out
        if out.pinned_generation == state.generation:
            return
        sent = state.status_sent or {}
        stored = sent.get("pinnedNamespaces")
        if sent.get("observedGeneration") == state.generation and isinstance(stored, dict):
            out.pins = {
                str(n): str(u) for n, u in stored.items() if n in placement.namespaces and u
            }
        else:
            out.pins = {
                name: known.uid
                for name in placement.namespaces
                if (known := self.namespaces.get(name)) is not None
                and not known.terminating
                and known.uid
            }
        out.pinned_generation = state.generation

    async def delete_orphans(self) -> int:
        """Delete copies whose ClusterITCareCredential no longer exists (its finalizer
        was removed while the operator was away). Call once the watches are synced:
        never judge a copy orphaned from a partial listing."""
        uids = {state.uid for state in self.registry.credentials.values()}
        return await cleanup.delete_orphans(self.kube, self.copies, uids)

    # -- a reconcile -------------------------------------------------------------------
    async def intercept(self, state: CredentialState[Copies]) -> bool:
        if state.deleting:
            done = await cleanup.finalize(self.kube, state.name, state.uid, state.body, self.copies)
            if not done:  # the credential changed under our patch: look again
                self.registry.later(state.key, FINALIZER_RETRY)
            return True
        meta = state.body.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER in finalizers:
            return False
        try:
            patched = await self.kube.set_cluster_finalizers(
                state.name, [*finalizers, FINALIZER], meta.get("resourceVersion")
            )
        except Conflict:  # changed meanwhile: the watch brings the new version
            self.registry.later(state.key, FINALIZER_RETRY)
            return True
        state.body = slim_credential(patched)
        return False

    async def prepare(self, state: CredentialState[Copies], spec: CredentialSpec) -> Failure | None:
        placement = state.out.placement
        assert placement is not None  # parsed with the spec
        self._pin(state, placement)
        pins = state.out.pins
        state.out.selected = frozenset(
            ns for ns in self.namespaces if self._selects(placement, ns, pins)
        )
        state.out.missing = tuple(
            sorted(
                name
                for name in placement.namespaces
                if name not in state.out.selected
                and not (
                    placement.selector
                    and name in self.namespaces
                    and placement.selector.matches(self.namespaces[name].labels)
                )
            )
        )
        await self._remove_unselected(state, spec)
        if placement.source_namespace in self.settings.source_namespaces:
            return None
        why = f"clientSecretRef.namespace {placement.source_namespace} is not in the operator's"
        return Failure.of(
            Reason.SOURCE_NAMESPACE_NOT_ALLOWED,
            f"{why} --allowed-source-namespace list",
            terminal=True,
        )

    def load_stored(self, state: CredentialState[Copies], spec: CredentialSpec) -> None:
        """The token this credential's copies hold, if it is provably the one the
        operator wrote (restart safety). Any tenant of a selected namespace can edit its
        copy, so a copy proves nothing by itself: its token must match the digest and
        expiry in the status (see :func:`trusted_token`); forged copies are ignored and
        then overwritten."""
        best: Token | None = None
        for secret in self.copies.get(state.name, {}).values():
            if not is_owned(secret, state.uid):
                continue
            token = trusted_token(secret, spec.keys, state.status_sent)
            if token is not None and (best is None or token.expires_at > best.expires_at):
                best = token
        if best is not None and (state.token is None or best.expires_at > state.token.expires_at):
            state.token = best

    async def deliver(self, state: CredentialState[Copies], spec: CredentialSpec) -> None:
        """Write the current token to every selected namespace that lacks it."""
        token = state.valid_token(self.registry.now())
        out = state.out
        out.failed, out.synced = {}, 0
        if token is None:
            return
        copies = self.copies.setdefault(state.name, {})
        pending: list[tuple[str, dict[str, Any]]] = []
        for namespace in out.selected:
            owner = Owner(namespace, state.name, state.uid, CLUSTER_KIND)
            desired = desired_secret(spec, owner, token)
            current = copies.get((namespace, spec.target_name))
            if (
                current is not None
                and is_owned(current, state.uid)
                and not needs_write(current, desired)
            ):
                out.synced += 1
            else:
                pending.append((namespace, desired))
        slots = asyncio.Semaphore(WRITE_CONCURRENCY)

        async def write(namespace: str, desired: dict[str, Any]) -> None:
            async with slots:
                error = await self._write_copy(state, namespace, desired)
            if error is None:
                out.synced += 1
            else:
                out.failed[namespace] = error

        await asyncio.gather(*(write(ns, desired) for ns, desired in pending))

    async def _write_copy(
        self, state: CredentialState[Copies], namespace: str, desired: dict[str, Any]
    ) -> tuple[str, str] | None:
        """Create or update one copy; ``(reason, message)`` when it cannot be done."""
        name = desired["metadata"]["name"]
        copies = self.copies.setdefault(state.name, {})
        try:
            written = await write_secret(
                self.kube, namespace, desired, copies.get((namespace, name)), state.uid
            )
        except TargetTaken:
            return (
                str(Reason.TARGET_SECRET_CONFLICT),
                f"Secret {name} exists and is not owned by this ClusterITCareCredential",
            )
        except Invalid as exc:
            return str(Reason.INVALID_SPEC), str(refused_target(exc))
        except KubeError as exc:
            return str(Reason.TARGET_WRITE_FAILED), str(exc)
        copies[(namespace, name)] = slim_secret(written)
        return None

    async def _remove_unselected(
        self, state: CredentialState[Copies], spec: CredentialSpec
    ) -> None:
        """Delete our copies outside the selection (or under a former target name)."""
        doomed: list[tuple[str, str, Mapping[str, Any]]] = []
        for (namespace, name), secret in list(self.copies.get(state.name, {}).items()):
            if namespace in state.out.selected and name == spec.target_name:
                continue
            if not is_owned(secret, state.uid):
                continue
            known = self.namespaces.get(namespace)
            if known is None or known.terminating:
                continue  # the namespace is gone or going: its Secrets go with it
            doomed.append((namespace, name, secret))
        await cleanup.delete_copies(self.kube, state.name, doomed, self.copies)

    def where(self, state: CredentialState[Copies], spec: CredentialSpec) -> str:
        out = state.out
        return f"Secret {spec.target_name} in {out.synced} of {len(out.selected)} namespaces"

    def retry_at(self, state: CredentialState[Copies], now: dt.datetime) -> dt.datetime | None:
        # A refused copy (422) waits for a spec change; other failures are retried.
        failed = state.out.failed.values()
        if any(reason != Reason.INVALID_SPEC for reason, _ in failed):
            return now + NAMESPACE_RETRY
        return None

    # -- the outcome ---------------------------------------------------------------
    def render_status(
        self, state: CredentialState[Copies], obs: Observation, now: dt.datetime
    ) -> dict[str, Any]:
        out = state.out
        fanout = Fanout(len(out.selected), out.synced, out.failed, out.missing, out.pins)
        return render_cluster_status(obs, fanout, state.status_sent, now)

    async def patch_status(self, state: CredentialState[Copies], status: Mapping[str, Any]) -> None:
        await self.kube.patch_cluster_status(state.name, status)

    def published(self, state: CredentialState[Copies]) -> None:
        out = state.out
        self.metrics.namespaces(state.name, len(out.selected), out.synced, len(out.failed))

    def involved(self, state: CredentialState[Copies]) -> dict[str, str]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": CLUSTER_KIND,
            "name": state.name,
            "uid": state.uid,
        }


class ClusterController(Reconciler[Copies]):
    """All ClusterITCareCredentials of this operator instance. Give it the namespaced
    controller's ``sources``: one source Secret watch serves both kinds."""

    concurrency = 8  # each reconcile writes up to 16 copies at once

    def _adapter(self, settings: Settings, kube: KubeClient, metrics: Metrics) -> FanoutDelivery:
        self.copies = FanoutDelivery(settings, kube, metrics)
        return self.copies

    def namespace_event(self, type_: str | None, namespace: Mapping[str, Any]) -> None:
        self.copies.namespace_event(type_, namespace)

    def copy_event(self, type_: str | None, secret: Mapping[str, Any]) -> None:
        self.copies.copy_event(type_, secret)

    async def delete_orphans(self) -> int:
        return await self.copies.delete_orphans()
