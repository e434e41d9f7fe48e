"""Parsl with its ThreadPoolExecutor (default max_threads=2; 1,000 for the W5 sleepers, as a user
sizes an I/O pool). AppFutures passed as arguments are dependencies (resolved to values);
fan-out/fan-in uses a join_app, Parsl's tool for apps that launch apps. W4 is written with
python_apps that wait on their children synchronously, as the workload specifies: that
deadlocks a bounded pool (a join_app recursion would not wait, and is not this workload).
"""
from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import wait

import parsl  # ImportError -> not installed
from parsl import join_app, python_app
from parsl.config import Config
from parsl.executors.threads import ThreadPoolExecutor

from common import Measurement, expect, fib_value, perf
from competitors import Base

NOT_EXPRESSIBLE = {
    "W5b": "Parsl apps run on threads: W5 already uses time.sleep",
    "W6-10k": "every app blocked in .result() holds an executor thread: 10k suspended waiters means a "
              "10k-thread pool",
    "W6-100k": "as W6-10k",
    "W7a": "AppFutures are concurrent.futures, not asyncio: the only bridge is asyncio.wrap_future "
           "(threads' W7a measures that shape)",
    "W7b": "no asyncio API",
}


def version() -> str:
    return parsl.__version__


@python_app
def noop():
    return None


@python_app
def start():
    return 0


@python_app
def add_one(x):
    return x + 1


@python_app
def child(i):
    return i


@python_app
def total(inputs=()):
    return sum(inputs)


@join_app
def fan(n):
    return total(inputs=[child(i) for i in range(n)])


@python_app
def fib(n):
    if n < 2:
        return n
    a = fib(n - 1)
    b = fib(n - 2)
    return a.result() + b.result()


@python_app
def sleeper(s):
    time.sleep(s)


class Impl(Base):
    def setup(self, workload: str) -> None:
        threads = 1000 if workload == "W5" else 2
        self.info["max_threads"] = threads
        self.dfk = parsl.load(Config(
            executors=[ThreadPoolExecutor(label="threads", max_threads=threads)],
            run_dir=tempfile.mkdtemp(prefix="parsl-"), initialize_logging=False))
        noop().result()

    def teardown(self) -> None:
        self.dfk.cleanup()

    def w1(self, n: int) -> float:
        t0 = perf()
        fs = [noop() for _ in range(n)]
        done, pending = wait(fs)
        dt = perf() - t0
        expect(not pending, "pending")
        return dt

    def w2(self, n: int) -> float:
        t0 = perf()
        f = start()
        for _ in range(n):
            f = add_one(f)
        v = f.result()
        dt = perf() - t0
        expect(v == n, "chain")
        return dt

    def w3(self, n: int) -> float:
        t0 = perf()
        v = fan(n).result()
        dt = perf() - t0
        expect(v == n * (n - 1) // 2, "sum")
        return dt

    def w4(self, n: int) -> float:
        t0 = perf()
        v = fib(n).result()
        dt = perf() - t0
        expect(v == fib_value(n), "fib")
        return dt

    def w5(self, n: int) -> Measurement:
        t0 = perf()
        fs = [sleeper(0.05) for _ in range(n)]
        wait(fs)
        dt = perf() - t0
        return Measurement(dt, concurrency=n * 0.05 / dt)
