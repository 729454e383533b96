"""A leader that cannot renew its Lease stops by the renew deadline, before a standby
may take the Lease (the lease duration): never two leaders at once."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from itcare_operator.kube_api import KubeError
from itcare_operator.leader import LeaseElector, LostLeadership


class UnreachableAfterAcquire:
    """The Lease calls of the elector: the first creation succeeds, then the API server
    is unreachable. Each failed call is timed on the event loop's clock, the one
    :meth:`LeaseElector.hold` measures its deadline with."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.failing = False
        self.failed_at: list[float] = []

    def _fail_if_unreachable(self) -> None:
        if self.failing:
            self.failed_at.append(asyncio.get_running_loop().time())
            raise KubeError("unreachable")

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._fail_if_unreachable()
        return copy.deepcopy(self.lease)

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._fail_if_unreachable()
        self.lease = {
            **copy.deepcopy(body),
            "metadata": {**body["metadata"], "resourceVersion": "1"},
        }
        return copy.deepcopy(self.lease)

    async def replace_lease(
        self, namespace: str, body: dict[str, Any], what: str = ""
    ) -> dict[str, Any]:
        self._fail_if_unreachable()
        self.lease = copy.deepcopy(body)
        return copy.deepcopy(body)


async def test_a_leader_that_cannot_renew_gives_up_by_the_renew_deadline() -> None:
    kube = UnreachableAfterAcquire()
    me = LeaseElector(
        kube,  # type: ignore[arg-type]
        "ns",
        "lease",
        "me",
        lease_duration=1.0,
        renew_deadline=0.1,
        retry_period=0.01,
    )
    assert await me.try_acquire()
    renewed_at = asyncio.get_running_loop().time()
    kube.failing = True
    with pytest.raises(LostLeadership, match="could not renew"):
        await asyncio.wait_for(me.hold(), timeout=5.0)
    held_for = asyncio.get_running_loop().time() - renewed_at
    # A standby takes the Lease once it has not changed for lease_duration.
    assert held_for < me.lease_duration, f"still leader {held_for:.2f}s after the last renewal"
    # hold() sleeps retry_period before each attempt: ~renew_deadline / retry_period tries.
    assert len(kube.failed_at) <= me.renew_deadline / me.retry_period + 2
    assert kube.failed_at[-1] - renewed_at > me.renew_deadline
