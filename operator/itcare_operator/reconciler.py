"""One reconciler for both kinds: from a credential to a fresh token at its destination.

Inputs are watch events (the credential, its source Secret) handed in by
:mod:`handlers`, and wake-ups of the :class:`Scheduler`. One reconcile asks
:func:`model.should_refresh` what to do, obtains a token if so, has the delivery
adapter (:mod:`delivery`) write it, then publishes status (only when it changed),
events on transitions, metrics and the next wake-up. Every time decision uses the
injected clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Hashable
from typing import Any, TypeVar

from itcare_operator import refresh_policy as policy
from itcare_operator.errors import CredentialError, FailureKind, Reason, TokenEndpointError
from itcare_operator.isolation import describe
from itcare_operator.kube_api import Invalid, KubeError, NotFound
from itcare_operator.logs import Resource, about, fields
from itcare_operator.model import (
    CONFLICT_RETRY,
    Action,
    CredentialState,
    Failure,
    resumed_refresh_at,
    should_refresh,
    source_fingerprint,
)
from itcare_operator.registry import CredentialRegistry
from itcare_operator.secret_write import TargetTaken
from itcare_operator.source_secret import credentials_from_secret, keeps
from itcare_operator.spec import CredentialSpec, InvalidSpec
from itcare_operator.status import (
    FAILING_STATUS_INTERVAL,
    Condition,
    Observation,
    only_attempt_details_changed,
    ready_condition,
    status_changed,
)
from itcare_operator.token import Grant, digest, format_time
from itcare_operator.token_endpoint import TokenResult

__all__ = ["Reconciler", "refused_target"]

log = logging.getLogger(__name__)

D = TypeVar("D")
API_RETRY = dt.timedelta(seconds=2)  # after an API error: the server is usually back soon
STATUS_RETRY = dt.timedelta(seconds=5)
UNEXPECTED_RETRY = dt.timedelta(seconds=30)


class Reconciler(CredentialRegistry[D]):
    """All credentials of one kind: what a reconcile decides and does."""

    # -- reconcile -------------------------------------------------------------------
    async def _reconcile_key(self, key: Hashable) -> None:
        state = self.credentials.get(key)  # type: ignore[call-overload]
        if state is not None:
            await self.reconcile(state)

    async def reconcile(self, state: CredentialState[D]) -> None:
        """One reconcile; an API error ends it with a retry, never with a lost token."""
        with about(Resource(self.delivery.kind, *state.key)):
            try:
                await self._reconcile_then_post(state)
            except (TargetTaken, Invalid) as exc:
                await self._failed(state, None, write_failure(exc))
                self._post_events(state)
            except KubeError as exc:
                self._warn(state, "KubeRequestFailed", "retrying in 2s", exc)
                self.later(state.key, API_RETRY)
            except Exception as exc:  # one credential's bug or odd input stops no other
                await self._unexpected(state, exc)

    async def _reconcile_then_post(self, state: CredentialState[D]) -> None:
        try:
            await self._reconcile(state)
        finally:
            self._post_events(state)

    async def _unexpected(self, state: CredentialState[D], exc: Exception) -> None:
        """Report an unforeseen error in the credential's own status (a reason of its
        own, Ready following the held token's real expiry) and retry with backoff."""
        self.metrics.object_errors.labels(self.delivery.kind, "reconcile").inc()
        what = describe(exc)
        log.error(
            "%s: reconcile failed: unexpected %s",
            self._label(state.key),
            what,
            extra=fields("ReconcileFailed", Reason.UNEXPECTED_ERROR),
        )
        spec = state.spec if isinstance(state.spec, CredentialSpec) else None
        error = CredentialError(
            f"unexpected {what} while reconciling (a bug: please report it)",
            reason=Reason.UNEXPECTED_ERROR,
        )
        try:
            await self._failed(state, spec, Failure(error, kind=FailureKind.TRANSIENT))
            now = self._clock()
            if state.valid_token(now) and state.refresh_at and now < state.refresh_at:
                # The wake-up _failed scheduled reconciles again; the token it holds
                # is not due, so that run repairs and settles, it mints nothing.
                state.retry_at = None
            self._post_events(state)
        except Exception as again:  # reporting failed too: at least come back later
            log.error(
                "%s: reporting the failure failed: %s", self._label(state.key), describe(again)
            )
            self.later(state.key, UNEXPECTED_RETRY)

    async def _reconcile(self, state: CredentialState[D]) -> None:
        if await self.delivery.intercept(state):
            return
        spec = state.spec
        if not isinstance(spec, CredentialSpec):
            error = spec if spec is not None else InvalidSpec("spec is missing")
            await self._failed(state, None, Failure(error, terminal=True))
            return
        refusal = await self.delivery.prepare(state, spec)
        if not state.token_loaded:  # before a refusal: a refused credential's valid
            state.token_loaded = True  # token still reaches its destination
            self.delivery.load_stored(state, spec)
        if refusal is not None:
            await self._failed(state, spec, refusal)
            return
        now = self._clock()
        if state.token is not None and state.refresh_at is None:
            state.refresh_at = resumed_refresh_at(
                state.token, state.status_sent, now, spec.policy, self._rand()
            )
        decision = should_refresh(
            state,
            suspended=spec.suspend,
            url_allowed=self.settings.token_url_allowed(spec.token_url),
            now=now,
        )
        if decision.action is Action.REFRESH:
            await self._refresh(state, spec)
        elif decision.action is Action.URL_REFUSED:
            refused = Failure.of(
                Reason.TOKEN_URL_NOT_ALLOWED,
                "tokenURL is outside the operator's --allowed-token-url prefixes",
                terminal=True,
            )
            await self._failed(state, spec, refused)
        else:
            if decision.action is Action.SUSPENDED:
                state.force = False
            await self.delivery.deliver(state, spec)  # drift repair: the same token
            await self._settle(state, spec, wake=decision.wake, next_attempt=decision.next_attempt)

    async def _refresh(self, state: CredentialState[D], spec: CredentialSpec) -> None:
        if state.force:  # this attempt answers the forcing: a failure backs off as usual
            state.forced_at, state.force = self._clock(), False
        where = self.delivery.source_of(state, spec)
        keys = state.source_keys()
        try:
            source = self.sources.get(where)
            if source is None and not self.settings.require_source_label:
                # With the label required, the watch holds every Secret the operator may
                # read: one missing there is reported alike whether it exists or not,
                # without reading it (no existence oracle). Without the label, ask.
                source = await self.kube.get_secret(*where)
            elif source is not None and not keeps(source, keys):
                # Kept without the keys this credential reads (they were named after
                # the Secret was seen): read it once; the label is checked below.
                source = await self.kube.get_secret(*where)
        except KubeError as exc:
            missing = CredentialError(str(exc), reason=Reason.SOURCE_SECRET_NOT_FOUND)
            await self._failed(state, spec, Failure(missing, kind=FailureKind.TRANSIENT))
            return
        state.source_fingerprint = source_fingerprint(source, keys)
        try:
            credentials = credentials_from_secret(
                source,
                name=where[1] if where[0] == state.namespace else "/".join(where),
                client_id_key=spec.client_id_key,
                client_secret_key=spec.client_secret_key,
                require_label=self.settings.require_source_label,
            )
        except CredentialError as exc:
            await self._failed(state, spec, Failure(exc))
            return
        endpoint = self.endpoints.get(spec.token_url, self.settings.ca_bundle)
        started = time.monotonic()  # a duration for the histogram, not a time decision
        try:
            result = await endpoint.obtain(
                credentials,
                scope=spec.scope,
                grant=spec.grant,
                current=state.token,
                url=spec.token_url,
            )
        except TokenEndpointError as exc:
            self.metrics.observe_request(time.monotonic() - started, ok=False)
            await self._failed(state, spec, Failure(exc, retry_after=exc.retry_after))
            return
        self.metrics.observe_request(time.monotonic() - started, ok=True)
        await self._obtained(state, spec, result)

    async def _obtained(
        self, state: CredentialState[D], spec: CredentialSpec, result: TokenResult
    ) -> None:
        first, recovered = state.token is None, state.failures > 0
        token = result.token
        if spec.grant is Grant.CLIENT_CREDENTIALS and token.refresh_token:
            # Not used with this grant: do not keep the secret material around.
            token = dataclasses.replace(token, refresh_token=None, refresh_expires_at=None)
        # The token is ours from here on: if writing fails, the retry writes this one
        # (the drift-repair path) instead of minting another.
        state.token = token
        state.force, state.retry_at, state.failures = False, None, 0
        state.last_refresh = token.received_at
        state.refresh_at = policy.next_refresh_at(
            token.received_at, token.expires_at, self._clock(), spec.policy, self._rand()
        )
        # A write that fails here is handled as any failed API call of the reconcile
        # (_reconcile_key): the token is kept and written by the retry.
        await self.delivery.deliver(state, spec)
        notice = policy.margin_notice(token.lifetime, spec.policy)
        next_at = format_time(state.refresh_at)
        state.refreshed = Condition(
            "Refreshed",
            True,
            Reason.REFRESH_SUCCEEDED,
            f"token obtained with {result.grant}; next refresh at {next_at}"
            + (f"; {notice}" if notice else ""),
        )
        self.metrics.refreshed(*state.key, str(result.grant), self.delivery.scope)
        expires = format_time(token.expires_at)
        where = self.delivery.where(state, spec)
        log.info(
            "%s: token refreshed (%s), written to %s, expires at %s, next refresh at %s",
            self._label(state.key),
            result.grant,
            where,
            expires,
            next_at,
            extra=fields("TokenRefreshed"),
        )
        if first:
            await self._event(
                state, "Normal", "TokenIssued", f"token written to {where}, expires at {expires}"
            )
            if notice:
                await self._event(state, "Warning", "RefreshMarginTooShort", notice)
        elif recovered:
            await self._event(
                state,
                "Normal",
                "RefreshRecovered",
                f"token refreshed after failures; expires at {expires}",
            )
        state.event_reason = None
        await self._settle(state, spec, wake=state.refresh_at)

    # -- outcome ---------------------------------------------------------------------
    async def _failed(
        self, state: CredentialState[D], spec: CredentialSpec | None, failure: Failure
    ) -> None:
        now = self._clock()
        error = failure.error
        state.failures += 1
        state.last_failure = now
        reason = str(error.reason)
        valid = state.valid_token(now)
        wake: dt.datetime | None = None
        if failure.terminal:
            state.force, state.retry_at = False, None
            message = f"{error}; fix the resource to retry"
            wake = valid.expires_at if valid else None  # to report the expiry on time
        else:
            delay = policy.backoff_delay(
                state.failures,
                failure.kind or error.kind,
                now,
                valid.expires_at if valid else None,
                failure.policy or (spec.policy if spec else policy.RefreshPolicy()),
                self._rand(),
                failure.retry_after,
            )
            wake = state.retry_at = now + delay
            message = f"{error}; next attempt at {format_time(wake)}"
        state.refreshed = Condition("Refreshed", False, reason, message)
        grant = str(spec.grant) if spec else ""
        self.metrics.failed(*state.key, grant, reason, self.delivery.scope)
        log.warning(
            "%s: refresh failed: %s: %s",
            self._label(state.key),
            reason,
            message,
            extra=fields("RefreshFailed", reason),
        )
        if state.event_reason != reason:
            state.event_reason = reason
            await self._event(state, "Warning", reason, message)
        if spec is not None and valid:
            try:  # a still-valid token stays in (or goes back into) its destination
                await self.delivery.deliver(state, spec)
            except (KubeError, TargetTaken) as exc:
                self._warn(state, "TargetWriteFailed", "restoring the target failed", exc)
        next_attempt = None if failure.terminal else wake
        await self._settle(state, spec, wake=wake, next_attempt=next_attempt)

    async def _settle(
        self,
        state: CredentialState[D],
        spec: CredentialSpec | None,
        *,
        wake: dt.datetime | None,
        next_attempt: dt.datetime | None = None,
    ) -> None:
        """Publish status, metrics and the next wake-up."""
        now = self._clock()
        token = state.token
        suspended = bool(spec and spec.suspend)
        # Wake up at expiry too, so Ready turns False on time; and for a part of the
        # destination that failed.
        for when in (token.expires_at if token else None, self.delivery.retry_at(state, now)):
            if when is not None and when > now and (wake is None or when < wake):
                wake = when
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
        status = self.delivery.render_status(state, obs, now)
        if status_changed(status, state.status_sent) and self._status_due(state, status, now):
            try:
                await self.delivery.patch_status(state, status)
                state.status_sent, state.status_sent_at = status, now
            except NotFound:  # deleted while the watch was away: nothing to keep
                self._forget(state.key)
                return
            except KubeError as exc:
                self._warn(state, "StatusUpdateFailed", "status update failed", exc)
                retry = now + STATUS_RETRY
                wake = retry if wake is None or wake > retry else wake
        self._set_state(
            state, "suspended" if suspended else "ready" if ready.status else "not_ready"
        )
        self.metrics.credential_state(
            *state.key,
            ready=ready.status,
            expires_at=token.expires_at if token else None,
            next_refresh=next_refresh,
            scope=self.delivery.scope,
            lifetime=token.lifetime if token else None,
            suspended=suspended,
            failures=state.failures,
        )
        self.delivery.published(state)
        if wake is not None:
            self.scheduler.schedule(state.key, wake.timestamp())
        else:
            self.scheduler.cancel(state.key)

    def _status_due(
        self, state: CredentialState[D], status: dict[str, Any], now: dt.datetime
    ) -> bool:
        """Patch now, or let a failing credential's attempt details wait: at most one
        patch per FAILING_STATUS_INTERVAL while only they change (a wake-up then
        writes what waited)."""
        sent, at = state.status_sent, state.status_sent_at
        if sent is None or at is None or state.failures == 0:
            return True
        if not only_attempt_details_changed(status, sent):
            return True
        due = at + FAILING_STATUS_INTERVAL
        if now >= due:
            return True
        self.scheduler.schedule(state.key, due.timestamp(), earlier_only=True)
        return False

    def _warn(self, state: CredentialState[D], event: str, what: str, exc: Exception) -> None:
        """An API call failed; the reconcile goes on or is retried (never a crash)."""
        log.warning(
            "%s: %s: %s",
            self._label(state.key),
            what,
            exc or type(exc).__name__,
            extra=fields(event),
        )

    async def _event(
        self, state: CredentialState[D], type_: str, reason: str, message: str
    ) -> None:
        """Queue an Event: posted after the status patch, outside the reconcile slot
        (:meth:`_post_events`), so a slow Events API delays no refresh."""
        state.events.append((type_, reason, message))

    def _post_events(self, state: CredentialState[D]) -> None:
        if not state.events:
            return
        events, state.events = state.events, []
        involved = self.delivery.involved(state)
        where = self.delivery.event_namespace

        async def post() -> None:
            for type_, reason, message in events:
                await self.kube.create_event(involved, type_, reason, message, namespace=where)

        task = asyncio.create_task(post(), name=f"events {self._label(state.key)}")
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    async def drain_events(self) -> None:
        """Wait for the Events being posted (shut-down, under the caller's timeout;
        tests)."""
        if self._posting:
            await asyncio.wait(set(self._posting))


def write_failure(exc: TargetTaken | Invalid) -> Failure:
    """A target write that cannot succeed as is: taken by another owner (looked at
    again slowly: a person has to act), or refused by the API server (terminal)."""
    if isinstance(exc, Invalid):
        return Failure(refused_target(exc), terminal=True)
    return Failure.of(
        Reason.TARGET_SECRET_CONFLICT,
        "target Secret was taken by another owner while writing",
        policy=CONFLICT_RETRY,
    )


def refused_target(exc: Invalid) -> InvalidSpec:
    """The API server refused the target Secret (422): the spec must change, so this is
    terminal until it does, not retried every few seconds."""
    return InvalidSpec(
        f"the API server refused the target Secret ({exc}); check targetSecret "
        "labels, annotations and keys"
    )
