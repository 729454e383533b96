"""The credentials one operator instance knows, fed by watch events.

A watch event changes memory and wakes the credential in the :class:`Scheduler`;
it never calls an API itself (the reconcile does, in :mod:`reconciler`). A new
generation is parsed once; a source Secret event wakes exactly the credentials that
read it (an index, O(1) per event).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import math
import random
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypedDict, TypeVar, Unpack

from itcare_operator import model, source_secret
from itcare_operator.delivery import Delivery
from itcare_operator.kube import KubeClient
from itcare_operator.logs import Resource, fields
from itcare_operator.metrics import Metrics
from itcare_operator.model import REFRESH_ANNOTATION, CredentialState, Key
from itcare_operator.scheduler import Scheduler
from itcare_operator.settings import Settings
from itcare_operator.spec import InvalidSpec
from itcare_operator.token_endpoint import TokenEndpoints, utcnow

__all__ = ["CredentialRegistry", "Options"]

log = logging.getLogger(__name__)

D = TypeVar("D")


class Options(TypedDict, total=False):
    clock: Callable[[], dt.datetime]  # every time decision (tests inject a fake one)
    rand: Callable[[], float]  # the jitter


class CredentialRegistry(Generic[D]):
    """The credentials of one kind that this operator instance knows, and their wake-ups."""

    def __init__(
        self,
        settings: Settings,
        kube: KubeClient,
        endpoints: TokenEndpoints,
        metrics: Metrics,
        sources: dict[Key, Mapping[str, Any]] | None = None,
        **options: Unpack[Options],
    ) -> None:
        self.settings, self.kube, self.endpoints, self.metrics = settings, kube, endpoints, metrics
        self.delivery = self._adapter(settings, kube, metrics)
        # Source Secrets by (namespace, name), from their watch; shared by the kinds.
        self.sources: dict[Key, Mapping[str, Any]] = {} if sources is None else sources
        self._clock = options.get("clock", utcnow)
        self._rand = options.get("rand", random.random)
        self.credentials: dict[Key, CredentialState[D]] = {}
        self._by_source: dict[Key, set[Key]] = {}
        self._counts = {"ready": 0, "not_ready": 0, "suspended": 0}
        self._posting: set[asyncio.Task[None]] = set()  # Events being posted
        self.scheduler = Scheduler(
            self._reconcile_key,
            concurrency=self.concurrency,
            clock=lambda: self._clock().timestamp(),
            priority=self._urgency,
        )
        self.delivery.attach(self)

    concurrency = 32  # reconciles at once

    def _adapter(self, settings: Settings, kube: KubeClient, metrics: Metrics) -> Delivery[D]:
        raise NotImplementedError  # each kind's: where its tokens go

    def _urgency(self, key: Hashable) -> float:
        """Dispatch order when more are due than there are slots: the held token's
        expiry (earliest first); a credential without a token after them."""
        state = self.credentials.get(key)  # type: ignore[call-overload]
        token = state.token if state is not None else None
        return token.expires_at.timestamp() if token is not None else math.inf

    def now(self) -> dt.datetime:
        return self._clock()

    async def _reconcile_key(self, key: Hashable) -> None:
        raise NotImplementedError  # the reconciler's

    def wake(self, key: Key) -> None:
        self.scheduler.now(key)

    def later(self, key: Key, delay: dt.timedelta) -> None:
        self.scheduler.schedule(key, (self._clock() + delay).timestamp())

    def _label(self, key: Key) -> str:
        namespace, name = key
        return f"{namespace}/{name}" if namespace else f"{self.delivery.kind} {name}"

    # -- watch events --------------------------------------------------------------
    def credential_event(self, type_: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key: Key = (meta.get("namespace", ""), meta.get("name", ""))
        if type_ == "DELETED":
            self._forget(key)
            return
        request = (meta.get("annotations") or {}).get(REFRESH_ANNOTATION)
        state = self.credentials.get(key)
        if state is None or state.uid != meta.get("uid"):
            if state is not None:
                self._forget(key)
            state = CredentialState(*key, out=self.delivery.new(), uid=meta.get("uid", ""))
            self.credentials[key] = state
            self._counts[state.state] += 1
            state.refresh_request = request
            state.status_sent = dict(body.get("status") or {}) or None
            self._take(state, body)
            self.delivery.adopted(state)
            self.wake(key)
            return
        was_deleting = state.deleting
        if self._take(state, body):
            state.force = True  # the backoff stays; one forced attempt per interval passes it
            self.wake(key)
        if state.deleting and not was_deleting:
            self.wake(key)
        if request != state.refresh_request:
            state.refresh_request = request
            if request:  # should_refresh applies FORCED_REFRESH_INTERVAL
                state.force = True
                self.wake(key)

    def _take(self, state: CredentialState[D], body: Mapping[str, Any]) -> bool:
        """Keep ``body``; parse the spec when its generation changed (True then)."""
        state.body = model.slim_credential(body)  # no managedFields: memory at 10,000 credentials
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        if state.spec is not None and generation == state.generation:
            return False
        state.generation = generation
        try:
            spec = self.delivery.parse(state, body.get("spec"))
            # The delivery bound is the operator's setting, not a spec field.
            state.spec = dataclasses.replace(spec, volume_delivery=self.settings.volume_delivery)
            source = self.delivery.source_of(state, state.spec)
        except InvalidSpec as exc:
            state.spec, source = exc, None
        self._index(state, source)
        self.delivery.spec_changed(state)
        return True

    def forget_vanished(self, known: Mapping[Key, CredentialState[D]], listed: set[Key]) -> int:
        """Forget the credentials ``known`` before a listing began that the listing
        does not hold: deleted while the watch was away (a relist after 410 Gone
        reports no deletions). One re-created meanwhile is another state: kept."""
        gone = [k for k, st in known.items() if k not in listed and self.credentials.get(k) is st]
        for key in gone:
            self._forget(key)
        return len(gone)

    def source_secret_event(self, type_: str | None, secret: Mapping[str, Any]) -> None:
        """An API account Secret changed: refresh the credentials that read it, when
        what they read of it changed."""
        meta = secret.get("metadata") or {}
        where = (meta.get("namespace", ""), meta.get("name", ""))
        gone = type_ == "DELETED"
        for key in self._by_source.get(where, ()):
            state = self.credentials[key]
            keys = state.source_keys()
            if not gone and not source_secret.keeps(secret, keys):
                continue  # not kept for this credential: its reconcile reads it
            fingerprint = model.source_fingerprint(None if gone else secret, keys)
            if state.source_fingerprint is None:
                state.source_fingerprint = fingerprint  # first sight (start-up): no refresh
            elif state.source_fingerprint != fingerprint:
                log.info(
                    "source Secret of %s changed; refreshing",
                    self._label(key),
                    extra=fields(
                        "SourceSecretChanged", resource=Resource(self.delivery.kind, *key)
                    ),
                )
                state.force = True
                self.wake(key)

    def source_touched(self, where: Key) -> None:
        """A Secret some credential reads changed, seen by name only (no label to
        select API accounts by): wake its readers, whose reconcile reads it again."""
        for key in self._by_source.get(where, ()):
            state = self.credentials[key]
            state.force = True
            self.wake(key)

    def keys_read(self, where: Key) -> set[str]:
        """The keys the credentials reading Secret ``where`` take from it."""
        return {
            k for key in self._by_source.get(where, ()) for k in self.credentials[key].source_keys()
        }

    def _index(self, state: CredentialState[D], source: Key | None) -> None:
        """Record which source Secret this credential reads (O(1) per source event)."""
        if state.source is not None:
            users = self._by_source.get(state.source, set())
            users.discard(state.key)
            if not users:
                self._by_source.pop(state.source, None)
        state.source = source
        if source is not None:
            self._by_source.setdefault(source, set()).add(state.key)

    def _forget(self, key: Key) -> None:
        state = self.credentials.pop(key, None)
        if state is None:
            return
        self._counts[state.state] -= 1
        self._index(state, None)
        self.delivery.forgotten(state)
        self.scheduler.cancel(key)
        self.metrics.forget(*key, self.delivery.scope)
        self._publish_counts()
        log.info(
            "%s deleted",
            self._label(key),
            extra=fields("CredentialDeleted", resource=Resource(self.delivery.kind, *key)),
        )

    def _set_state(self, state: CredentialState[D], value: str) -> None:
        if state.state != value and state.key in self.credentials:
            self._counts[state.state] -= 1
            self._counts[value] += 1
            self._publish_counts()
        state.state = value

    def _publish_counts(self) -> None:
        counts = self._counts
        self.metrics.set_counts(
            counts["ready"], counts["not_ready"], counts["suspended"], self.delivery.scope
        )
