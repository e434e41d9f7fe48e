#!/usr/bin/env python3
"""Interleaved cold A/B of ``async def`` task bodies: the cost of one no-op async body end to end
(submitted from the main thread, run on the engine's event loop, all waited with distaff.wait).

    python bench/async_bodies_ab.py before=/path/venv-old/bin/python after=.venv/bin/python
    python bench/async_bodies_ab.py --rounds 8 --n 5000 a=... b=...

Each round starts one fresh process per build; a process times 5 batches of ``--n`` bodies and
reports the median batch's wall and CPU time per body. Printed: each build's median over rounds, and
its ratio to the first build. (bench/ab.py does the same for the workloads of bench/worker.py.)
"""
from __future__ import annotations

import argparse
import statistics
import subprocess

CHILD = r"""
import sys, time, distaff
n = int(sys.argv[1])
eng = distaff.Engine()

@eng.task()
async def noop():
    return None

noop.submit().result()
walls, cpus = [], []
for _ in range(5):
    t0, c0 = time.perf_counter(), time.process_time()
    exs = [noop.submit() for _ in range(n)]
    distaff.wait(exs)
    walls.append((time.perf_counter() - t0) / n * 1e6)
    cpus.append((time.process_time() - c0) / n * 1e6)
print(sorted(walls)[2], sorted(cpus)[2])
eng.shutdown()
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("builds", nargs="+", help="label=/path/to/python")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--n", type=int, default=5000)
    a = ap.parse_args()
    builds = dict(b.split("=", 1) for b in a.builds)
    res: dict = {k: [] for k in builds}
    for _ in range(a.rounds):
        for label, py in builds.items():
            out = subprocess.run([py, "-c", CHILD, str(a.n)], capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                raise SystemExit(f"{label}: {out.stderr[-2000:]}")
            res[label].append(tuple(map(float, out.stdout.split())))
    first = None
    for label, v in res.items():
        wall = statistics.median(x[0] for x in v)
        cpu = statistics.median(x[1] for x in v)
        first = first or (wall, cpu)
        print(f"{label}: {wall:.2f} us/body wall, {cpu:.2f} CPU; ratio to {next(iter(res))}: "
              f"{wall / first[0]:.3f} wall, {cpu / first[1]:.3f} CPU")


if __name__ == "__main__":
    main()
