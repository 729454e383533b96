"""ITCareCredential: the delivery adapter for one target Secret, and its controller.

The target Secret is in the credential's namespace and owned by it (an
ownerReference, or the owner-uid annotation when ``deletionPolicy: Retain``). The
managed-Secret watch tells us of edits (drift: repaired with the same token) and, at
start-up, of the tokens already stored (restart safety, without a GET per credential).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from itcare_operator.delivery import Adapter
from itcare_operator.errors import Reason
from itcare_operator.kube import KubeClient
from itcare_operator.metrics import NAMESPACED, Metrics
from itcare_operator.model import (
    CONFLICT_RETRY,
    CredentialState,
    Failure,
    Key,
    slim_secret,
)
from itcare_operator.reconciler import Reconciler
from itcare_operator.secret_write import TargetTaken, write_secret
from itcare_operator.settings import Settings
from itcare_operator.spec import CredentialSpec, parse_spec
from itcare_operator.status import Observation, render_status
from itcare_operator.target_secret import (
    API_VERSION,
    CREDENTIAL_LABEL,
    Owner,
    desired_secret,
    is_owned,
    trusted_token,
)

__all__ = ["KIND", "Controller", "SecretDelivery", "Target"]

KIND = "ITCareCredential"


@dataclasses.dataclass(slots=True)
class Target:
    """What one credential's adapter remembers of its target Secret."""

    indexed: Key | None = None  # (namespace, name) in the target index
    current: Mapping[str, Any] | None = None  # as last read or written
    reusable: bool = False  # ``current`` is ours and unchanged since: no GET needed
    written_version: str | None = None  # resourceVersion of our last write (echo filter)


