"""W9/W10 on Dask as an interleaved A/B in one process (docs/performance.md, "Executors").

One LocalCluster (2 worker processes x 1 thread, as bench W9/W10), one client, one distaff engine;
repetitions alternate plain Dask and distaff on that client, so both see the same machine load.
Prints each repetition and the medians: wall time and this process's CPU time (the client
process also runs the LocalCluster's scheduler, so its CPU is what distaff competes with).

    .venv/bin/python bench/dask_ab.py [--reps 7] [--w9 2000] [--w10 200] [--only W9|W10]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from competitors.executors_ import ITERS_50MS, busy, tiny, total  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--w9", type=int, default=2000)
    ap.add_argument("--w10", type=int, default=200)
    ap.add_argument("--only", choices=["W9", "W10"])
    ap.add_argument("--profile", choices=["distaff", "dask"], help="cProfile one W9 repetition of that side")
    ap.add_argument("--loop", choices=["distaff", "dask"], help="only that side's W9 (or --only W10), --reps times (for py-spy)")
    a = ap.parse_args()

    import distaff
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=40)
    client = Client(cluster)
    eng = distaff.Engine()
    t_tiny = eng.task(executor=client)(tiny)
    t_busy = eng.task(executor=client)(busy)
    t_total = eng.task(resolve=True)(total)
    it10 = ITERS_50MS // 5

    def w9_dask(n):
        return client.gather([client.submit(tiny, i, pure=False) for i in range(n)])

    def w9_distaff(n):
        return distaff.gather(*[t_tiny.submit(i) for i in range(n)]).result()

    def w10_dask(n):
        c = client
        leaves = [c.submit(busy, it10, pure=False) for _ in range(n)]
        l1 = [c.submit(total, *leaves[i:i + 10], pure=False) for i in range(0, n, 10)]
        l2 = [c.submit(total, *l1[i:i + 5], pure=False) for i in range(0, len(l1), 5)]
        return c.submit(total, *l2, pure=False).result()

    def w10_distaff(n):
        leaves = [t_busy.submit(it10) for _ in range(n)]
        l1 = [t_total.submit(*leaves[i:i + 10]) for i in range(0, n, 10)]
        l2 = [t_total.submit(*l1[i:i + 5]) for i in range(0, len(l1), 5)]
        return t_total.submit(*l2).result()

    def timed(fn, n):
        c0, t0 = time.process_time(), time.perf_counter()
        fn(n)
        return time.perf_counter() - t0, time.process_time() - c0

    # warm up both sides (imports, worker-side unpickling of the functions, the collector thread)
    w9_dask(200), w9_distaff(200)

    if a.profile:
        import cProfile
        import pstats

        fn = w9_distaff if a.profile == "distaff" else w9_dask
        pr = cProfile.Profile()
        pr.enable()
        fn(a.w9)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(35)
        return

    if a.loop:
        w10 = a.only == "W10"
        fn = {(False, "distaff"): w9_distaff, (False, "dask"): w9_dask,
              (True, "distaff"): w10_distaff, (True, "dask"): w10_dask}[w10, a.loop]
        for _ in range(a.reps):
            print(a.loop, timed(fn, a.w10 if w10 else a.w9), flush=True)
        return

    print(f"load: {os.getloadavg()}  pid {os.getpid()}", flush=True)
    for name, n, da, di, unit in (("W9", a.w9, w9_dask, w9_distaff, "us/body"),
                                  ("W10", a.w10, w10_dask, w10_distaff, "s")):
        if a.only and a.only != name:
            continue
        rows = {"dask": [], "distaff": []}
        for r in range(a.reps):
            order = [("dask", da), ("distaff", di)] if r % 2 == 0 else [("distaff", di), ("dask", da)]
            for side, fn in order:
                rows[side].append(timed(fn, n))
        scale = (1e6 / n) if name == "W9" else 1.0
        for side in ("dask", "distaff"):
            walls = [w * scale for w, _ in rows[side]]
            cpus = [c * scale for _, c in rows[side]]
            print(f"{name} {side:8s} wall {statistics.median(walls):9.3f} {unit}  cpu {statistics.median(cpus):9.3f}"
                  f"  walls {[round(w, 3) for w in walls]}", flush=True)
        ratios = [di_w / da_w for (da_w, _), (di_w, _) in zip(rows["dask"], rows["distaff"])]
        print(f"{name} distaff/dask wall: median of medians "
              f"{statistics.median([w for w, _ in rows['distaff']]) / statistics.median([w for w, _ in rows['dask']]):.3f}"
              f"  paired ratios {[round(x, 3) for x in ratios]} (median {statistics.median(ratios):.3f})", flush=True)
    print(f"load after: {os.getloadavg()}", flush=True)
    eng.shutdown()
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()
