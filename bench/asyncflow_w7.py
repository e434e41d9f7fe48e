#!/usr/bin/env python3
"""W7 for the AsyncFlow layer: the same AsyncFlow program on radical.asyncflow and on
distaff.asyncflow (only the import differs), in one run, cold and warm.

    python bench/asyncflow_w7.py                       # W7b (the seed's 5 workflows) and W1 at 2k and 10k
    python bench/asyncflow_w7.py --w1 2000 --reps 10   # smaller
    pip install '.[bench]'                             # radical.asyncflow, into the same interpreter

Workloads (each impl in fresh processes, interleaved, same interpreter):
- W7b: the AsyncFlow seed: five workflows ``task3(task1(), task2())`` under ``asyncio.gather`` on a
  ``LocalExecutionBackend(ThreadPoolExecutor())``; reported in ms per run of the five.
- W1: n independent no-op function tasks, all called then gathered; reported in µs per task.

cold = a fresh process's first run, engine creation included (``await LocalExecutionBackend(...)``
and ``await WorkflowEngine.create(...)``); warm = the median of ``--reps`` runs after one warm-up
run, same engine. Import time is reported apart. Besides the two AsyncFlow impls, ``distaff``
(native API: ``@task`` async bodies with ``resolve=True``, the port in examples/asyncflow_workflows.py
without its sleeps) shows what the layer costs over distaff itself. Results:
bench/results/asyncflow_w7.json; docs/performance.md quotes them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
IMPLS = ("radical.asyncflow", "distaff.asyncflow", "distaff")


def child(impl: str, workload: str, n: int, reps: int) -> dict:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    if impl == "distaff":
        import distaff

        lib = None
    else:
        import importlib

        lib = importlib.import_module(impl)
    import_s = time.perf_counter() - t0

    async def main() -> dict:
        t_create = time.perf_counter()
        c_create = time.process_time()
        if lib is not None:
            backend = await lib.LocalExecutionBackend(ThreadPoolExecutor())
            flow = await lib.WorkflowEngine.create(backend=backend)
            task_deco = flow.function_task
            task_dep = flow.function_task
        else:
            engine = distaff.Engine()
            task_deco = engine.task()
            task_dep = engine.task(resolve=True)

        @task_deco
        async def task1(*args):
            return time.time()

        @task_deco
        async def task2(*args):
            return time.time()

        @task_dep
        async def task3(*args):
            return time.time()

        @task_deco
        async def noop():
            return None

        async def run_wf(i):
            return await task3(task1(), task2())

        async def once() -> float:
            t = time.perf_counter()
            if workload == "W7b":
                res = await asyncio.gather(*[run_wf(i) for i in range(n)])
                assert len(res) == n and all(isinstance(r, float) for r in res)
            else:
                res = await asyncio.gather(*[noop() for _ in range(n)])
                assert len(res) == n
            return time.perf_counter() - t

        first = await once()
        cold = time.perf_counter() - t_create
        cold_cpu = time.process_time() - c_create
        c_warm = time.process_time()
        warm = [await once() for _ in range(reps)]
        warm_cpu = (time.process_time() - c_warm) / max(1, reps)
        if lib is not None:
            await flow.shutdown()
        else:
            await engine.ashutdown()
        return {"cold_s": cold, "first_run_s": first, "warm_s": warm, "cold_cpu_s": cold_cpu, "warm_cpu_s": warm_cpu}

    out = asyncio.run(main())
    out.update(impl=impl, workload=workload, n=n, import_s=import_s)
    if impl == "radical.asyncflow":
        out["version"] = lib.__version__
    elif impl == "distaff.asyncflow":
        out["version"] = lib.__version__
    else:
        out["version"] = distaff.__version__
    return out


def run_child(impl: str, workload: str, n: int, reps: int, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, workload, str(n), str(reps)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=_scratch())
    if r.returncode != 0:
        raise RuntimeError(f"{impl} {workload} n={n} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _scratch() -> str:
    # radical.asyncflow makes a session directory in its working directory: keep them out of the tree
    d = os.path.join("/tmp", "distaff-asyncflow-bench")
    os.makedirs(d, exist_ok=True)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--procs", type=int, default=3, help="fresh processes per case (cold = their median)")
    ap.add_argument("--reps", type=int, default=20, help="warm runs per process for W7b")
    ap.add_argument("--w1", type=int, nargs="*", default=[2000, 10000], help="W1 sizes")
    ap.add_argument("--w1-reps", type=int, default=3)
    ap.add_argument("--json", default=os.path.join(HERE, "results", "asyncflow_w7.json"))
    args = ap.parse_args()
    if args.child:
        impl, workload, n, reps = args.child
        print(json.dumps(child(impl, workload, int(n), int(reps))))
        return

    cases = [("W7b", 5, args.reps)] + [("W1", n, args.w1_reps) for n in args.w1]
    results = []
    for workload, n, reps in cases:
        per_impl: dict = {impl: [] for impl in IMPLS}
        for _ in range(args.procs):  # interleaved: a noisy moment hits every impl alike
            for impl in IMPLS:
                per_impl[impl].append(run_child(impl, workload, n, reps, timeout=900))
        for impl in IMPLS:
            runs = per_impl[impl]
            scale = 1e3 if workload == "W7b" else 1e6 / n
            row = {
                "workload": workload,
                "n": n,
                "impl": impl,
                "version": runs[0]["version"],
                "unit": "ms" if workload == "W7b" else "us_per_task",
                "cold": statistics.median(r["cold_s"] for r in runs) * scale,
                "first_run": statistics.median(r["first_run_s"] for r in runs) * scale,
                "warm": statistics.median(w for r in runs for w in r["warm_s"]) * scale,
                "import_ms": statistics.median(r["import_s"] for r in runs) * 1e3,
                # CPU time of the whole process (every thread) over the same spans: less moved by
                # other processes on the machine than the wall time (AsyncFlow's wall time is
                # mostly its engine loop's sleeps, so only the wall ratio is the measure)
                "cold_cpu": statistics.median(r["cold_cpu_s"] for r in runs) * scale,
                "warm_cpu": statistics.median(r["warm_cpu_s"] for r in runs) * scale,
            }
            results.append(row)
            print(f"{workload:4} n={n:<6} {impl:18} {row['version']:14} cold {row['cold']:10.3f}  "
                  f"warm {row['warm']:10.3f} {row['unit']}  (import {row['import_ms']:.0f} ms; CPU cold {row['cold_cpu']:.3f}, "
                  f"warm {row['warm_cpu']:.3f})", flush=True)
        base = {r["impl"]: r for r in results if r["workload"] == workload and r["n"] == n}
        ra, da = base["radical.asyncflow"], base["distaff.asyncflow"]
        print(f"     radical.asyncflow / distaff.asyncflow: cold {ra['cold'] / da['cold']:.1f}x, "
              f"warm {ra['warm'] / da['warm']:.1f}x", flush=True)
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python bench/asyncflow_w7.py " + " ".join(sys.argv[1:]),
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    print("wrote", args.json)


if __name__ == "__main__":
    main()
