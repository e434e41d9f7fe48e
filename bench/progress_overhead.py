"""progress=False costs nothing: W1 (n no-op executions submitted from the main thread, then one
``distaff.wait``) with the wait as it is called everywhere (no progress argument), with
``progress=False`` spelled out, and — for scale — with ``progress=True`` drawing plain lines to a
pipe-like buffer. The three variants run interleaved in ONE process (A B C A B C ...), so the
ratios compare like with like; each repetition is one fresh batch of n executions.

    .venv/bin/python bench/progress_overhead.py                # n=100000, 9 repetitions
    .venv/bin/python bench/progress_overhead.py --quick        # CI smoke: n=5000, 3 repetitions

Prints one row per variant (median us per execution for submit+wait, median ms of the wait call
alone, ratio to the default) and writes bench/results/progress.json (--json to change). A full run
exits 1 when ``progress=False`` is more than --limit (default 1.10) times the default on the
submit+wait median: "costs nothing" means within noise of not passing the argument at all.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time

import distaff

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="n=5000, 3 repetitions (CI smoke)")
    ap.add_argument("--limit", type=float, default=1.10)
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "progress.json"))
    a = ap.parse_args()
    if a.quick:
        a.n, a.reps = 5_000, 3

    eng = distaff.Engine(workers=1)

    @eng.task()
    def noop():
        return None

    sink = io.StringIO()  # progress=True: not a terminal, so plain lines (the CI-log case)

    def default(xs):
        return distaff.wait(xs)

    def off(xs):
        return distaff.wait(xs, progress=False)

    def on(xs):
        saved, sys.stderr = sys.stderr, sink
        try:
            return distaff.wait(xs, progress=True)
        finally:
            sys.stderr = saved

    variants = {"wait(xs)": default, "wait(xs, progress=False)": off, "wait(xs, progress=True)": on}
    total = {k: [] for k in variants}
    wait_only = {k: [] for k in variants}
    submit = noop.submit
    for rep in range(a.reps + 1):  # repetition 0 warms up
        for name, fn in variants.items():
            t0 = time.perf_counter()
            xs = [submit() for _ in range(a.n)]
            t1 = time.perf_counter()
            done, not_done = fn(xs)
            t2 = time.perf_counter()
            assert len(done) == a.n and not not_done
            del xs, done, not_done
            assert eng.wait_idle(timeout=120)
            if rep:
                total[name].append((t2 - t0) / a.n * 1e6)
                wait_only[name].append((t2 - t1) * 1e3)
    eng.shutdown()

    base = statistics.median(total["wait(xs)"])
    base_wait = statistics.median(wait_only["wait(xs)"])
    rows = []
    print(f"progress overhead: W1, n={a.n}, {a.reps} interleaved repetitions, 1 worker, "
          f"CPython {platform.python_version()}")
    print(f"{'variant':28s} {'us/exec (submit+wait)':>22s} {'ratio':>7s} {'wait call ms':>13s} {'ratio':>7s}")
    for name in variants:
        med = statistics.median(total[name])
        med_wait = statistics.median(wait_only[name])
        row = {"variant": name, "us_per_exec": round(med, 3), "ratio": round(med / base, 3),
               "wait_ms": round(med_wait, 3), "wait_ratio": round(med_wait / base_wait, 3) if base_wait else None,
               "reps_us_per_exec": [round(x, 3) for x in total[name]]}
        rows.append(row)
        print(f"{name:28s} {med:22.3f} {row['ratio']:7.3f} {med_wait:13.3f} {row['wait_ratio'] or 0:7.3f}")
    off_ratio = rows[1]["ratio"]
    result = {"n": a.n, "reps": a.reps, "python": platform.python_version(), "nproc": os.cpu_count(),
              "loadavg": [round(x, 2) for x in os.getloadavg()], "rows": rows,
              "when": time.strftime("%Y-%m-%d %H:%M:%S"), "limit": a.limit}
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    if a.quick:
        print("(quick: a smoke run, too small for the limit)")
    elif off_ratio > a.limit:
        print(f"FAIL: progress=False is {off_ratio:.3f}x the default (limit {a.limit})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
