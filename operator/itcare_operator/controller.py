"""The reconciler: from an ITCareCredential to a fresh token in its target Secret.

Inputs are watch events (credentials, source Secrets, target Secrets); the output of
one reconcile is a target Secret write (only when something changed), a status
patch (only when the status changed), events on transitions, metrics, and the next
wake-up in the :class:`Scheduler`.

Where the refresh time is decided: :mod:`refresh_policy`. Where the token is fetched:
:mod:`token_endpoint`. Where Kubernetes is called: :mod:`kube`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import random
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from itcare_operator.errors import (
    CredentialError,
    FailureKind,
    Reason,
    TokenEndpointError,
)
from itcare_operator.kube import Conflict, Invalid, KubeClient, KubeError, NotFound
from itcare_operator.logs import Resource, about, fields
from itcare_operator.metrics import Metrics
from itcare_operator.refresh_policy import (
    RefreshPolicy,
    backoff_delay,
    margin_notice,
    next_refresh_at,
)
from itcare_operator.scheduler import Scheduler
from itcare_operator.settings import Settings
from itcare_operator.source_secret import SOURCE_LABEL, credentials_from_secret
from itcare_operator.spec import CredentialSpec, InvalidSpec, parse_spec
from itcare_operator.status import (
    Condition,
    Observation,
    ready_condition,
    render_status,
    status_changed,
)
from itcare_operator.target_secret import (
    CREDENTIAL_LABEL,
    Owner,
    desired_secret,
    is_owned,
    needs_write,
    trusted_token,
    updated_secret,
)
from itcare_operator.token import Token, digest, format_time, parse_time
from itcare_operator.token_endpoint import Grant, TokenEndpoints, utcnow

__all__ = [
    "REFRESH_ANNOTATION",
    "Controller",
    "Key",
    "resumed_refresh_at",
    "slim",
    "slim_credential",
    "source_fingerprint",
]

log = logging.getLogger(__name__)

REFRESH_ANNOTATION = "itcare.cegedim.cloud/refresh-requested-at"
# Seconds between two forced refreshes of one credential (annotation, spec or source
# change): edits cannot spend the token endpoint's shared budget.
FORCED_REFRESH_INTERVAL = dt.timedelta(seconds=10)
CONFLICT_RETRY = RefreshPolicy(transient_base=15.0, transient_cap=300.0)

Key = tuple[str, str]  # (namespace, name)
KIND = "ITCareCredential"


class TargetConflict(CredentialError):
    reason = Reason.TARGET_SECRET_CONFLICT


class TokenURLNotAllowed(CredentialError):
    reason = Reason.TOKEN_URL_NOT_ALLOWED


@dataclasses.dataclass(slots=True)  # 10,000 of them: no per-instance __dict__
class CredentialState:
    """What the operator knows about one credential between reconciles."""

    namespace: str
    name: str
    uid: str = ""
    generation: int = 0
    body: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    token: Token | None = None
    token_loaded: bool = False  # the target Secret was read for a stored token
    refresh_at: dt.datetime | None = None
    force: bool = False  # a new token is wanted (spec, source, annotation) until one is had
    retry_at: dt.datetime | None = None  # after a failure: no attempt before this
    forced_at: dt.datetime | None = None  # when the last forced refresh was sent
    refresh_request: str | None = None  # last seen value of the annotation
    source_fingerprint: str | None = None  # of the source Secret content used last
    written_version: str | None = None  # resourceVersion of our last target write
    target_cache: dict[str, Any] | None = None  # the target as we last wrote or read it
    indexed: tuple[Key | None, Key | None] = (None, None)  # (source, target) in the indexes
    failures: int = 0
    last_failure: dt.datetime | None = None
    last_refresh: dt.datetime | None = None
    refreshed: Condition | None = None
    status_sent: dict[str, Any] | None = None
    event_reason: str | None = None  # reason of the last failure event (aggregation)
    ready_reason: str | None = None
    state: str = "not_ready"

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def involved(self) -> dict[str, str]:
        return {
            "apiVersion": "itcare.cegedim.cloud/v1alpha1",
            "kind": "ITCareCredential",
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
        }


def source_fingerprint(secret: Mapping[str, Any] | None) -> str:
    """A digest of what matters in a source Secret (never logged, never stored)."""
    if secret is None:
        return "absent"
    meta = secret.get("metadata") or {}
    material = repr(
        (
            meta.get("uid"),
            (meta.get("labels") or {}).get(SOURCE_LABEL),
            sorted((secret.get("data") or {}).items()),
        )
    )
    return hashlib.sha256(material.encode()).hexdigest()


def slim(secret: Mapping[str, Any]) -> dict[str, Any]:
    """An object (Secret, credential) without ``managedFields`` (large, never needed)."""
    meta = {k: v for k, v in (secret.get("metadata") or {}).items() if k != "managedFields"}
    return {**secret, "metadata": meta}


def slim_credential(body: Mapping[str, Any]) -> dict[str, Any]:
    """A credential as kept in memory: without ``managedFields`` and ``status`` (the
    status we last wrote is kept apart, as ``status_sent``)."""
    return {k: v for k, v in slim(body).items() if k != "status"}


def resumed_refresh_at(
    token: Token,
    status: Mapping[str, Any] | None,
    now: dt.datetime,
    policy: RefreshPolicy,
    rand: float,
) -> dt.datetime:
    """The refresh time of a token found at start-up.

    The status' ``nextRefreshTime`` is kept when it belongs to this token and is not
    later than the policy allows: a restart then changes no status (one patch per
    credential saved) and keeps the jitter that spread the credentials out.
    """
    fresh = next_refresh_at(token.received_at, token.expires_at, now, policy, rand)
    if not status or status.get("tokenExpiresAt") != format_time(token.expires_at):
        return fresh
    try:
        announced = parse_time(str(status.get("nextRefreshTime") or ""))
    except ValueError:
        return fresh
    latest = next_refresh_at(token.received_at, token.expires_at, now, policy, 0.0)
    return max(announced, now) if announced <= latest else fresh


class Controller:
    """All credentials of this operator instance."""

    def __init__(
        self,
        settings: Settings,
        kube: KubeClient,
        endpoints: TokenEndpoints,
        metrics: Metrics,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        rand: Callable[[], float] = random.random,
        concurrency: int = 32,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.endpoints = endpoints
        self.metrics = metrics
        self._clock = clock
        self._rand = rand
        self.credentials: dict[Key, CredentialState] = {}
        self._by_source: dict[Key, set[Key]] = {}  # (ns, source name) -> credentials
        # (ns, target name) -> credentials naming it: a second credential on one target
        # must not take the index from the owner (its edits would stop waking the owner).
        self._by_target: dict[Key, set[Key]] = {}
        self.sources: dict[Key, dict[str, Any]] = {}  # source Secrets, from their watch
        # Managed Secrets listed at start-up before their credential was seen.
        self._listed_targets: dict[Key, dict[str, Any]] = {}
        self._counts = {"ready": 0, "not_ready": 0, "suspended": 0}
        self.scheduler = Scheduler(
            self._reconcile_key, concurrency=concurrency, clock=lambda: self._clock().timestamp()
        )

    # -- watch events --------------------------------------------------------------
    def _parse(self, spec: Any) -> CredentialSpec:
        """The spec, with the operator's delivery bound (a setting, not a spec field)."""
        return dataclasses.replace(
            parse_spec(spec), volume_delivery=self.settings.volume_delivery
        )

    def credential_event(self, type_: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key: Key = (meta.get("namespace", ""), meta.get("name", ""))
        if type_ == "DELETED":
            self._forget(key)
            return
        state = self.credentials.get(key)
        if state is None or state.uid != meta.get("uid"):
            if state is not None:
                self._forget(key)
            state = self.credentials[key] = CredentialState(*key, uid=meta.get("uid", ""))
            self._counts[state.state] += 1
            state.refresh_request = (meta.get("annotations") or {}).get(REFRESH_ANNOTATION)
            state.body = slim_credential(body)  # no managedFields: memory at 10,000 credentials
            state.generation = int(meta.get("generation") or 0)
            state.status_sent = dict(body.get("status") or {}) or None
            self._index(state)
            listed = self._listed_targets.pop(state.indexed[1], None) if state.indexed[1] else None
            if listed is not None:  # start-up: the stored token, without an API call
                self._load_stored(state, listed)
            self.scheduler.now(key)
            return
        state.body = slim_credential(body)
        generation = int(meta.get("generation") or 0)
        request = (meta.get("annotations") or {}).get(REFRESH_ANNOTATION)
        if generation != state.generation:
            state.generation = generation
            state.force, state.retry_at = True, None
            state.target_cache = None  # the target name or metadata may have changed
            self._index(state)
            self.scheduler.now(key)
        if request != state.refresh_request:
            state.refresh_request = request
            if request:  # the reconcile applies FORCED_REFRESH_INTERVAL
                state.force, state.retry_at = True, None
                self.scheduler.now(key)

    def credentials_listed(self, namespace: str | None, items: list[dict[str, Any]]) -> None:
        """After a (re)list of ``namespace`` (None: all): forget credentials deleted
        while the watch was down (a relist reports no DELETED events)."""
        present = {
            (
                (i.get("metadata") or {}).get("namespace", ""),
                (i.get("metadata") or {}).get("name", ""),
            )
            for i in items
        }
        for key in [k for k in self.credentials if namespace in (None, k[0])]:
            if key not in present:
                self._forget(key)

    def source_secret_event(self, type_: str | None, secret: Mapping[str, Any]) -> None:
        meta = secret.get("metadata") or {}
        where = (meta.get("namespace", ""), meta.get("name", ""))
        if type_ == "DELETED":
            self.sources.pop(where, None)
        else:
            self.sources[where] = slim(secret)
        users = self._by_source.get(where, ())
        fingerprint = source_fingerprint(None if type_ == "DELETED" else secret)
        for key in users:
            state = self.credentials.get(key)
            if state is None:
                continue
            if state.source_fingerprint is None:
                state.source_fingerprint = fingerprint  # first sight (start-up): no refresh
            elif state.source_fingerprint != fingerprint:
                log.info(
                    "source Secret of %s/%s changed; refreshing",
                    *key,
                    extra=fields("SourceSecretChanged", resource=Resource(KIND, *key)),
                )
                state.force, state.retry_at = True, None
                self.scheduler.now(key)

    def target_secret_event(self, type_: str | None, secret: Mapping[str, Any]) -> None:
        meta = secret.get("metadata") or {}
        keys = self._by_target.get((meta.get("namespace", ""), meta.get("name", ""))) or set()
        if len(keys) > 1:  # several name it: its owner, if any, is the one to wake
            states = [self.credentials[k] for k in keys if k in self.credentials]
            owners = [st for st in states if is_owned(secret, st.uid)]
            for named in owners if owners and type_ != "DELETED" else states:
                self._target_changed(named, type_, secret)
            return
        key = next(iter(keys), None)
        if key is None:
            owner = (meta.get("labels") or {}).get(CREDENTIAL_LABEL)
            key = (meta.get("namespace", ""), owner) if owner else None
        state = self.credentials.get(key) if key else None
        if state is None:
            if type_ == "DELETED":
                self._listed_targets.pop((meta.get("namespace", ""), meta.get("name", "")), None)
            elif type_ is None:  # listed before its credential: keep it for a moment
                self._listed_targets[(meta.get("namespace", ""), meta.get("name", ""))] = slim(
                    secret
                )
            return
        self._target_changed(state, type_, secret)

    def _target_changed(
        self, state: CredentialState, type_: str | None, secret: Mapping[str, Any]
    ) -> None:
        meta = secret.get("metadata") or {}
        if type_ is None and not state.token_loaded:
            # Initial listing: remember the stored token without an API call.
            self._load_stored(state, secret)
            return
        if type_ != "DELETED" and meta.get("resourceVersion") == state.written_version:
            return  # the echo of our own write
        if type_ is not None:
            state.target_cache = None  # changed by someone else: read it again
            self.scheduler.now(state.key)

    def _index(self, state: CredentialState) -> None:
        """Record which source and target Secret names this credential uses (O(1))."""
        self._unindex(state)
        spec = state.body.get("spec") or {}
        source = (spec.get("clientSecretRef") or {}).get("name")
        target = (spec.get("targetSecret") or {}).get("name")
        source_key = (state.namespace, source) if isinstance(source, str) else None
        target_key = (state.namespace, target) if isinstance(target, str) else None
        if source_key:
            self._by_source.setdefault(source_key, set()).add(state.key)
        if target_key:
            self._by_target.setdefault(target_key, set()).add(state.key)
        state.indexed = (source_key, target_key)

    def _unindex(self, state: CredentialState) -> None:
        source_key, target_key = state.indexed
        if source_key and source_key in self._by_source:
            users = self._by_source[source_key]
            users.discard(state.key)
            if not users:
                del self._by_source[source_key]
        if target_key and target_key in self._by_target:
            users = self._by_target[target_key]
            users.discard(state.key)
            if not users:
                del self._by_target[target_key]
        state.indexed = (None, None)

    def _forget(self, key: Key) -> None:
        state = self.credentials.pop(key, None)
        if state is None:
            return
        self._counts[state.state] -= 1
        self._unindex(state)
        self.scheduler.cancel(key)
        self.metrics.forget(*key)
        self._publish_counts()
        log.info(
            "credential %s/%s deleted; its target Secret is garbage-collected",
            *key,
            extra=fields("CredentialDeleted", resource=Resource(KIND, *key)),
        )

    def _load_stored(self, state: CredentialState, secret: Mapping[str, Any] | None) -> None:
        state.token_loaded = True
        if secret is None or not is_owned(secret, state.uid):
            return
        try:
            keys = self._parse(state.body.get("spec")).keys
        except InvalidSpec:
            return
        token = trusted_token(secret, keys, state.status_sent)
        if token is not None and (state.token is None or token.expires_at > state.token.expires_at):
            state.token = token
            state.written_version = (secret.get("metadata") or {}).get("resourceVersion")
            state.target_cache = slim(secret)

    # -- reconcile -------------------------------------------------------------------
    async def _reconcile_key(self, key: Hashable) -> None:
        state = self.credentials.get(key)  # type: ignore[call-overload]
        if state is None:
            return
        with about(Resource(KIND, *state.key)):
            try:
                await self.reconcile(state)
            except TargetConflictDuringWrite as exc:
                await self._failed(state, None, exc, self._clock(), policy=CONFLICT_RETRY)
            except Invalid as exc:
                await self._failed(state, None, refused_target(exc), self._clock(), retry=False)
            except KubeError as exc:
                log.warning(
                    "%s/%s: %s; retrying in 2s", *state.key, exc, extra=fields("KubeRequestFailed")
                )
                self.scheduler.schedule(state.key, time.time() + 2)

    async def reconcile(self, state: CredentialState) -> None:
        now = self._clock()
        try:
            spec = self._parse(state.body.get("spec"))
        except InvalidSpec as exc:
            state.force = False
            await self._failed(state, None, exc, now, retry=False)
            return
        owner = Owner(state.namespace, state.name, state.uid)
        cached = state.target_cache
        try:
            if (
                cached is not None
                and (cached.get("metadata") or {}).get("name") == spec.target_name
            ):
                target: dict[str, Any] | None = cached  # unchanged since we wrote or read it
            else:
                target = await self.kube.get_secret(state.namespace, spec.target_name)
        except KubeError as exc:
            log.warning(
                "%s/%s: %s; retrying in 2s", *state.key, exc, extra=fields("KubeRequestFailed")
            )
            self.scheduler.schedule(state.key, now.timestamp() + 2)
            return
        if target is not None and not is_owned(target, state.uid):
            await self._failed(
                state,
                spec,
                TargetConflict(
                    f"Secret {spec.target_name} exists and is not owned by this ITCareCredential; "
                    "delete it or choose another targetSecret.name"
                ),
                now,
                policy=CONFLICT_RETRY,
            )
            return
        if not state.token_loaded:
            self._load_stored(state, target)
        if spec.suspend:
            state.force = False
            await self._write_target(state, spec, owner, target)
            await self._settle(
                state, spec, now, wake=state.token.expires_at if state.token else None
            )
            return
        token = state.token
        valid = token is not None and token.is_valid(now)
        if token is not None and state.refresh_at is None:
            state.refresh_at = resumed_refresh_at(
                token, state.status_sent, now, spec.policy, self._rand()
            )
        due = state.refresh_at is not None and now >= state.refresh_at
        if not (state.force or not valid or due):
            await self._write_target(state, spec, owner, target)  # drift repair, same token
            await self._settle(state, spec, now, wake=state.refresh_at)
            return
        if state.retry_at is not None and now < state.retry_at:
            # Woken early (drift, a watch event): keep the backoff, repair meanwhile.
            await self._write_target(state, spec, owner, target)
            await self._settle(state, spec, now, wake=state.retry_at, next_attempt=state.retry_at)
            return
        earliest = forced_refresh_allowed_at(state.forced_at)
        if state.force and valid and not due and earliest is not None and now < earliest:
            # Forced again too soon: the still-valid token stays, the new one follows.
            await self._write_target(state, spec, owner, target)
            await self._settle(state, spec, now, wake=earliest, next_attempt=earliest)
            return
        if not self.settings.token_url_allowed(spec.token_url):
            state.force = False
            await self._failed(
                state,
                spec,
                TokenURLNotAllowed(
                    "tokenURL is outside the operator's --allowed-token-url prefixes"
                ),
                now,
                retry=False,
                target=target,
                owner=owner,
            )
            return
        await self._refresh(state, spec, owner, target, now)

    async def _refresh(
        self,
        state: CredentialState,
        spec: CredentialSpec,
        owner: Owner,
        target: dict[str, Any] | None,
        now: dt.datetime,
    ) -> None:
        if state.force:
            state.forced_at = now
        grant = spec.grant
        try:
            source = self.sources.get((state.namespace, spec.source_name))
            if source is None and not self.settings.require_source_label:
                # With the label required, the watch holds every Secret the operator may
                # read: one missing there is reported alike whether it exists or not,
                # without reading it (no existence oracle). Without the label, ask.
                source = await self.kube.get_secret(state.namespace, spec.source_name)
        except KubeError as exc:
            await self._failed(
                state,
                spec,
                CredentialError(str(exc), reason=Reason.SOURCE_SECRET_NOT_FOUND),
                now,
                target=target,
                owner=owner,
                kind=FailureKind.TRANSIENT,
            )
            return
        state.source_fingerprint = source_fingerprint(source)
        started = time.monotonic()
        try:
            credentials = credentials_from_secret(
                source,
                name=spec.source_name,
                client_id_key=spec.client_id_key,
                client_secret_key=spec.client_secret_key,
                require_label=self.settings.require_source_label,
            )
            endpoint = self.endpoints.get(spec.token_url, self.settings.ca_bundle)
            result = await endpoint.obtain(
                credentials, scope=spec.scope, grant=grant, current=state.token
            )
        except TokenEndpointError as exc:
            self.metrics.observe_request(time.monotonic() - started, ok=False)
            await self._failed(
                state,
                spec,
                exc,
                self._clock(),
                target=target,
                owner=owner,
                retry_after=exc.retry_after,
            )
            return
        except CredentialError as exc:
            await self._failed(state, spec, exc, now, target=target, owner=owner)
            return
        self.metrics.observe_request(time.monotonic() - started, ok=True)
        first = state.token is None
        recovered = state.failures > 0
        token = result.token
        if spec.grant is Grant.CLIENT_CREDENTIALS and token.refresh_token:
            # Not used with this grant: do not keep the secret material around.
            token = dataclasses.replace(token, refresh_token=None, refresh_expires_at=None)
        # The token is ours from here on: if writing fails, the retry writes this one
        # (the drift-repair path) instead of minting another.
        state.token = token
        state.force, state.retry_at = False, None
        state.failures = 0
        state.last_refresh = token.received_at
        state.refresh_at = next_refresh_at(
            token.received_at, token.expires_at, self._clock(), spec.policy, self._rand()
        )
        try:
            await self._write_target(state, spec, owner, target)
        except TargetConflictDuringWrite as exc:
            await self._failed(state, spec, exc, self._clock(), policy=CONFLICT_RETRY)
            return
        except Invalid as exc:
            await self._failed(state, None, refused_target(exc), self._clock(), retry=False)
            return
        except KubeError as exc:
            log.warning(
                "%s/%s: writing the target Secret failed: %s",
                *state.key,
                exc,
                extra=fields("TargetWriteFailed"),
            )
            self.scheduler.schedule(state.key, time.time() + 2)
            return
        now = self._clock()
        notice = margin_notice(token.expires_at - token.received_at, spec.policy)
        state.refreshed = Condition(
            "Refreshed",
            True,
            Reason.REFRESH_SUCCEEDED,
            f"token obtained with {result.grant}; next refresh at {format_time(state.refresh_at)}"
            + (f"; {notice}" if notice else ""),
        )
        self.metrics.refreshed(state.namespace, state.name, str(result.grant))
        log.info(
            "%s/%s: token refreshed (%s), expires at %s, next refresh at %s",
            *state.key,
            result.grant,
            format_time(token.expires_at),
            format_time(state.refresh_at),
            extra=fields("TokenRefreshed"),
        )
        if first:
            await self._event(
                state,
                "Normal",
                "TokenIssued",
                f"token written to Secret {spec.target_name}, "
                f"expires at {format_time(token.expires_at)}",
            )
            if notice:
                await self._event(state, "Warning", "RefreshMarginTooShort", notice)
        elif recovered:
            await self._event(
                state,
                "Normal",
                "RefreshRecovered",
                f"token refreshed after failures; expires at {format_time(token.expires_at)}",
            )
        state.event_reason = None
        await self._settle(state, spec, now, wake=state.refresh_at)

    async def _write_target(
        self,
        state: CredentialState,
        spec: CredentialSpec,
        owner: Owner,
        target: dict[str, Any] | None,
    ) -> None:
        """Make the target Secret hold ``state.token`` (if it is still valid)."""
        token = state.token
        if token is None or not token.is_valid(self._clock()):
            return
        desired = desired_secret(spec, owner, token)
        for _attempt in range(3):
            if target is None:
                try:
                    written = await self.kube.create_secret(state.namespace, desired)
                except Conflict:
                    target = await self.kube.get_secret(state.namespace, spec.target_name)
                    if target is not None and not is_owned(target, state.uid):
                        raise TargetConflictDuringWrite from None
                    continue
            elif not needs_write(target, desired):
                state.written_version = (target.get("metadata") or {}).get("resourceVersion")
                state.target_cache = target
                return
            else:
                try:
                    written = await self.kube.replace_secret(
                        state.namespace, updated_secret(target, desired)
                    )
                except NotFound:  # deleted since we read it (or our cache was stale)
                    target = None
                    continue
                except Conflict:
                    target = await self.kube.get_secret(state.namespace, spec.target_name)
                    if target is not None and not is_owned(target, state.uid):
                        raise TargetConflictDuringWrite from None
                    continue
            state.written_version = (written.get("metadata") or {}).get("resourceVersion")
            state.target_cache = slim(written)
            return
        raise KubeError(f"target Secret {spec.target_name} kept changing under us")

    async def _failed(
        self,
        state: CredentialState,
        spec: CredentialSpec | None,
        exc: CredentialError,
        now: dt.datetime,
        *,
        retry: bool = True,
        policy: RefreshPolicy | None = None,
        kind: FailureKind | None = None,
        retry_after: float | None = None,
        target: dict[str, Any] | None = None,
        owner: Owner | None = None,
    ) -> None:
        state.failures += 1
        state.last_failure = now
        reason = str(exc.reason)
        token = state.token
        valid = token is not None and token.is_valid(now)
        wake: dt.datetime | None = None
        if retry:
            delay = backoff_delay(
                state.failures,
                kind or exc.kind,
                now,
                token.expires_at if valid and token else None,
                policy or (spec.policy if spec else RefreshPolicy()),
                self._rand(),
                retry_after,
            )
            wake = state.retry_at = now + delay
            message = f"{exc}; next attempt at {format_time(wake)}"
        else:
            message = f"{exc}; fix the resource to retry"
            if valid and token is not None:
                wake = token.expires_at  # to report the expiry when it happens
        state.refreshed = Condition("Refreshed", False, reason, message)
        self.metrics.failed(state.namespace, state.name, str(spec.grant) if spec else "", reason)
        log.warning(
            "%s/%s: refresh failed: %s: %s",
            *state.key,
            reason,
            message,
            extra=fields("RefreshFailed", reason),
        )
        if state.event_reason != reason:
            state.event_reason = reason
            await self._event(state, "Warning", reason, message)
        if spec is not None and owner is not None and valid:
            try:  # a still-valid token stays in (or goes back into) the target Secret
                await self._write_target(state, spec, owner, target)
            except (KubeError, TargetConflictDuringWrite) as write_exc:
                log.warning(
                    "%s/%s: restoring the target Secret failed: %s",
                    *state.key,
                    write_exc,
                    extra=fields("TargetWriteFailed"),
                )
        await self._settle(state, spec, now, wake=wake, next_attempt=wake if retry else None)

    async def _settle(
        self,
        state: CredentialState,
        spec: CredentialSpec | None,
        now: dt.datetime,
        *,
        wake: dt.datetime | None,
        next_attempt: dt.datetime | None = None,
    ) -> None:
        """Publish status, metrics and the next wake-up."""
        token = state.token
        suspended = bool(spec and spec.suspend)
        # Wake up at expiry too, so Ready turns False on time.
        if (
            token is not None
            and token.expires_at > now
            and (wake is None or token.expires_at < wake)
        ):
            wake = token.expires_at
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
                "the token in the target Secret has expired and no new one could be obtained",
            )
        state.ready_reason = ready.reason
        status = render_status(obs, state.status_sent, now)
        if status_changed(status, state.status_sent):
            try:
                await self.kube.patch_status(state.namespace, state.name, status)
                state.status_sent = status
            except KubeError as exc:
                log.warning(
                    "%s/%s: status update failed: %s",
                    *state.key,
                    exc,
                    extra=fields("StatusUpdateFailed"),
                )
                if wake is None or wake.timestamp() > time.time() + 5:
                    wake = self._clock() + dt.timedelta(seconds=5)
        self._set_state(
            state, "suspended" if suspended else "ready" if ready.status else "not_ready"
        )
        self.metrics.credential_state(
            state.namespace,
            state.name,
            ready=ready.status,
            expires_at=token.expires_at if token else None,
            next_refresh=next_refresh,
            lifetime=token.lifetime if token else None,
            suspended=suspended,
            failures=state.failures,
        )
        if wake is not None:
            self.scheduler.schedule(state.key, wake.timestamp())
        else:
            self.scheduler.cancel(state.key)

    def _set_state(self, state: CredentialState, value: str) -> None:
        if state.state != value and state.key in self.credentials:
            self._counts[state.state] -= 1
            self._counts[value] += 1
            self._publish_counts()
        state.state = value

    def _publish_counts(self) -> None:
        self.metrics.set_counts(
            self._counts["ready"], self._counts["not_ready"], self._counts["suspended"]
        )

    async def _event(self, state: CredentialState, type_: str, reason: str, message: str) -> None:
        await self.kube.create_event(state.involved, type_, reason, message)


def forced_refresh_allowed_at(forced_at: dt.datetime | None) -> dt.datetime | None:
    """When the next forced refresh may be sent (None: now)."""
    return None if forced_at is None else forced_at + FORCED_REFRESH_INTERVAL


def refused_target(exc: Invalid) -> InvalidSpec:
    """The API server refused the target Secret (422): the spec must change, so this is
    terminal until it does, not retried every few seconds."""
    return InvalidSpec(
        f"the API server refused the target Secret ({exc}); check targetSecret "
        "labels, annotations and keys"
    )


class TargetConflictDuringWrite(TargetConflict):
    def __init__(self) -> None:
        super().__init__("target Secret was taken by another owner while writing")
