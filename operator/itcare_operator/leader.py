"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go does it.

Only the leader watches and refreshes. A standby polls every ``retry_period`` and
takes the Lease once it has not seen it renewed for ``lease_duration``; a leader that
cannot renew within ``renew_deadline`` stops (and is restarted as a standby), so two
replicas never refresh at the same time. A clean shutdown releases the Lease, so the
standby takes over at its next poll.

Expiry is judged on this replica's own monotonic clock, from the moment it last saw
the Lease record change, never by comparing the remote ``renewTime`` with the local
wall clock: two nodes whose clocks disagree by more than the lease duration would
otherwise both lead (or neither would). client-go's leaderelection does the same.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from itcare_operator.kube import KubeClient
from itcare_operator.kube_api import Conflict, KubeError

__all__ = ["LeaseElector", "LostLeadership"]

log = logging.getLogger(__name__)


class LostLeadership(Exception):
    pass


def _micro(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._lease: dict[str, Any] | None = None
        self._monotonic = monotonic
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.heartbeat = monotonic()
        """Monotonic time of the last election attempt (liveness of a standby)."""
        self.reachable = False
        """Whether the last attempt reached the API server (readiness of a standby)."""

    async def _get(self) -> dict[str, Any] | None:
        return await self._kube.get_lease(self.namespace, self.name)

    def _spec(self, now: dt.datetime, transitions: int, acquired: str | None) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration),
            "acquireTime": acquired or _micro(now),
            "renewTime": _micro(now),
            "leaseTransitions": transitions,
        }

    def _expired(self, spec: dict[str, Any]) -> bool:
        """Whether the holder has not renewed for its lease duration, by our clock."""
        record = (
            spec.get("holderIdentity"),
            spec.get("renewTime"),
            spec.get("acquireTime"),
            spec.get("leaseTransitions"),
        )
        now = self._monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        return now > self._observed_at + float(duration)

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease."""
        self.heartbeat = self._monotonic()
        now = dt.datetime.now(dt.UTC)
        try:
            lease = await self._get()
        except KubeError:
            self.reachable = False
            raise
        self.reachable = True
        try:
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(now, 0, None),
                }
                resp = await self._kube.create_lease(self.namespace, body)
                self._lease = resp
                return True
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity")
            if holder and holder != self.identity and not self._expired(spec):
                return False
            mine = holder == self.identity
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
            lease["spec"] = self._spec(now, transitions, spec.get("acquireTime") if mine else None)
            resp = await self._kube.replace_lease(self.namespace, lease)
            self._lease = resp
            return True
        except Conflict:
            return False

    async def acquire(self) -> None:
        logged = False
        while True:
            try:
                if await self.try_acquire():
                    log.info("became leader (Lease %s/%s)", self.namespace, self.name)
                    return
            except KubeError as exc:
                log.warning("leader election: %s", exc)
            if not logged:
                log.info("waiting to become leader (Lease %s/%s)", self.namespace, self.name)
                logged = True
            await asyncio.sleep(self.retry_period)

    async def hold(self) -> None:
        """Renew until leadership is lost; then raise :class:`LostLeadership`."""
        last = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self.retry_period)
            try:
                if await self.try_acquire():
                    last = asyncio.get_running_loop().time()
                    continue
                raise LostLeadership("another replica holds the Lease")
            except KubeError as exc:
                log.warning("leader election: renewing failed: %s", exc)
            if asyncio.get_running_loop().time() - last > self.renew_deadline:
                raise LostLeadership(f"could not renew the Lease for {self.renew_deadline:g}s")

    async def release(self) -> None:
        lease = self._lease
        if lease is None:
            return
        lease["spec"] = {
            **(lease.get("spec") or {}),
            "holderIdentity": None,
            "leaseDurationSeconds": 1,
        }
        try:
            await self._kube.replace_lease(self.namespace, lease, "release Lease")
        except KubeError as exc:
            log.info("could not release the Lease: %s", exc)
