"""Prefect 3, local: no PREFECT_API_URL, so Prefect runs its temporary local server (SQLite) in a
fresh PREFECT_HOME per process; the default ThreadPoolTaskRunner.

Prefect submits tasks only inside a flow (outside one, .submit raises and points to .delay, which
needs a separate task worker), so W1/W2/W4/W5 time the task work inside one flow run (the flow
run's own overhead is excluded); W3 and W7b are whole flows, so they time the flow call.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
import time

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# the temporary server's start-up can exceed the 20 s default on a loaded 2-core machine
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import prefect  # ImportError -> not installed
from prefect import flow, task
from prefect.futures import wait

from common import Measurement, expect, fib_value, perf
from competitors import Base

NOT_EXPRESSIBLE = {
    "W5b": "Prefect task runs are threads: W5 already uses time.sleep",
    "W6-10k": "every task blocked in .result() holds a task-runner thread: 10k suspended waiters means "
              "10k threads, each with a task run recorded on the server",
    "W6-100k": "as W6-10k",
    "W7a": "PrefectFuture is not awaitable (tasks submit only inside a flow; no asyncio handle to gather)",
}


def version() -> str:
    return prefect.__version__


@task
def noop():
    return None


@task
def start():
    return 0


@task
def add_one(x):
    return x + 1


@task
def child(i):
    return i


@task
def fib(n):
    if n < 2:
        return n
    a = fib.submit(n - 1)
    b = fib.submit(n - 2)
    return a.result() + b.result()


@task
def sleeper(s):
    time.sleep(s)


@flow
def w1_flow(n):
    t0 = perf()
    fs = [noop.submit() for _ in range(n)]
    wait(fs)
    return perf() - t0


@flow
def w2_flow(n):
    t0 = perf()
    f = start.submit()
    for _ in range(n):
        f = add_one.submit(f)
    v = f.result()
    return perf() - t0, v


@flow
def fan(n):
    fs = [child.submit(i) for i in range(n)]
    return sum(f.result() for f in fs)


@flow
def w4_flow(n):
    t0 = perf()
    v = fib(n)
    return perf() - t0, v


@flow
def w5_flow(n):
    t0 = perf()
    fs = [sleeper.submit(0.05) for _ in range(n)]
    wait(fs)
    return perf() - t0


@task
async def task1(*args):
    return time.time()


@task
async def task2(*args):
    return time.time()


@task
async def task3(*args):
    return time.time()


@flow
async def run_wf(i):
    f3 = task3.submit(task1.submit(), task2.submit())
    return f3.result()


class Impl(Base):
    def setup(self, workload: str) -> None:
        self.info["server"] = "temporary local server (SQLite), fresh PREFECT_HOME"
        if workload == "W7b":
            self.loop = asyncio.new_event_loop()

    def w1(self, n: int) -> float:
        return w1_flow(n)

    def w2(self, n: int) -> float:
        dt, v = w2_flow(n)
        expect(v == n, "chain")
        return dt

    def w3(self, n: int) -> float:
        t0 = perf()
        v = fan(n)
        dt = perf() - t0
        expect(v == n * (n - 1) // 2, "sum")
        return dt

    def w4(self, n: int) -> float:
        dt, v = w4_flow(n)
        expect(v == fib_value(n), "fib")
        return dt

    def w5(self, n: int) -> Measurement:
        dt = w5_flow(n)
        return Measurement(dt, concurrency=n * 0.05 / dt)

    def w7b(self, n: int) -> float:
        async def main():
            t0 = perf()
            res = await asyncio.gather(*[run_wf(i) for i in range(n)])
            dt = perf() - t0
            expect(len(res) == n, "len")
            return dt
        return self.loop.run_until_complete(main())
