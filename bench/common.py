"""Helpers shared by the benchmark worker and the competitor implementations.

Everything here runs inside the per-case worker subprocess (bench/worker.py).
"""
from __future__ import annotations

import gc
import os
import resource
import time

_PAGE = os.sysconf("SC_PAGE_SIZE")


class NotSupported(Exception):
    """The competitor cannot express this workload (the message says why)."""


class NotYetImplemented(Exception):
    """distaff lacks an API this workload needs (yet). Reported as 'n/a: not yet implemented'."""


class Dirty(Exception):
    pass


def rss_kib() -> float:
    """Current resident set size of this process, in KiB (from /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 1024.0


def maxrss_kib() -> float:
    """Peak resident set size of this process so far, in KiB."""
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def fib_tasks(n: int) -> int:
    """Number of calls (tasks) recursive fib(n) makes."""
    a, b = 1, 1  # T(0), T(1)
    if n < 2:
        return 1
    for _ in range(n - 1):
        a, b = b, a + b + 1
    return b


def fib_value(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def expect(cond: bool, what: str) -> None:
    """Result check: a workload whose result is wrong is an error, never a number."""
    if not cond:
        raise AssertionError("wrong result: " + what)


def settle(seconds: float = 0.2) -> None:
    gc.collect()
    time.sleep(seconds)


def wait_until(pred, timeout: float, what: str, poll: float = 0.005, sleep=time.sleep) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting for " + what)
        sleep(poll)


class Measurement(dict):
    """What a workload method returns: seconds (the timed part) plus optional extras."""

    def __init__(self, seconds: float, **extra):
        super().__init__(seconds=seconds, **extra)


perf = time.perf_counter


def sync_calls(call, n: int, gap: float = 0.001) -> "Measurement":
    """S1: n synchronous calls from the main thread, each after `gap` seconds of idleness (the
    engine's threads park in between, as they do between a script's calls). Returns the total of
    the timed calls and, as extras, the median and 90th percentile latency in µs."""
    import statistics

    lat = []
    for i in range(n):
        time.sleep(gap)
        t0 = perf()
        v = call(i)
        lat.append(perf() - t0)
        if v != i:
            raise AssertionError(f"wrong result: call({i}) gave {v!r}")
    lat.sort()
    return Measurement(sum(lat), median_us=statistics.median(lat) * 1e6,
                       p90_us=lat[int(len(lat) * 0.9)] * 1e6)
