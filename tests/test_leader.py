"""Lease election judged on the local clock: skew between nodes changes nothing."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from itcare_operator.kube_api import Conflict
from itcare_operator.leader import LeaseElector


class FakeLeases:
    """The three Lease calls of the elector, on one stored object with versions."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.lease)

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.lease is not None:
            raise Conflict("exists")
        return self._store(body)

    async def replace_lease(
        self, namespace: str, body: dict[str, Any], what: str = ""
    ) -> dict[str, Any]:
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise Conflict("stale")
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    def renew_by_other(self, renew_time: dt.datetime) -> None:
        """Another replica renews, with its own (possibly skewed) wall clock."""
        assert self.lease is not None
        self.version += 1
        self.lease["spec"]["holderIdentity"] = "other"
        self.lease["spec"]["renewTime"] = renew_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.lease["metadata"]["resourceVersion"] = str(self.version)


def elector(leases: FakeLeases, clock: list[float]) -> LeaseElector:
    return LeaseElector(
        leases,  # type: ignore[arg-type]
        "ns",
        "lease",
        "me",
        lease_duration=15.0,
        monotonic=lambda: clock[0],
    )


async def held_by_other(leases: FakeLeases, renew_time: dt.datetime) -> None:
    other = LeaseElector(leases, "ns", "lease", "other")  # type: ignore[arg-type]
    assert await other.try_acquire()
    leases.renew_by_other(renew_time)


async def test_a_holder_renewing_with_a_clock_far_behind_keeps_the_lease() -> None:
    """The remote renewTime is an hour old by our clock, but it keeps changing."""
    leases, clock = FakeLeases(), [1000.0]
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    await held_by_other(leases, past)
    me = elector(leases, clock)
    for step in range(10):
        clock[0] += 10.0
        leases.renew_by_other(past + dt.timedelta(seconds=10 * step))
        assert not await me.try_acquire(), f"took a renewed Lease at step {step}"


async def test_a_stopped_holder_is_replaced_after_the_duration_even_with_its_clock_ahead() -> None:
    """renewTime an hour in the future: a wall-clock comparison would wait an hour."""
    leases, clock = FakeLeases(), [1000.0]
    await held_by_other(leases, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    me = elector(leases, clock)
    assert not await me.try_acquire()  # first sight starts our own count
    clock[0] += 14.0
    assert not await me.try_acquire()
    clock[0] += 2.0
    assert await me.try_acquire()
    assert leases.lease is not None and leases.lease["spec"]["holderIdentity"] == "me"


async def test_a_released_lease_is_taken_at_once() -> None:
    leases, clock = FakeLeases(), [1000.0]
    first = elector(leases, clock)
    assert await first.try_acquire()
    await first.release()
    other = LeaseElector(leases, "ns", "lease", "other")  # type: ignore[arg-type]
    assert await other.try_acquire()


async def test_standby_heartbeat_and_reachability_follow_its_polls() -> None:
    leases, clock = FakeLeases(), [1000.0]
    await held_by_other(leases, dt.datetime.now(dt.UTC))
    me = elector(leases, clock)
    clock[0] = 1234.0
    assert not await me.try_acquire()
    assert me.heartbeat == 1234.0 and me.reachable
