#!/usr/bin/env python3
"""What recording a trace costs W1 and W4, in one process, with plain and traced repetitions
interleaved (so both see the same machine load), as bench/run.py's distaff and distaff-traced rows
measure them: the work inside `engine.trace("....jsonl")` is timed, the file written at the block's
exit is timed apart.

    python bench/trace_overhead.py [--reps 7] [--n 100000] [--plain-only]

Prints per workload the minimum and median wall µs per task of each, their ratios, and the median
CPU µs per task (process_time: every thread of the process, steadier on a loaded machine).
--plain-only measures without traces, so it also runs against a build from before the observer
seam (the "this code vs the code before" row of docs/observability.md, "Cost").
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time

import distaff


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--n", type=int, default=100_000, help="W1 tasks")
    ap.add_argument("--fib", type=int, default=20, help="W4 fib(n)")
    ap.add_argument("--plain-only", action="store_true", help="no traces (works with builds before the seam)")
    a = ap.parse_args()
    eng = distaff.Engine()

    @eng.task()
    def noop():
        return None

    @eng.task()
    def fib(n):
        if n < 2:
            return n
        x, y = fib.submit(n - 1), fib.submit(n - 2)
        return x.result() + y.result()

    def tasks_of_fib(n):
        return 1 if n < 2 else 1 + tasks_of_fib(n - 1) + tasks_of_fib(n - 2)

    cpu: list = []

    def w1():
        t0, c0 = time.perf_counter(), time.process_time()
        exs = [noop.submit() for _ in range(a.n)]
        distaff.wait(exs)
        cpu.append((time.process_time() - c0) / a.n * 1e6)
        return (time.perf_counter() - t0) / a.n * 1e6

    def w4():
        t0, c0 = time.perf_counter(), time.process_time()
        fib.submit(a.fib).result()
        cpu.append((time.process_time() - c0) / tasks_of_fib(a.fib) * 1e6)
        return (time.perf_counter() - t0) / tasks_of_fib(a.fib) * 1e6

    out = tempfile.mkdtemp(prefix="distaff-trace-overhead-")
    noop.submit().result()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; "
          f"{a.reps} interleaved reps", flush=True)
    for name, fn in (("W1", w1), ("W4", w4)):
        fn()  # warm-up
        plain, traced, written, plain_cpu, traced_cpu = [], [], [], [], []
        for _ in range(a.reps):
            gc.collect()
            plain.append(fn())
            plain_cpu.append(cpu.pop())
            if a.plain_only:
                continue
            gc.collect()
            t = eng.trace(os.path.join(out, "run.jsonl"))
            with t:
                traced.append(fn())
                traced_cpu.append(cpu.pop())
                t1 = time.perf_counter()
            written.append(time.perf_counter() - t1)
            del t
        if a.plain_only:
            print(f"{name}: plain min {min(plain):.2f} median {statistics.median(plain):.2f} µs/task, "
                  f"cpu median {statistics.median(plain_cpu):.2f} µs/task", flush=True)
            continue
        pm, tm = min(plain), min(traced)
        pd, td = statistics.median(plain), statistics.median(traced)
        print(f"{name}: plain min {pm:.2f} median {pd:.2f} µs/task | traced min {tm:.2f} median {td:.2f} µs/task | "
              f"ratio min {tm / pm:.2f} median {td / pd:.2f} | cpu median {statistics.median(plain_cpu):.2f} vs "
              f"{statistics.median(traced_cpu):.2f} µs/task | file written in {statistics.median(written):.2f} s",
              flush=True)
    eng.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
