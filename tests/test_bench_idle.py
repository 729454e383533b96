"""The idle benchmark's CPU clock (unit tier)."""

from __future__ import annotations

import os
import time

from bench.idle import cpu_ns


def test_cpu_ns_counts_work_in_nanoseconds_and_not_sleep() -> None:
    before = cpu_ns(os.getpid())
    time.sleep(0.2)
    slept = cpu_ns(os.getpid()) - before
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    worked = cpu_ns(os.getpid()) - before - slept
    assert 0 <= slept < 20_000_000  # a sleep costs next to nothing
    assert worked >= 40_000_000  # 50 ms of work, in ns (not 10 ms ticks)


def test_cpu_ns_of_a_process_that_is_gone_is_zero() -> None:
    assert cpu_ns(2**22 + 12345) == 0
