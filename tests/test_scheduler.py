"""The scheduler: due order, no concurrent runs of one key, superseded entries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable

import pytest

from itcare_operator.scheduler import Scheduler


async def test_runs_in_due_order_and_never_twice_at_once() -> None:
    ran: list[Hashable] = []
    running: set[Hashable] = set()
    overlap = False

    async def work(key: Hashable) -> None:
        nonlocal overlap
        overlap |= key in running
        running.add(key)
        ran.append(key)
        await asyncio.sleep(0.05)
        running.discard(key)

    s = Scheduler(work, concurrency=4)
    s.start()
    now = time.time()
    s.schedule("b", now + 0.2)
    s.schedule("a", now + 0.1)
    s.schedule("c", now + 5)
    s.schedule("c", now + 0.3)  # supersedes the later time
    await asyncio.sleep(0.5)
    assert ran == ["a", "b", "c"]
    s.now("a")
    s.now("a")  # coalesced while due
    await asyncio.sleep(0.01)
    s.now("a")  # arrives while running: served right after, once
    await asyncio.sleep(0.3)
    await s.stop()
    assert ran.count("a") == 3 and not overlap


async def test_cancel_and_failure_retry() -> None:
    calls: list[str] = []

    async def work(key: Hashable) -> None:
        calls.append(str(key))
        if key == "boom":
            raise RuntimeError("bug")

    clock = [1000.0]
    s = Scheduler(work, clock=lambda: clock[0])
    s.start()
    s.schedule("gone", 1000.0 + 0.0)
    s.cancel("gone")
    s.now("boom")
    await asyncio.sleep(0.1)
    assert calls == ["boom"]
    assert s.due_at("boom") == 1030.0  # the safety net retries in 30 s
    await s.stop()


async def test_run_due_runs_what_is_due_by_the_clock_in_order_and_always_ends() -> None:
    now = [1000.0]
    ran: list[Hashable] = []
    s: Scheduler

    async def work(key: Hashable) -> None:
        ran.append(key)
        if key == "again":
            s.schedule("again", now[0])  # due again at once: left for the next call
        if key == "boom":
            raise RuntimeError("a bug in one reconcile")

    s = Scheduler(work, clock=lambda: now[0])
    s.schedule("late", 1010.0)
    s.schedule("b", 1000.0)
    s.schedule("a", 999.0)
    s.schedule("gone", 998.0)
    s.cancel("gone")
    s.schedule("again", 1000.0)
    s.schedule("boom", 1000.0)
    assert s.next_due() == 999.0  # the cancelled entry does not count
    assert await s.run_due() == ["a", "b", "again", "boom"]
    assert ran == ["a", "b", "again", "boom"]
    assert s.due_at("again") == 1000.0 and s.due_at("boom") == 1030.0  # the safety net's retry
    assert await s.run_due() == ["again"]
    now[0] = 1010.0
    assert "late" in await s.run_due()


async def test_stop_lets_the_reconciles_under_way_finish_and_starts_none() -> None:
    """A refresh cut between its Secret write and its status patch costs a token
    request on restart: stop() drains what runs, within its grace."""
    steps: list[str] = []
    started = asyncio.Event()
    clock = [1000.0]

    async def work(key: Hashable) -> None:
        steps.append(f"{key}: write")
        started.set()
        await asyncio.sleep(0.05)  # the status patch's round trip
        steps.append(f"{key}: status")

    s = Scheduler(work, clock=lambda: clock[0])
    s.start()
    s.now("a")
    await started.wait()
    s.schedule("b", 1000.0)  # due, and its wake-up races the stop: never started
    await asyncio.wait_for(s.stop(grace=5), 10)  # bounded: a stop must end
    assert steps == ["a: write", "a: status"]


async def test_stop_cancels_what_outlasts_the_grace() -> None:
    steps: list[str] = []
    started = asyncio.Event()

    async def work(key: Hashable) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
            steps.append("done")
        except asyncio.CancelledError:
            steps.append("cancelled")
            raise

    s = Scheduler(work)
    s.start()
    s.now("slow")
    await started.wait()
    await s.stop(grace=0.05)
    assert steps == ["cancelled"]


async def test_busy_while_a_reconcile_runs() -> None:
    release = asyncio.Event()

    async def work(key: Hashable) -> None:
        await release.wait()

    s = Scheduler(work)
    s.start()
    assert not s.busy
    s.now("a")
    for _ in range(10):
        await asyncio.sleep(0)
    assert s.busy
    release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert not s.busy
    await s.stop()


async def test_loop_lag_is_sampled_densely_only_while_reconciles_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each sample wakes the process: 10 a second while idle were 80 % of an idle
    operator's CPU. Idle, none within 0.45 s; busy, one per 100 ms."""
    from itcare_operator.runner import Runtime
    from itcare_operator.settings import Settings
    from tests.fake_kube import FakeKube

    busy = [False]
    monkeypatch.setattr(Scheduler, "busy", property(lambda self: busy[0]), raising=False)
    runtime = Runtime(Settings(), FakeKube())  # type: ignore[arg-type]

    def samples() -> float:
        value = runtime.metrics.registry.get_sample_value("itcare_event_loop_lag_seconds_count")
        return value or 0.0

    task = asyncio.create_task(runtime._measure_loop_lag())
    try:
        await asyncio.sleep(0.45)
        assert samples() == 0  # the first one comes at 1 s
        busy[0] = True
        await asyncio.sleep(1.4)  # then one per 100 ms: 1 + 8 by now, unless starved
        assert samples() >= 5
    finally:
        task.cancel()


async def test_a_wake_up_while_running_survives_the_runs_own_schedule() -> None:
    runs = 0
    release = asyncio.Event()

    async def work(key: Hashable) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            await release.wait()  # an API call under way
        s.schedule(key, time.time() + 3600)  # as _settle does: the next refresh

    s = Scheduler(work)
    s.start()
    s.now("k")
    while not runs:
        await asyncio.sleep(0.01)
    s.now("k")  # a watch event while the reconcile runs...
    release.set()  # ...and its API call returns in the same loop iteration
    await asyncio.sleep(0.5)
    await s.stop()
    assert runs == 2


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
