"""Service tier: Lease election between two replicas over the in-memory API server
(resourceVersion conflicts as the real server answers them), each on its own clock.
tests/test_leader.py pins clock skew; this pins the race and the hand-over."""

from __future__ import annotations

import pytest

from itcare_operator.kube_api import KubeError
from itcare_operator.leader import LeaseElector
from tests.fake_kube import FakeKube

NS, NAME = "operators", "itcare-token-operator"


def replica(kube: FakeKube, identity: str, clock: list[float]) -> LeaseElector:
    return LeaseElector(
        kube,  # type: ignore[arg-type]
        NS,
        NAME,
        identity,
        lease_duration=15.0,
        monotonic=lambda: clock[0],
    )


def holder(kube: FakeKube) -> str:
    return str(kube.leases[(NS, NAME)]["spec"]["holderIdentity"])


async def test_the_first_replica_acquires_and_renews() -> None:
    kube, clock = FakeKube(), [0.0]
    a = replica(kube, "a", clock)
    assert await a.try_acquire() and holder(kube) == "a"
    first = kube.leases[(NS, NAME)]["metadata"]["resourceVersion"]
    clock[0] += 2
    assert await a.try_acquire()
    assert int(kube.leases[(NS, NAME)]["metadata"]["resourceVersion"]) > int(first)
    assert kube.leases[(NS, NAME)]["spec"]["leaseTransitions"] == 0


async def test_a_standby_waits_while_the_holder_renews_then_takes_over_after_the_duration() -> None:
    kube, clock_a, clock_b = FakeKube(), [0.0], [500.0]
    a, b = replica(kube, "a", clock_a), replica(kube, "b", clock_b)
    assert await a.try_acquire()
    for _ in range(20):  # 40 s of renewals: b never takes the Lease
        clock_a[0] += 2
        clock_b[0] += 2
        assert await a.try_acquire()
        assert not await b.try_acquire()
    # a stops renewing; b counts the duration from when it last saw a change
    for _ in range(7):
        clock_b[0] += 2
        assert not await b.try_acquire(), clock_b
    clock_b[0] += 2  # 16 s without a change
    assert await b.try_acquire() and holder(kube) == "b"
    assert kube.leases[(NS, NAME)]["spec"]["leaseTransitions"] == 1
    assert not await a.try_acquire()  # the former holder now sees b renewing


async def test_two_replicas_racing_for_the_lease_get_one_winner() -> None:
    kube, clock = FakeKube(), [0.0]
    a, b = replica(kube, "a", clock), replica(kube, "b", clock)
    await a.try_acquire()
    await a.release()  # released: either may take it, but only one wins the write
    stale = await kube.get_lease(NS, NAME)
    assert await b.try_acquire()
    assert stale is not None
    with pytest.raises(KubeError):  # a write on the version b replaced is a 409
        await kube.replace_lease(NS, stale)
    assert holder(kube) == "b"


async def test_an_unreachable_api_server_makes_the_standby_unready() -> None:
    kube, clock = FakeKube(), [0.0]
    a = replica(kube, "a", clock)
    kube.fail("get_lease", KubeError("API server unreachable"))
    with pytest.raises(KubeError):
        await a.try_acquire()
    assert not a.reachable
    assert await a.try_acquire() and a.reachable
