"""The AsyncFlow program of bench/ (W1-W7b), written once against AsyncFlow's API and run on two
libraries: radical.asyncflow (asyncflow_.py) and distaff.asyncflow (asyncflow_distaff_.py), where
only the module the API comes from differs.

AsyncFlow is asyncio-only: every workload runs inside one event loop. function_task bodies must be
``async def``; the Local backend runs each one on a pool thread. Blocks (``@flow.block``) run on the
engine's own loop and may call and await tasks and other blocks: W3's parent and W4's recursion are
blocks. Task futures passed as arguments are dependencies, resolved to values.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from common import Measurement, expect, fib_value, perf, rss_kib
from competitors import Base

NOT_EXPRESSIBLE = {
    "W5b": "function_task bodies must be async def (time.sleep would need a wrapper coroutine); "
           "W5 already runs each body on a pool thread",
}


class AsyncFlowImpl(Base):
    lib = None  # the module with LocalExecutionBackend and WorkflowEngine

    def setup(self, workload: str) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        pool = ThreadPoolExecutor(max_workers=1000) if workload == "W5" else ThreadPoolExecutor()
        self.info["executor_threads"] = pool._max_workers

        async def mk():
            backend = await self.lib.LocalExecutionBackend(pool)
            return await self.lib.WorkflowEngine.create(backend=backend)
        self.flow = flow = self.loop.run_until_complete(mk())

        @flow.function_task
        async def noop():
            return None

        @flow.function_task
        async def start():
            return 0

        @flow.function_task
        async def add_one(x):
            return x + 1

        @flow.function_task
        async def child(i):
            return i

        @flow.block
        async def fan(n):
            return sum(await asyncio.gather(*[child(i) for i in range(n)]))

        @flow.block
        async def fib(n):
            if n < 2:
                return n
            a = fib(n - 1)
            b = fib(n - 2)
            return (await a) + (await b)

        @flow.function_task
        async def sleeper(s):
            await asyncio.sleep(s)
            return 1

        @flow.function_task
        async def task1(*args):
            return time.time()

        @flow.function_task
        async def task2(*args):
            return time.time()

        @flow.function_task
        async def task3(*args):
            return time.time()

        self.t = dict(noop=noop, start=start, add_one=add_one, fan=fan, fib=fib, sleeper=sleeper,
                      task1=task1, task2=task2, task3=task3)

        async def warm():
            await noop()
        self.loop.run_until_complete(warm())

    def teardown(self) -> None:
        self.loop.run_until_complete(self.flow.shutdown())
        self.loop.close()

    def _run(self, coro):
        return self.loop.run_until_complete(coro)

    def w1(self, n: int) -> float:
        # AsyncFlow is asyncio-only: "submit from the main thread, then wait" is the same
        # gather as W7a.
        return self.w7a(n)

    def w2(self, n: int) -> float:
        start, add_one = self.t["start"], self.t["add_one"]

        async def main():
            t0 = perf()
            f = start()
            for _ in range(n):
                f = add_one(f)
            v = await f
            dt = perf() - t0
            expect(v == n, f"chain {v}")
            return dt
        return self._run(main())

    def w3(self, n: int) -> float:
        async def main():
            t0 = perf()
            v = await self.t["fan"](n)
            dt = perf() - t0
            expect(v == n * (n - 1) // 2, "sum")
            return dt
        return self._run(main())

    def w4(self, n: int) -> float:
        async def main():
            t0 = perf()
            v = await self.t["fib"](n)
            dt = perf() - t0
            expect(v == fib_value(n), "fib")
            return dt
        return self._run(main())

    def w5(self, n: int) -> Measurement:
        sleeper = self.t["sleeper"]

        async def main():
            t0 = perf()
            res = await asyncio.gather(*[sleeper(0.05) for _ in range(n)])
            dt = perf() - t0
            expect(sum(res) == n, "sleepers")
            return dt
        dt = self._run(main())
        return Measurement(dt, concurrency=n * 0.05 / dt)

    def w6(self, n: int) -> Measurement:
        flow = self.flow
        started = []

        async def main():
            blocker = self.loop.create_future()

            @flow.block
            async def waiter():
                started.append(None)
                return await blocker

            self.dirty = True
            rss0 = rss_kib()
            t0 = perf()
            futs = [waiter() for _ in range(n)]
            while len(started) < n:
                await asyncio.sleep(0.001)
            dt = perf() - t0
            await asyncio.sleep(0.5)
            rss1 = rss_kib()
            return Measurement(dt, kib_per_exec=(rss1 - rss0) / n, rss_delta_kib=rss1 - rss0)
        return self._run(main())

    def w7a(self, n: int) -> float:
        noop = self.t["noop"]

        async def main():
            t0 = perf()
            res = await asyncio.gather(*[noop() for _ in range(n)])
            dt = perf() - t0
            expect(len(res) == n, "len")
            return dt
        return self._run(main())

    def w7b(self, n: int) -> float:
        task1, task2, task3 = self.t["task1"], self.t["task2"], self.t["task3"]

        async def run_wf(i):
            t3 = task3(task1(), task2())
            return await t3

        async def main():
            t0 = perf()
            res = await asyncio.gather(*[run_wf(i) for i in range(n)])
            dt = perf() - t0
            expect(len(res) == n and all(isinstance(r, float) for r in res), "results")
            return dt
        return self._run(main())
