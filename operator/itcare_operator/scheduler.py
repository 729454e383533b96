"""One timer wheel for all credentials: a heap of due times and a bounded worker pool.

A credential is never reconciled twice at once: a wake-up that arrives while it runs
is remembered and served right after. Ten thousand credentials cost ten thousand
heap entries, not ten thousand sleeping tasks. When more are due than there are free
slots, the most urgent go first: by ``priority`` (the expiry of the token each holds,
so an outage's end or a restart renews the tokens closest to lapsing first).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from math import inf

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        work: Callable[[Hashable], Awaitable[None]],
        *,
        concurrency: int = 32,
        clock: Callable[[], float] = time.time,
        priority: Callable[[Hashable], float] = lambda _key: inf,
    ) -> None:
        self._work = work
        self._clock = clock
        self._priority = priority
        self._heap: list[tuple[float, int, Hashable]] = []
        # Due and waiting for a slot, by priority (lowest first), then by due time.
        self._ready: list[tuple[float, float, int, Hashable]] = []
        self._ready_keys: set[Hashable] = set()
        self._due: dict[Hashable, tuple[float, int]] = {}
        self._seq = itertools.count()
        self._running: set[Hashable] = set()
        self._again: set[Hashable] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.heartbeat = time.monotonic()

    @property
    def busy(self) -> bool:
        """Whether a reconcile is under way."""
        return bool(self._tasks)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self, grace: float = 0.0) -> None:
        """Start nothing more; give the reconciles under way ``grace`` seconds to end.

        A reconcile cut between its Secret write and its status patch leaves a token
        that the status does not vouch for: the next instance cannot trust it and asks
        for another one (a token request per interrupted refresh, on every restart)."""
        # A flag as well as the cancel: Python 3.11's wait_for drops a cancel that
        # arrives as its wake-up completes, and the loop would go on.
        self._stopping = True
        self._changed.set()
        if self._loop_task:
            self._loop_task.cancel()
        if self._tasks and grace > 0:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(
            *self._tasks, *(t for t in [self._loop_task] if t), return_exceptions=True
        )

    def schedule(self, key: Hashable, when: float, *, earlier_only: bool = False) -> None:
        """Run ``key`` at unix time ``when`` (replacing its previous time)."""
        current = self._due.get(key)
        if earlier_only and current is not None and current[0] <= when:
            return
        seq = next(self._seq)
        self._due[key] = (when, seq)
        heapq.heappush(self._heap, (when, seq, key))
        if self._heap[0][1] == seq:
            self._changed.set()

    def now(self, key: Hashable) -> None:
        """Run ``key`` as soon as possible (once more right after, if it runs now)."""
        if key in self._running:
            # Not a heap entry: the run's own schedule() (its next refresh) would
            # replace it before the loop pops it, and the wake-up would be lost.
            self._again.add(key)
            return
        self.schedule(key, self._clock(), earlier_only=True)

    def cancel(self, key: Hashable) -> None:
        self._due.pop(key, None)
        self._again.discard(key)
        self._ready_keys.discard(key)

    def due_at(self, key: Hashable) -> float | None:
        entry = self._due.get(key)
        return entry[0] if entry else None

    def __len__(self) -> int:
        return len(self._due) + len(self._ready_keys)

    def next_due(self) -> float | None:
        """The earliest time anything is scheduled for (None: nothing is)."""
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][:2]:
            heapq.heappop(self._heap)  # superseded or cancelled
        return self._heap[0][0] if self._heap else None

    def _collect_due(self, now: float) -> None:
        """Move what is due by ``now`` to the ready heap (ordered by priority)."""
        while (when := self.next_due()) is not None and when <= now:
            when, seq, key = heapq.heappop(self._heap)
            del self._due[key]
            if key not in self._ready_keys:
                self._ready_keys.add(key)
                heapq.heappush(self._ready, (self._priority(key), when, seq, key))

    def _next_ready(self) -> Hashable | None:
        while self._ready:
            *_order, key = heapq.heappop(self._ready)
            if key in self._ready_keys:
                self._ready_keys.discard(key)
                return key
        return None

    async def run_due(self) -> list[Hashable]:
        """Run every key due by the clock now, one after the other, without the loop,
        most urgent first.

        For a driver that owns time (a fake clock, no real sleeps): the work and its
        safety net are the loop's own. A key its own work schedules again for now is
        left for the next call, so one call always ends. Never use it with :meth:`start`.
        """
        self._collect_due(self._clock())
        batch: list[Hashable] = []
        while (key := self._next_ready()) is not None:
            batch.append(key)
        for key in batch:
            await self._slots.acquire()
            self._running.add(key)
            await self._run(key)
        return batch

    async def _loop(self) -> None:
        while not self._stopping:
            self.heartbeat = time.monotonic()
            self._changed.clear()
            self._collect_due(self._clock())
            # A slot first, then the most urgent key ready: what became due while the
            # slots were full competes by priority, not by arrival.
            while self._ready_keys and not self._slots.locked() and not self._stopping:
                key = self._next_ready()
                if key is None:
                    break
                if key in self._running:
                    self._again.add(key)
                    continue
                await self._slots.acquire()
                self._running.add(key)
                task = asyncio.create_task(self._run(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            timeout = min(self._heap[0][0] - self._clock(), 5.0) if self._heap else 5.0
            if timeout > 0 or self._ready_keys:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), max(timeout, 0.0) or 5.0)

    async def _run(self, key: Hashable) -> None:
        try:
            await self._work(key)
        except asyncio.CancelledError:
            raise
        except Exception:  # the safety net: one credential's bug must not stop the others
            log.exception("reconcile of %s failed unexpectedly; retrying in 30s", key)
            self.schedule(key, self._clock() + 30, earlier_only=True)
        finally:
            self._running.discard(key)
            self._slots.release()
            self._changed.set()  # a slot is free: the loop dispatches the next ready key
            if key in self._again:
                self._again.discard(key)
                self.now(key)
