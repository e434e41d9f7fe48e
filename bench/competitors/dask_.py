"""Dask distributed on a LocalCluster.

params {"processes": false}: one worker process-less cluster with 2 threads (LocalCluster
processes=False, threads_per_worker=2); {"processes": true}: 2 worker processes x 1 thread.
Futures passed as arguments are dependencies (Dask resolves them to values); tasks that launch
tasks use worker_client() (which secedes the calling thread from the pool while it waits).
"""
from __future__ import annotations

import asyncio
import time

import dask  # ImportError -> not installed
import distributed
from distributed import Client, LocalCluster, wait, worker_client

from common import Measurement, expect, fib_value, perf
from competitors import Base

NOT_EXPRESSIBLE = {
    "W5b": "Dask tasks run on worker threads: W5 already uses time.sleep (async def tasks are run "
           "to completion on a thread, not concurrently)",
    "W6-10k": "every waiting task holds a worker thread (worker_client secedes and starts another): "
              "10k suspended waiters means 10k OS threads in the worker",
    "W6-100k": "as W6-10k",
}


def version() -> str:
    return f"dask {dask.__version__}, distributed {distributed.__version__}"


def noop():
    return None


def start():
    return 0


def add_one(x):
    return x + 1


def child(i):
    return i


def fan(n):
    with worker_client() as c:
        fs = [c.submit(child, i, pure=False) for i in range(n)]
        return sum(c.gather(fs))


def fib(n):
    if n < 2:
        return n
    with worker_client() as c:
        a = c.submit(fib, n - 1, pure=False)
        b = c.submit(fib, n - 2, pure=False)
        return a.result() + b.result()


def task1(*args):
    return time.time()


def task2(*args):
    return time.time()


def task3(*args):
    return time.time()


class Impl(Base):
    def _cluster_kw(self):
        if self.params.get("processes"):
            return dict(processes=True, n_workers=2, threads_per_worker=1)
        return dict(processes=False, n_workers=1, threads_per_worker=2)

    def setup(self, workload: str) -> None:
        kw = self._cluster_kw()
        self.info["cluster"] = kw
        self.asynchronous = workload in ("W7a", "W7b")
        if self.asynchronous:
            self.loop = asyncio.new_event_loop()

            async def mk():
                cl = await LocalCluster(dashboard_address=":0", asynchronous=True, **kw)
                c = await Client(cl, asynchronous=True)
                return cl, c
            self.cluster, self.client = self.loop.run_until_complete(mk())
        else:
            self.cluster = LocalCluster(dashboard_address=":0", **kw)
            self.client = Client(self.cluster)
            wait([self.client.submit(noop, pure=False) for _ in range(20)])

    def teardown(self) -> None:
        if self.asynchronous:
            async def close():
                await self.client.close()
                await self.cluster.close()
            self.loop.run_until_complete(close())
            self.loop.close()
        else:
            self.client.close()
            self.cluster.close()

    def w1(self, n: int) -> float:
        c = self.client
        t0 = perf()
        fs = [c.submit(noop, pure=False) for _ in range(n)]
        wait(fs)
        dt = perf() - t0
        expect(all(f.status == "finished" for f in fs), "status")
        return dt

    def w2(self, n: int) -> float:
        c = self.client
        t0 = perf()
        f = c.submit(start, pure=False)
        for _ in range(n):
            f = c.submit(add_one, f, pure=False)
        v = f.result()
        dt = perf() - t0
        expect(v == n, "chain")
        return dt

    def w3(self, n: int) -> float:
        t0 = perf()
        v = self.client.submit(fan, n, pure=False).result()
        dt = perf() - t0
        expect(v == n * (n - 1) // 2, "sum")
        return dt

    def w4(self, n: int) -> float:
        t0 = perf()
        v = self.client.submit(fib, n, pure=False).result()
        dt = perf() - t0
        expect(v == fib_value(n), "fib")
        return dt

    def w5(self, n: int) -> Measurement:
        c = self.client
        t0 = perf()
        fs = [c.submit(time.sleep, 0.05, pure=False) for _ in range(n)]
        wait(fs)
        dt = perf() - t0
        return Measurement(dt, concurrency=n * 0.05 / dt)

    def w7a(self, n: int) -> float:
        c = self.client

        async def main():
            t0 = perf()
            fs = [c.submit(noop, pure=False) for _ in range(n)]
            res = await asyncio.gather(*fs)
            dt = perf() - t0
            expect(len(res) == n, "len")
            return dt
        return self.loop.run_until_complete(main())

    def w7b(self, n: int) -> float:
        c = self.client

        async def run_wf(i):
            t3 = c.submit(task3, c.submit(task1, pure=False), c.submit(task2, pure=False), pure=False)
            return await t3

        async def main():
            t0 = perf()
            res = await asyncio.gather(*[run_wf(i) for i in range(n)])
            dt = perf() - t0
            expect(len(res) == n, "len")
            return dt
        return self.loop.run_until_complete(main())
