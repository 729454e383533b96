"""The delivery port: where a credential's token goes, and what that takes.

The reconciler (:mod:`reconciler`) decides when a token is obtained and reports the
outcome; an adapter of this port knows the destination: one target Secret
(:mod:`namespaced`) or a copy in every selected namespace (:mod:`fanout`). The two
kinds differ only in their adapter and in how their spec is parsed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from itcare_operator.model import CredentialState, Failure, Key
from itcare_operator.spec import CredentialSpec
from itcare_operator.status import Observation

__all__ = ["Delivery", "Registry"]

D = TypeVar("D")


class Registry(Protocol[D]):
    """What an adapter may use of the reconciler: look a credential up, wake it
    (now or later)."""

    credentials: dict[Key, CredentialState[D]]

    def wake(self, key: Key) -> None: ...

    def later(self, key: Key, delay: dt.timedelta) -> None: ...


class Delivery(Protocol[D]):
    kind: str  # the resource kind, in logs and events
    scope: str  # the ``scope`` label of the metrics
    event_namespace: str | None  # where Events of a cluster-scoped kind go

    # -- the credential's spec and indexes ----------------------------------------
    def new(self) -> D:
        """The adapter's record for a credential seen for the first time."""

    def parse(self, state: CredentialState[D], raw: Any) -> CredentialSpec:
        """The token options of ``raw`` (raises :class:`spec.InvalidSpec`); keeps the
        kind's own parts (e.g. the namespace selection) in ``state.out``."""

    def source_of(self, state: CredentialState[D], spec: CredentialSpec) -> Key:
        """The (namespace, name) of the Secret holding the API account."""

    def spec_changed(self, state: CredentialState[D]) -> None:
        """A new generation: forget what depended on the old spec."""

    def adopted(self, state: CredentialState[D]) -> None:
        """First sight of a credential: take what the initial listings knew of it."""

    def forgotten(self, state: CredentialState[D]) -> None:
        """The credential is gone from the operator's memory."""

    # -- a reconcile -------------------------------------------------------------------
    async def intercept(self, state: CredentialState[D]) -> bool:
        """Work that replaces the reconcile (deletion); True when it did."""

    async def prepare(self, state: CredentialState[D], spec: CredentialSpec) -> Failure | None:
        """Look at the destination before deciding; a failure stops the reconcile."""

    def load_stored(self, state: CredentialState[D], spec: CredentialSpec) -> None:
        """Set ``state.token`` to a stored token the operator provably wrote."""

    async def deliver(self, state: CredentialState[D], spec: CredentialSpec) -> None:
        """Make the destination hold ``state.token`` if it is still valid."""

    def where(self, state: CredentialState[D], spec: CredentialSpec) -> str:
        """Where the token went, for messages: no secret, no tenant-written text."""

    def retry_at(self, state: CredentialState[D], now: dt.datetime) -> dt.datetime | None:
        """An earlier wake-up the destination needs (a part that failed), if any."""

    # -- the outcome ---------------------------------------------------------------
    def render_status(
        self, state: CredentialState[D], obs: Observation, now: dt.datetime
    ) -> dict[str, Any]: ...

    async def patch_status(self, state: CredentialState[D], status: Mapping[str, Any]) -> None: ...

    def published(self, state: CredentialState[D]) -> None:
        """Publish the destination's own metrics."""

    def involved(self, state: CredentialState[D]) -> dict[str, str]:
        """The ``involvedObject`` of an Event about the credential."""
