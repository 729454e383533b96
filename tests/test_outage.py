"""The outage policy: one prober per down origin, release earliest-expiry-first,
dispatch earliest-expiry-first when the slots are full (injected clocks only)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Hashable

import httpx

from itcare_operator.outage import PROBE_INTERVAL, OriginGate
from itcare_operator.scheduler import Scheduler
from tests.fake_kube import Clock, FakeKube, Operator, TokenServer, credential, source_secret


def test_an_up_origin_admits_everyone() -> None:
    gate = OriginGate()
    assert all(gate.admit(0.0, key) for key in "abc")


def test_a_down_origin_admits_one_prober_a_second() -> None:
    gate = OriginGate()
    gate.failed(100.0)
    assert gate.admit(100.0, "a") is False  # the interval runs from the failure
    assert gate.admit(101.0, "a") is True  # the prober
    assert gate.admit(101.5, "b") is False
    assert gate.admit(101.6, "a") is True  # the prober retries on its own backoff
    assert gate.admit(101.0 + PROBE_INTERVAL + 0.7, "b") is True  # a new prober, later
    assert gate.admit(103.0, "a") is False  # b probes now


def test_retry_after_postpones_the_next_prober() -> None:
    gate = OriginGate()
    gate.failed(100.0, retry_after=30.0)
    assert gate.admit(129.0, "a") is False
    assert gate.admit(130.0, "a") is True


def test_the_first_answer_releases_the_waiters_earliest_expiry_first() -> None:
    gate = OriginGate()
    gate.failed(0.0)
    woken: list[str] = []
    for key, expiry in (("late", 900.0), ("none", float("inf")), ("soon", 100.0)):
        gate.wait(key, expiry, lambda key=key: woken.append(key))
    gate.forget("none")
    assert gate.succeeded() == 2
    assert woken == ["soon", "late"] and not gate.down and len(gate) == 0
    assert gate.admit(0.5, "anyone")


async def test_when_slots_are_full_the_most_urgent_runs_first() -> None:
    ran: list[Hashable] = []
    urgency = {"a": 300.0, "b": 100.0, "c": 200.0}

    async def work(key: Hashable) -> None:
        ran.append(key)

    s = Scheduler(work, concurrency=1, clock=lambda: 1000.0, priority=lambda k: urgency[str(k)])
    for key in "abc":
        s.schedule(key, 999.0)
    assert await s.run_due() == ["b", "c", "a"]
    # the loop too: all due at once, one slot
    s.start()
    for key in "abc":
        s.schedule(key, 999.0)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(ran) == 6:
            break
    await s.stop()
    assert ran[3:] == ["b", "c", "a"]


async def test_during_an_outage_one_credential_probes_and_the_rest_wait() -> None:
    """20 credentials whose refresh falls in a 10-minute outage: about one request a
    second reaches the endpoint (each credential on its own backoff sent hundreds),
    and when it answers again all are served, the earliest expiry first."""
    kube, clock, tokens = FakeKube(), Clock(), TokenServer()
    names = [f"c{i:02d}" for i in range(20)]
    kube.put("team-a", source_secret("team-a"))
    for name in names:
        kube.apply_credential(credential("team-a", name=name, targetSecret={"name": name}))
    op = Operator(kube, clock, tokens)
    await op.start()
    assert len(tokens.requests) == 20
    outage_start = clock.now + dt.timedelta(seconds=500)
    await op.advance(500)
    tokens.answer(*[httpx.Response(503)] * 100_000)
    sent = len(tokens.requests)
    await op.advance(1200)  # every token expires during the outage
    during = len(tokens.requests) - sent
    assert during <= 1200 / PROBE_INTERVAL + 20, during
    tokens.script.clear()
    served = len(tokens.requests)
    await op.advance(10)
    assert len(tokens.requests) - served >= 20
    for name in names:
        status = kube.status_of("team-a", name)
        assert status["conditions"][0]["reason"] == "TokenValid", (name, status)
    assert outage_start < clock.now
