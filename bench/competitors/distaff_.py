"""distaff: the engine under test.

params: {"workers": N} (default 1, distaff's default).
APIs that may not exist yet (distaff.wait / gather / sleep, awaiting an Execution) are probed;
a workload that needs a missing one reports "not yet implemented" instead of faking it, and a
workload that only prefers one (wait, gather) falls back to a loop of .result() and says so in
the case's info.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time

import distaff  # ImportError -> "not installed"

from common import Measurement, NotYetImplemented, expect, perf, rss_kib, settle, wait_until
from competitors import Base


def version() -> str:
    return getattr(distaff, "__version__", "?")


NOT_EXPRESSIBLE: dict = {}


def _has_await() -> bool:
    ex_cls = getattr(distaff, "Execution", None)
    return ex_cls is not None and hasattr(ex_cls, "__await__")


class Impl(Base):
    def setup(self, workload: str) -> None:
        self.workers = int(self.params.get("workers", 1))
        self.eng = eng = distaff.Engine(workers=self.workers)
        self.info["workers"] = self.workers
        task = eng.task
        workflow = getattr(eng, "workflow", None)
        if workflow is None:
            self.info["workflow"] = "Engine.workflow missing: W3 parent is a task"
            workflow = eng.task

        @task()
        def noop():
            return None

        @task()
        def start():
            return 0

        @task(wait=True)
        def add_one(prev):
            return prev.result() + 1

        @task()
        def child(i):
            return i

        gather = getattr(distaff, "gather", None)

        @workflow()
        def fan(n):
            exs = [child.submit(i) for i in range(n)]
            if gather is not None:
                return sum(gather(*exs).result())
            return sum(e.result() for e in exs)

        @task()
        def fib(n):
            if n < 2:
                return n
            a = fib.submit(n - 1)
            b = fib.submit(n - 2)
            return a.result() + b.result()

        dsleep = getattr(distaff, "sleep", None)

        @task()
        def sleeper(s):
            dsleep(s)

        @task()
        def blocking_sleeper(s):
            time.sleep(s)

        self.t = dict(noop=noop, start=start, add_one=add_one, child=child, fan=fan, fib=fib,
                      sleeper=sleeper, blocking_sleeper=blocking_sleeper)
        noop.submit().result()  # engine started, workers up
        if workload in ("W7a", "W7b"):
            import asyncio  # only here: `import distaff` does not import asyncio, W5's RSS shows it

            self.loop = asyncio.new_event_loop()

    def teardown(self) -> None:
        self.eng.shutdown(wait=True)
        if getattr(self, "loop", None) is not None:
            self.loop.close()

    # -- helpers -------------------------------------------------------------------------
    def _wait_all(self, exs) -> None:
        w = getattr(distaff, "wait", None)
        if w is not None:
            self.info["wait"] = "distaff.wait"
            done, pending = w(exs)
            expect(not pending, "distaff.wait returned pending executions")
        else:
            self.info["wait"] = "loop of .result() (distaff.wait not available)"
            for e in exs:
                e.result()

    def _recording(self):
        """engine.trace() around the measured part when params say so (competitor distaff-traced):
        the block's work is measured, the file written at its exit is timed apart (info)."""
        fmt = self.params.get("trace")
        if not fmt:
            return contextlib.nullcontext()
        import tempfile

        self._trace_dir = getattr(self, "_trace_dir", None) or tempfile.mkdtemp(prefix="distaff-trace-")
        return self.eng.trace(os.path.join(self._trace_dir, "run." + fmt))

    def _measure(self, body) -> float:
        rec = self._recording()
        rec.__enter__()
        try:
            dt = body()
        finally:
            t1 = perf()
            rec.__exit__(None, None, None)
            if self.params.get("trace"):
                self.info["trace_written_s"] = round(perf() - t1, 3)
                self.info["trace_events"] = len(rec.events)
        return dt

    # -- workloads -----------------------------------------------------------------------
    def w1(self, n: int) -> float:
        noop = self.t["noop"]

        def body():
            t0 = perf()
            exs = [noop.submit() for _ in range(n)]
            self._wait_all(exs)
            dt = perf() - t0
            expect(all(e.done() for e in exs), "not all done")
            return dt

        return self._measure(body)

    def w2(self, n: int) -> float:
        start, add_one = self.t["start"], self.t["add_one"]
        t0 = perf()
        ex = start.submit()
        for _ in range(n):
            ex = add_one.submit(ex)
        v = ex.result()
        dt = perf() - t0
        expect(v == n, f"chain gave {v}")
        return dt

    def w3(self, n: int) -> float:
        self.info["fan_in"] = "distaff.gather" if hasattr(distaff, "gather") else "loop of .result()"
        t0 = perf()
        v = self.t["fan"].submit(n).result()
        dt = perf() - t0
        expect(v == n * (n - 1) // 2, f"sum {v}")
        return dt

    def w4(self, n: int) -> float:
        from common import fib_value

        def body():
            t0 = perf()
            v = self.t["fib"].submit(n).result()
            dt = perf() - t0
            expect(v == fib_value(n), f"fib {v}")
            return dt

        return self._measure(body)

    def _sleepers(self, n: int, fn) -> Measurement:
        t0 = perf()
        exs = [fn.submit(0.05) for _ in range(n)]
        self._wait_all(exs)
        dt = perf() - t0
        return Measurement(dt, concurrency=n * 0.05 / dt)

    def w5(self, n: int) -> Measurement:
        if not hasattr(distaff, "sleep"):
            raise NotYetImplemented("distaff.sleep")
        self.info["sleep"] = "distaff.sleep(0.05)"
        return self._sleepers(n, self.t["sleeper"])

    def w5b(self, n: int) -> Measurement:
        self.info["sleep"] = "time.sleep(0.05) (blocks its worker thread)"
        return self._sleepers(n, self.t["blocking_sleeper"])

    def w6(self, n: int) -> Measurement:
        eng = self.eng
        if hasattr(distaff, "sleep"):
            @eng.task()
            def blocker():
                distaff.sleep(1e6)
            self.info["blocker"] = "task in distaff.sleep(1e6)"
        else:
            ev = threading.Event()

            @eng.task()
            def blocker():
                ev.wait()
            self.info["blocker"] = "task blocked in threading.Event.wait (distaff.sleep missing)"

        started = []  # list.append is atomic under the GIL, whichever worker runs the body

        @eng.task()
        def waiter(b):
            started.append(None)
            return b.result()

        self.dirty = True
        settle()
        rss0 = rss_kib()
        b = blocker.submit()
        t0 = perf()
        exs = [waiter.submit(b) for _ in range(n)]
        wait_until(lambda: len(started) >= n, timeout=120, what=f"{n} waiters to start")
        dt = perf() - t0
        settle(0.5)
        rss1 = rss_kib()
        expect(not b.done() and not any(e.done() for e in exs[:100]), "waiters finished?")
        return Measurement(dt, kib_per_exec=(rss1 - rss0) / n, rss_delta_kib=rss1 - rss0)

    def s1(self, n: int) -> Measurement:
        from common import sync_calls
        child = self.t["child"]
        self.info["call"] = "task(x) from the main thread (its body runs there, inline)"
        return sync_calls(child, n)

    def w7a(self, n: int) -> float:
        import asyncio

        if not _has_await():
            raise NotYetImplemented("await Execution")
        noop = self.t["noop"]

        dgather = getattr(distaff, "gather", None)

        async def main():
            t0 = perf()
            exs = [noop.submit() for _ in range(n)]
            res = await asyncio.gather(*exs)
            dt = perf() - t0
            expect(len(res) == n, "gather length")
            extra = {}
            if dgather is not None:
                # the same with distaff's own wait-set (one awaitable for all): reported alongside
                t0 = perf()
                exs = [noop.submit() for _ in range(n)]
                res = await dgather(*exs)
                extra["distaff_gather_us"] = (perf() - t0) / n * 1e6
                expect(len(res) == n, "distaff.gather length")
            return Measurement(dt, **extra)

        return self.loop.run_until_complete(main())

    def w7b(self, n: int) -> float:
        import asyncio

        if not _has_await():
            raise NotYetImplemented("await Execution")
        eng = self.eng
        if not hasattr(self, "_af"):
            @eng.task()
            def task1(*args):
                return time.time()

            @eng.task()
            def task2(*args):
                return time.time()

            @eng.task(wait=True)
            def task3(*args):
                return time.time()
            self._af = (task1, task2, task3)
        task1, task2, task3 = self._af

        async def run_wf(i):
            t3 = task3.submit(task1.submit(), task2.submit())
            return await t3

        async def main():
            t0 = perf()
            res = await asyncio.gather(*[run_wf(i) for i in range(n)])
            dt = perf() - t0
            expect(len(res) == n and all(isinstance(r, float) for r in res), "workflow results")
            return dt

        return self.loop.run_until_complete(main())
