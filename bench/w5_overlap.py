#!/usr/bin/env python3
"""W5's memory at full overlap, whatever the machine's load: 10,000 sleepers of 1.5 s (all parked
before the first ends), peak RSS (VmHWM) before and after, per sleeper. bench/cold.py's W5 sleeps
50 ms, so how many sleepers overlap (and its peak RSS) depends on how fast they start.

    python bench/w5_overlap.py [--n 10000] [--workers 1]
"""
from __future__ import annotations

import argparse
import time

import distaff


def hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    eng = distaff.Engine(workers=a.workers)

    @eng.task()
    def sleeper(s):
        distaff.sleep(s)

    sleeper.submit(0).result()
    base = hwm_mib()
    t0 = time.perf_counter()
    exs = [sleeper.submit(1.5) for _ in range(a.n)]
    distaff.wait(exs)
    wall = time.perf_counter() - t0
    peak = hwm_mib()
    print(f"before {base:.1f} MiB, peak {peak:.1f} MiB, {(peak - base) * 1024 / a.n:.2f} KiB per sleeper, wall {wall:.2f} s")
    eng.shutdown(wait=True)


if __name__ == "__main__":
    main()
