"""W8-W10: bodies in other processes (docs/executors.md). One module, params {"impl": ...}:

- distaff-processes: distaff with executor="processes" (its own 2-process pool)
- distaff-local:     distaff, bodies in-process (1 worker): the GIL serialises them
- ppe / distaff-ppe: concurrent.futures.ProcessPoolExecutor(2), directly / as distaff's executor=
- loky:              loky.get_reusable_executor(2), directly
- dask / distaff-dask: a Dask LocalCluster (2 worker processes x 1 thread), directly / as executor=
- ray / distaff-ray: ray.init(num_cpus=2), directly / through distaff.executors.Ray
"""
from __future__ import annotations

import os
import time

from common import NotSupported, expect, perf
from competitors import Base


def version() -> str:
    import distaff

    return f"distaff {distaff.__version__}"


def busy(iters):
    """A fixed amount of pure-Python work (holds the GIL): the same work everywhere, whatever the
    interleaving (a wall-clock deadline would let interleaved bodies end early)."""
    x = 0
    for i in range(iters):
        x += i
    return 1


ITERS_50MS = 1_000_000


def cores_free():
    """The parallel speedup two plain CPU-bound processes get right now (2.0 on an idle 2-core
    machine): W8 cannot beat what the machine has to give, so the report shows it."""
    import subprocess
    import sys

    code = "x = 0\nfor i in range(4_000_000): x += i"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    for p in procs:
        p.wait()
    return round(2 * one / (time.perf_counter() - t0), 2)


def iters_for(ms):
    """Iterations of busy() that take about ms milliseconds here, on one thread."""
    n = 200_000
    t0 = time.perf_counter()
    busy(n)
    return max(1, int(n * ms / ((time.perf_counter() - t0) * 1000)))


def tiny(i):
    return i


def total(*xs):
    return sum(xs)


class Impl(Base):
    def setup(self, workload: str) -> None:
        self.impl = impl = self.params["impl"]
        self.info["impl"] = impl
        # Fixed work, the same for every competitor (calibrating in each process would give each
        # a different amount under load): about 50 and 10 ms on one core of the reference machine.
        self.it50 = ITERS_50MS
        self.it10 = ITERS_50MS // 5
        self.info["iters_50ms_here"] = iters_for(50)
        if workload == "W8":
            self.info["cores_free"] = cores_free()
        self.eng = self.pool = self.client = self.cluster = None
        import distaff

        if impl in ("distaff-processes", "distaff-local", "distaff-ppe", "distaff-dask", "distaff-ray"):
            self.eng = distaff.Engine(processes=2)
        if impl in ("ppe", "distaff-ppe"):
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(2)
        elif impl == "loky":
            import loky

            self.pool = loky.get_reusable_executor(max_workers=2)
        elif impl in ("dask", "distaff-dask"):
            from distributed import Client, LocalCluster

            self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                        dashboard_address=":0", silence_logs=40)
            self.client = Client(self.cluster)
        elif impl in ("ray", "distaff-ray"):
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            self.ray = ray
        ex = {"distaff-processes": "processes", "distaff-ppe": self.pool, "distaff-dask": self.client}.get(impl)
        if impl == "distaff-ray":
            from distaff.executors import Ray

            ex = Ray()
        if self.eng is not None:
            self.t_busy = self.eng.task(executor=ex)(busy)
            self.t_tiny = self.eng.task(executor=ex)(tiny)
            self.t_total = self.eng.task(resolve=True)(total)  # local orchestration step

    def teardown(self) -> None:
        if self.eng is not None:
            self.eng.shutdown()
        if self.pool is not None and self.impl != "loky":
            self.pool.shutdown()
        if self.client is not None:
            self.client.close()
            self.cluster.close()
        if self.impl in ("ray", "distaff-ray"):
            self.ray.shutdown()

    # W8: 32 bodies of 50 ms
    def w8(self, n: int) -> float:
        impl = self.impl
        t0 = perf()
        if self.eng is not None:
            import distaff

            if impl not in ("distaff-processes", "distaff-local"):
                raise NotSupported("W8 compares the process pool, in-process distaff, ProcessPoolExecutor and loky")
            r = distaff.gather(*[self.t_busy.submit(self.it50) for _ in range(n)]).result()
        elif impl in ("ppe", "loky"):
            r = list(self.pool.map(busy, [self.it50] * n))
        else:
            raise NotSupported("W8 compares the process pool, in-process distaff, ProcessPoolExecutor and loky")
        dt = perf() - t0
        expect(sum(r) == n, "wrong result")
        return dt

    # W9: n tiny bodies through distaff vs the executor's own submit + result
    def w9(self, n: int) -> float:
        impl = self.impl
        if impl in ("distaff-local", "loky"):
            raise NotSupported("W9 compares each executor with distaff on it")
        t0 = perf()
        if self.eng is not None:
            import distaff

            r = distaff.gather(*[self.t_tiny.submit(i) for i in range(n)]).result()
        elif impl == "ppe":
            r = [f.result() for f in [self.pool.submit(tiny, i) for i in range(n)]]
        elif impl == "dask":
            r = self.client.gather([self.client.submit(tiny, i, pure=False) for i in range(n)])
        else:
            rt = self.ray.remote(tiny)
            r = self.ray.get([rt.remote(i) for i in range(n)])
        dt = perf() - t0
        expect(sum(r) == n * (n - 1) // 2, "wrong result")
        return dt

    # W10: 200 leaves of 10 ms combined in three levels (groups of 10, of 5, then all)
    def w10(self, n: int) -> float:
        impl = self.impl
        if impl not in ("dask", "distaff-dask", "ray"):
            raise NotSupported("W10 is the Dask-executed DAG: distaff on Dask vs plain Dask futures and Ray")
        t0 = perf()
        if impl == "distaff-dask":
            leaves = [self.t_busy.submit(self.it10) for _ in range(n)]
            l1 = [self.t_total.submit(*leaves[i:i + 10]) for i in range(0, n, 10)]
            l2 = [self.t_total.submit(*l1[i:i + 5]) for i in range(0, len(l1), 5)]
            root = self.t_total.submit(*l2)
            r = root.result()
            steps = [(e.description["finished"] - e.description["started"]) * 1e6 for e in (*l1, *l2, root)]
            self.info["local_step_us_median"] = round(sorted(steps)[len(steps) // 2], 1)
        elif impl == "dask":
            c = self.client
            leaves = [c.submit(busy, self.it10, pure=False) for _ in range(n)]
            l1 = [c.submit(total, *leaves[i:i + 10], pure=False) for i in range(0, n, 10)]
            l2 = [c.submit(total, *l1[i:i + 5], pure=False) for i in range(0, len(l1), 5)]
            r = c.submit(total, *l2, pure=False).result()
        else:
            rb, rt = self.ray.remote(busy), self.ray.remote(total)
            leaves = [rb.remote(self.it10) for _ in range(n)]
            l1 = [rt.remote(*leaves[i:i + 10]) for i in range(0, n, 10)]
            l2 = [rt.remote(*l1[i:i + 5]) for i in range(0, len(l1), 5)]
            r = self.ray.get(rt.remote(*l2))
        dt = perf() - t0
        expect(r == n, "wrong result")
        return dt
