"""concurrent.futures.ProcessPoolExecutor (2 processes = cores), where it fits: independent
tasks (W1). Everything else needs one task to hold another's future, which cannot cross a
process boundary (futures do not pickle), or waits on I/O that a 2-process pool serialises.
"""
from __future__ import annotations

import os
import platform
from concurrent.futures import ProcessPoolExecutor, wait

from common import expect, perf
from competitors import Base


def version() -> str:
    return "stdlib (Python " + platform.python_version() + ")"


_FUT = "a task cannot receive or wait on another task's future across processes (futures do not pickle)"
NOT_EXPRESSIBLE = {
    "W2": _FUT, "W3": _FUT, "W4": _FUT,
    "W5": "a process per concurrent sleeper: 10k sleepers on a 2-process pool serialise (same as a thread pool, at process cost)",
    "W5b": "as W5",
    "W6-10k": "a suspended waiter would be a blocked process", "W6-100k": "a suspended waiter would be a blocked process",
    "W7a": "measured through threads (run_in_executor) already; a process pool adds only pickling",
    "W7b": _FUT,
}


def noop():
    return None


class Impl(Base):
    def setup(self, workload: str) -> None:
        self.pool = ProcessPoolExecutor(max_workers=os.cpu_count())
        self.info["max_workers"] = os.cpu_count()
        wait([self.pool.submit(noop) for _ in range(100)])

    def teardown(self) -> None:
        self.pool.shutdown(wait=True)

    def w1(self, n: int) -> float:
        pool = self.pool
        t0 = perf()
        futs = [pool.submit(noop) for _ in range(n)]
        done, pending = wait(futs)
        dt = perf() - t0
        expect(not pending, "pending")
        return dt