class SecretDelivery(Adapter[Target]):
    """The token goes to one Secret in the credential's namespace."""

    kind = KIND
    scope = NAMESPACED
    event_namespace: str | None = None

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        # (namespace, target name) -> credentials naming it: a second credential on one
        # target must not take the index from the owner (its edits would stop waking it).
        self._by_target: dict[Key, set[Key]] = {}
        # Managed Secrets listed at start-up before their credential was seen.
        self._listed: dict[Key, Mapping[str, Any]] = {}

    # -- the credential's spec and indexes ----------------------------------------
    def new(self) -> Target:
        return Target()

    def parse(self, state: CredentialState[Target], raw: Any) -> CredentialSpec:
        return parse_spec(raw)

    def source_of(self, state: CredentialState[Target], spec: CredentialSpec) -> Key:
        return (state.namespace, spec.source_name)

    def spec_changed(self, state: CredentialState[Target]) -> None:
        out = state.out
        out.reusable = False  # the target name or metadata may have changed
        self._unindex(state)
        # From the raw spec: an invalid spec still names the Secret it owned.
        name = ((state.body.get("spec") or {}).get("targetSecret") or {}).get("name")
        if isinstance(name, str):
            out.indexed = (state.namespace, name)
            self._by_target.setdefault(out.indexed, set()).add(state.key)

    def _unindex(self, state: CredentialState[Target]) -> None:
        where = state.out.indexed
        if where is not None:
            users = self._by_target.get(where, set())
            users.discard(state.key)
            if not users:
                self._by_target.pop(where, None)
        state.out.indexed = None

    def adopted(self, state: CredentialState[Target]) -> None:
        listed = self._listed.pop(state.out.indexed, None) if state.out.indexed else None
        if listed is not None:  # start-up: the stored token, without an API call
            self._load(state, listed)

    def forgotten(self, state: CredentialState[Target]) -> None:
        self._unindex(state)

    # -- the managed-Secret watch ------------------------------------------------------
    def target_event(self, type_: str | None, secret: Mapping[str, Any]) -> None:
        meta = secret.get("metadata") or {}
        where = (meta.get("namespace", ""), meta.get("name", ""))
        credentials = self.registry.credentials
        keys = self._by_target.get(where) or set()
        if len(keys) > 1:  # several name it: its owner, if any, is the one to wake
            states = [credentials[k] for k in keys if k in credentials]
            owners = [st for st in states if is_owned(secret, st.uid)]
            for named in owners if owners and type_ != "DELETED" else states:
                self._changed(named, type_, secret)
            return
        key = next(iter(keys), None)
        if key is None:
            owner = (meta.get("labels") or {}).get(CREDENTIAL_LABEL)
            key = (where[0], owner) if owner else None
        state = credentials.get(key) if key else None
        if state is not None:
            self._changed(state, type_, secret)
        elif type_ == "DELETED":
            self._listed.pop(where, None)
        elif type_ is None:  # listed before its credential: keep it for a moment
            self._listed[where] = slim_secret(secret)

    def _changed(
        self, state: CredentialState[Target], type_: str | None, secret: Mapping[str, Any]
    ) -> None:
        if type_ is None and not state.token_loaded:
            self._load(state, secret)  # initial listing: the stored token, no API call
            return
        version = (secret.get("metadata") or {}).get("resourceVersion")
        if type_ != "DELETED" and version == state.out.written_version:
            return  # the echo of our own write
        # Changed by someone else (a relist reports changes missed meanwhile as listed):
        # read it again.
        state.out.reusable = False
        self.registry.wake(state.key)

    def _load(self, state: CredentialState[Target], secret: Mapping[str, Any] | None) -> None:
        state.token_loaded = True
        spec = state.spec
        if (
            secret is None
            or not isinstance(spec, CredentialSpec)
            or not is_owned(secret, state.uid)
        ):
            return
        token = trusted_token(secret, spec.keys, state.status_sent)
        if token is not None and (state.token is None or token.expires_at > state.token.expires_at):
            state.token = token
            state.out.written_version = (secret.get("metadata") or {}).get("resourceVersion")
            state.out.current, state.out.reusable = slim_secret(secret), True

    # -- a reconcile -------------------------------------------------------------------
    async def prepare(self, state: CredentialState[Target], spec: CredentialSpec) -> Failure | None:
        out = state.out
        current = out.current
        if not (out.reusable and current and current["metadata"].get("name") == spec.target_name):
            current = await self.kube.get_secret(state.namespace, spec.target_name)
        out.current, out.reusable = current, False
        if current is not None and not is_owned(current, state.uid):
            return Failure.of(
                Reason.TARGET_SECRET_CONFLICT,
                f"Secret {spec.target_name} exists and is not owned by this ITCareCredential; "
                "delete it or choose another targetSecret.name",
                policy=CONFLICT_RETRY,
            )
        return None

    def load_stored(self, state: CredentialState[Target], spec: CredentialSpec) -> None:
        self._load(state, state.out.current)

    async def deliver(self, state: CredentialState[Target], spec: CredentialSpec) -> None:
        token = state.valid_token(self.registry.now())
        out = state.out
        if token is None or (out.current is not None and not is_owned(out.current, state.uid)):
            return  # nothing to deliver, or not ours to write (prepare said so)
        desired = desired_secret(spec, Owner(state.namespace, state.name, state.uid), token)
        try:
            written = await write_secret(
                self.kube, state.namespace, desired, out.current, state.uid
            )
        except TargetTaken as exc:
            out.current = exc.current
            raise
        out.current, out.reusable = slim_secret(written), True
        out.written_version = (written.get("metadata") or {}).get("resourceVersion")

    def where(self, state: CredentialState[Target], spec: CredentialSpec) -> str:
        return f"Secret {spec.target_name}"

    # -- the outcome ---------------------------------------------------------------
    def render_status(
        self, state: CredentialState[Target], obs: Observation, now: dt.datetime
    ) -> dict[str, Any]:
        return render_status(obs, state.status_sent, now)

    async def patch_status(self, state: CredentialState[Target], status: Mapping[str, Any]) -> None:
        await self.kube.patch_status(state.namespace, state.name, status)

    def involved(self, state: CredentialState[Target]) -> dict[str, str]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "namespace": state.namespace,
            "name": state.name,
            "uid": state.uid,
        }


class Controller(Reconciler[Target]):
    """All ITCareCredentials of this operator instance."""

    def _adapter(self, settings: Settings, kube: KubeClient, metrics: Metrics) -> SecretDelivery:
        self.targets = SecretDelivery(kube)
        return self.targets

    def target_secret_event(self, type_: str | None, secret: Mapping[str, Any]) -> None:
        self.targets.target_event(type_, secret)
