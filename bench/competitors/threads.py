"""concurrent.futures.ThreadPoolExecutor, written the way its users write it.

Pool sizes: the default (min(32, cores + 4) = 6 here) for CPU-ish workloads; 8 for W4 (the size
the issue names: any bounded pool deadlocks there); 1,000 threads for the 50 ms sleepers (W5: a
user sizes an I/O pool up); one thread per waiter for W6 (a blocked thread per suspended call).
"""
from __future__ import annotations

import asyncio
import platform
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait

from common import Measurement, NotSupported, expect, fib_value, perf, rss_kib, settle, wait_until
from competitors import Base


def version() -> str:
    return "stdlib (Python " + platform.python_version() + ")"


NOT_EXPRESSIBLE: dict = {}


def noop():
    return None


def start():
    return 0


def add_one(prev):
    return prev.result() + 1


def child(i):
    return i


class Impl(Base):
    def setup(self, workload: str) -> None:
        size = {"W4": 8, "W5": 1000, "W5b": 1000}.get(workload)
        self.pool = ThreadPoolExecutor(max_workers=size)
        self.info["max_workers"] = self.pool._max_workers
        if workload in ("W7a", "W7b"):
            self.loop = asyncio.new_event_loop()

    def teardown(self) -> None:
        self.pool.shutdown(wait=True)
        if getattr(self, "loop", None) is not None:
            self.loop.close()

    def s1(self, n: int) -> Measurement:
        from common import sync_calls
        pool = self.pool
        pool.submit(noop).result()  # a pool thread exists (as distaff's setup starts its worker)
        self.info["call"] = "pool.submit(f, x).result()"
        return sync_calls(lambda i: pool.submit(child, i).result(), n)

    def w1(self, n: int) -> float:
        pool = self.pool
        t0 = perf()
        futs = [pool.submit(noop) for _ in range(n)]
        done, pending = wait(futs)
        dt = perf() - t0
        expect(not pending, "pending")
        return dt

    def w2(self, n: int) -> float:
        pool = self.pool
        t0 = perf()
        f = pool.submit(start)
        for _ in range(n):
            f = pool.submit(add_one, f)
        v = f.result()
        dt = perf() - t0
        expect(v == n, f"chain {v}")
        return dt

    def w3(self, n: int) -> float:
        pool = self.pool

        def fan(n):
            futs = [pool.submit(child, i) for i in range(n)]
            return sum(f.result() for f in futs)

        t0 = perf()
        v = pool.submit(fan, n).result()
        dt = perf() - t0
        expect(v == n * (n - 1) // 2, "sum")
        return dt

    def w4(self, n: int) -> float:
        pool = self.pool

        def fib(n):
            if n < 2:
                return n
            a = pool.submit(fib, n - 1)
            b = pool.submit(fib, n - 2)
            return a.result() + b.result()

        t0 = perf()
        v = pool.submit(fib, n).result()  # deadlocks once every pool thread waits on a child
        dt = perf() - t0
        expect(v == fib_value(n), "fib")
        return dt

    def w5(self, n: int) -> Measurement:
        pool = self.pool
        t0 = perf()
        futs = [pool.submit(time.sleep, 0.05) for _ in range(n)]
        wait(futs)
        dt = perf() - t0
        return Measurement(dt, concurrency=n * 0.05 / dt)

    w5b = w5

    def w6(self, n: int) -> Measurement:
        # One thread per suspended waiter: each blocks in Future.result() on a future never set.
        blocker: Future = Future()
        started = []

        def waiter():
            started.append(None)
            return blocker.result()

        self.pool.shutdown()
        pool = ThreadPoolExecutor(max_workers=n)
        self.info["max_workers"] = "one thread per waiter (ThreadPoolExecutor(max_workers=n))"
        self.dirty = True
        settle()
        rss0 = rss_kib()
        t0 = perf()
        try:
            for _ in range(n):
                pool.submit(waiter)
        except RuntimeError as e:
            raise RuntimeError(f"{e} after {len(started)} threads") from None
        wait_until(lambda: len(started) >= n, 120, f"{n} waiting threads")
        dt = perf() - t0
        settle(0.5)
        rss1 = rss_kib()
        return Measurement(dt, kib_per_exec=(rss1 - rss0) / n, rss_delta_kib=rss1 - rss0)

    def w7a(self, n: int) -> float:
        pool, loop = self.pool, self.loop

        async def main():
            t0 = perf()
            res = await asyncio.gather(*[loop.run_in_executor(pool, noop) for _ in range(n)])
            dt = perf() - t0
            expect(len(res) == n, "len")
            return dt

        return loop.run_until_complete(main())

    def w7b(self, n: int) -> float:
        pool, loop = self.pool, self.loop

        def task1(*args):
            return time.time()

        task2 = task3 = task1

        async def run_wf(i):
            a, b = await asyncio.gather(loop.run_in_executor(pool, task1),
                                        loop.run_in_executor(pool, task2))
            return await loop.run_in_executor(pool, task3, a, b)

        async def main():
            t0 = perf()
            res = await asyncio.gather(*[run_wf(i) for i in range(n)])
            dt = perf() - t0
            expect(len(res) == n, "len")
            return dt

        return loop.run_until_complete(main())
