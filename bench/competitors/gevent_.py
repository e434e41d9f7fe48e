"""gevent greenlets: gevent.spawn is the submit, Greenlet.get()/joinall the wait.

No monkey-patching (nothing here does I/O except the sleepers, which use gevent.sleep).
"""
from __future__ import annotations

import gevent  # ImportError -> not installed
import gevent.event

from common import Measurement, expect, fib_value, perf, rss_kib, settle
from competitors import Base

NOT_EXPRESSIBLE = {
    "W5b": "time.sleep (unpatched) blocks the hub: 10k sleepers run one after another (500 s)",
    "W7a": "gevent has its own hub, not asyncio",
    "W7b": "gevent has its own hub, not asyncio",
}


def version() -> str:
    return gevent.__version__


def noop():
    return None


def start():
    return 0


def add_one(prev):
    return prev.get() + 1


def child(i):
    return i


def fan(n):
    gs = [gevent.spawn(child, i) for i in range(n)]
    gevent.joinall(gs, raise_error=True)
    return sum(g.value for g in gs)


def fib(n):
    if n < 2:
        return n
    a = gevent.spawn(fib, n - 1)
    b = gevent.spawn(fib, n - 2)
    return a.get() + b.get()


class Impl(Base):
    def w1(self, n: int) -> float:
        t0 = perf()
        gs = [gevent.spawn(noop) for _ in range(n)]
        gevent.joinall(gs, raise_error=True)
        return perf() - t0

    def w2(self, n: int) -> float:
        t0 = perf()
        g = gevent.spawn(start)
        for _ in range(n):
            g = gevent.spawn(add_one, g)
        v = g.get()
        dt = perf() - t0
        expect(v == n, "chain")
        return dt

    def w3(self, n: int) -> float:
        t0 = perf()
        v = gevent.spawn(fan, n).get()
        dt = perf() - t0
        expect(v == n * (n - 1) // 2, "sum")
        return dt

    def w4(self, n: int) -> float:
        t0 = perf()
        v = gevent.spawn(fib, n).get()
        dt = perf() - t0
        expect(v == fib_value(n), "fib")
        return dt

    def w5(self, n: int) -> Measurement:
        t0 = perf()
        gs = [gevent.spawn(gevent.sleep, 0.05) for _ in range(n)]
        gevent.joinall(gs, raise_error=True)
        dt = perf() - t0
        return Measurement(dt, concurrency=n * 0.05 / dt)

    def w6(self, n: int) -> Measurement:
        blocker = gevent.event.AsyncResult()
        started = []

        def waiter():
            started.append(None)
            return blocker.get()

        settle()
        rss0 = rss_kib()
        t0 = perf()
        gs = [gevent.spawn(waiter) for _ in range(n)]
        while len(started) < n:
            gevent.sleep(0)
        dt = perf() - t0
        gevent.sleep(0.5)
        rss1 = rss_kib()
        self.dirty = True  # killing 100k greenlets one by one takes longer than the measurement
        return Measurement(dt, kib_per_exec=(rss1 - rss0) / n, rss_delta_kib=rss1 - rss0)
