"""asyncio coroutines and tasks (params {"loop": "asyncio"} or {"loop": "uvloop"}).

"Tasks" are coroutines scheduled with asyncio.create_task, the closest asyncio has to submitted
work items; waiting is await/gather. Single-threaded: nothing runs in parallel, and a body that
calls time.sleep stops every task (so W5b is not run: it would serialise all sleepers).
"""
from __future__ import annotations

import asyncio
import platform

from common import Measurement, expect, fib_value, perf, rss_kib, settle
from competitors import Base

NOT_EXPRESSIBLE = {
    "W5b": "time.sleep in a coroutine blocks the whole event loop: 10k sleepers run one after another (500 s)",
}


def version() -> str:
    return "stdlib (Python " + platform.python_version() + ")"


async def noop():
    return None


async def start():
    return 0


async def add_one(prev):
    return (await prev) + 1


async def child(i):
    return i


async def fan(n):
    ts = [asyncio.create_task(child(i)) for i in range(n)]
    return sum(await asyncio.gather(*ts))


async def fib(n):
    if n < 2:
        return n
    a = asyncio.create_task(fib(n - 1))
    b = asyncio.create_task(fib(n - 2))
    return (await a) + (await b)


async def sleeper(s):
    await asyncio.sleep(s)


class Impl(Base):
    def setup(self, workload: str) -> None:
        kind = self.params.get("loop", "asyncio")
        if kind == "uvloop":
            import uvloop
            self.loop = uvloop.new_event_loop()
            self.info["loop"] = "uvloop " + uvloop.__version__
        else:
            self.loop = asyncio.new_event_loop()
            self.info["loop"] = "asyncio default loop"
        asyncio.set_event_loop(self.loop)

    def teardown(self) -> None:
        self.loop.close()

    def _run(self, coro):
        return self.loop.run_until_complete(coro)

    def w1(self, n: int) -> float:
        async def main():
            t0 = perf()
            ts = [asyncio.create_task(noop()) for _ in range(n)]
            await asyncio.gather(*ts)
            return perf() - t0
        return self._run(main())

    def w2(self, n: int) -> float:
        async def main():
            t0 = perf()
            t = asyncio.create_task(start())
            for _ in range(n):
                t = asyncio.create_task(add_one(t))
            v = await t
            dt = perf() - t0
            expect(v == n, "chain")
            return dt
        return self._run(main())

    def w3(self, n: int) -> float:
        async def main():
            t0 = perf()
            v = await asyncio.create_task(fan(n))
            dt = perf() - t0
            expect(v == n * (n - 1) // 2, "sum")
            return dt
        return self._run(main())

    def w4(self, n: int) -> float:
        async def main():
            t0 = perf()
            v = await asyncio.create_task(fib(n))
            dt = perf() - t0
            expect(v == fib_value(n), "fib")
            return dt
        return self._run(main())

    def w5(self, n: int) -> Measurement:
        async def main():
            t0 = perf()
            await asyncio.gather(*[asyncio.create_task(sleeper(0.05)) for _ in range(n)])
            return perf() - t0
        dt = self._run(main())
        return Measurement(dt, concurrency=n * 0.05 / dt)

    def w6(self, n: int) -> Measurement:
        started = []

        async def waiter(fut):
            started.append(None)
            return await fut

        async def main():
            blocker = self.loop.create_future()
            settle()
            rss0 = rss_kib()
            t0 = perf()
            ts = [asyncio.create_task(waiter(blocker)) for _ in range(n)]
            while len(started) < n:
                await asyncio.sleep(0)
            dt = perf() - t0
            await asyncio.sleep(0.5)
            rss1 = rss_kib()
            for t in ts:
                t.cancel()
            await asyncio.gather(*ts, return_exceptions=True)
            return Measurement(dt, kib_per_exec=(rss1 - rss0) / n, rss_delta_kib=rss1 - rss0)
        return self._run(main())

    def w7a(self, n: int) -> float:
        async def main():
            t0 = perf()
            res = await asyncio.gather(*[noop() for _ in range(n)])
            dt = perf() - t0
            expect(len(res) == n, "len")
            return dt
        return self._run(main())

    def w7b(self, n: int) -> float:
        import time

        async def task1(*args):
            return time.time()

        task2 = task3 = task1

        async def run_wf(i):
            t1 = asyncio.create_task(task1())
            t2 = asyncio.create_task(task2())
            return await task3(await t1, await t2)

        async def main():
            t0 = perf()
            res = await asyncio.gather(*[run_wf(i) for i in range(n)])
            dt = perf() - t0
            expect(len(res) == n, "len")
            return dt
        return self._run(main())
