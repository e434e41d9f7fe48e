"""Ray, local (ray.init(num_cpus=2)).

Remote functions; ObjectRefs passed as arguments are dependencies (resolved to values); nested
tasks call ray.get inside a task (Ray releases the task's CPU while it blocks and starts more
worker processes). Concurrent I/O waits use Ray's recommended shape: an async actor
(max_concurrency=10000) whose method awaits asyncio.sleep.
"""
from __future__ import annotations

import asyncio
import os
import time

os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
import ray  # ImportError -> not installed

from common import Measurement, expect, fib_value, perf
from competitors import Base

NOT_EXPRESSIBLE = {
    "W5b": "Ray tasks are processes; a blocking sleep holds one of num_cpus=2 slots: W5 uses an async actor",
    "W6-10k": "every task blocked in ray.get is a worker process (Ray starts another to keep the CPU busy): "
              "10k suspended waiters means 10k processes",
    "W6-100k": "as W6-10k",
}


def version() -> str:
    return ray.__version__


@ray.remote
def noop():
    return None


@ray.remote
def start():
    return 0


@ray.remote
def add_one(x):
    return x + 1


@ray.remote
def child(i):
    return i


@ray.remote
def fan(n):
    return sum(ray.get([child.remote(i) for i in range(n)]))


@ray.remote
def fib(n):
    if n < 2:
        return n
    a = fib.remote(n - 1)
    b = fib.remote(n - 2)
    return ray.get(a) + ray.get(b)


@ray.remote
def task1(*args):
    return time.time()


@ray.remote
def task2(*args):
    return time.time()


@ray.remote
def task3(*args):
    return time.time()


@ray.remote
class Sleeper:
    async def sleep(self, s):
        await asyncio.sleep(s)
        return 1


class Impl(Base):
    def setup(self, workload: str) -> None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        self.info["num_cpus"] = os.cpu_count()
        ray.get([noop.remote() for _ in range(20)])
        if workload == "W5":
            self.sleeper = Sleeper.options(max_concurrency=10000).remote()
            ray.get(self.sleeper.sleep.remote(0))
            self.info["W5"] = "async actor, max_concurrency=10000, asyncio.sleep"
        if workload in ("W7a", "W7b"):
            self.loop = asyncio.new_event_loop()

    def teardown(self) -> None:
        ray.shutdown()

    def w1(self, n: int) -> float:
        t0 = perf()
        refs = [noop.remote() for _ in range(n)]
        res = ray.get(refs)
        dt = perf() - t0
        expect(len(res) == n, "len")
        return dt

    def w2(self, n: int) -> float:
        t0 = perf()
        r = start.remote()
        for _ in range(n):
            r = add_one.remote(r)
        v = ray.get(r)
        dt = perf() - t0
        expect(v == n, "chain")
        return dt

    def w3(self, n: int) -> float:
        t0 = perf()
        v = ray.get(fan.remote(n))
        dt = perf() - t0
        expect(v == n * (n - 1) // 2, "sum")
        return dt

    def w4(self, n: int) -> float:
        t0 = perf()
        v = ray.get(fib.remote(n))
        dt = perf() - t0
        expect(v == fib_value(n), "fib")
        return dt

    def w5(self, n: int) -> Measurement:
        s = self.sleeper
        t0 = perf()
        res = ray.get([s.sleep.remote(0.05) for _ in range(n)])
        dt = perf() - t0
        expect(sum(res) == n, "sleepers")
        return Measurement(dt, concurrency=n * 0.05 / dt)

    def w7a(self, n: int) -> float:
        async def main():
            t0 = perf()
            res = await asyncio.gather(*[noop.remote() for _ in range(n)])
            dt = perf() - t0
            expect(len(res) == n, "len")
            return dt
        return self.loop.run_until_complete(main())

    def w7b(self, n: int) -> float:
        async def run_wf(i):
            t3 = task3.remote(task1.remote(), task2.remote())
            return await t3

        async def main():
            t0 = perf()
            res = await asyncio.gather(*[run_wf(i) for i in range(n)])
            dt = perf() - t0
            expect(len(res) == n, "len")
            return dt
        return self.loop.run_until_complete(main())
