#!/usr/bin/env python3
"""A million suspended executions, for real (issue 15: "1M suspended executions fit in 8 GiB").

    python bench/million.py                          # 1M, Engine(stack_size=1 << 20)
    python bench/million.py --n 100000 --stack-size 0  # 100k, the default 8 MiB stacks

One fresh interpreter: a blocker body parks in ``distaff.Event.wait``; ``n`` waiter bodies each
park in ``blocker.result()`` (the W6 shape). Once all have started, it reads ``VmRSS`` and
``VmPTE`` (page tables: kernel memory the RSS does not count, one 4 KiB page-table page per 2 MiB
region that holds a suspended stack's touched top) from /proc/self/status, then releases the
blocker, checks that every waiter returns, and reports the peak (``VmHWM``, with ``VmPTE``).
Needs about 7.7 GiB free at 1M with 1 MiB stacks (8.6 GiB with the default 8 MiB ones): the
script refuses to start when MemAvailable is below what it estimates.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmPTE"):
                out[key] = int(value.split()[0])  # KiB
    return out


def available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--stack-size", type=int, default=1 << 20, help="bytes; 0 = the engine's default")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    a = ap.parse_args()
    per_exec_kib = 5 + (4 if a.stack_size == 0 or a.stack_size > 1 << 20 else 2) + 1  # RSS + PTE + peak margin
    need = a.n * per_exec_kib
    if available_kib() < need:
        sys.exit(f"million.py: needs about {need / 2**20:.1f} GiB available, "
                 f"MemAvailable is {available_kib() / 2**20:.1f} GiB")

    import distaff

    eng = distaff.Engine(stack_size=a.stack_size) if a.stack_size else distaff.Engine()
    gate = distaff.Event()
    started = [0]  # += under the GIL, one worker

    @eng.task()
    def blocker():
        gate.wait()

    @eng.task()
    def waiter(b):
        started[0] += 1
        return b.result()

    s0 = status()
    t0 = time.perf_counter()
    b = blocker.submit()
    exs = [waiter.submit(b) for _ in range(a.n)]
    while started[0] < a.n:
        time.sleep(0.05)
    t_start = time.perf_counter() - t0
    time.sleep(0.5)  # let the workers park (the RSS read is a snapshot)
    s1 = status()
    assert not b.done() and not any(e.done() for e in exs[:1000]), "waiters finished early"
    gate.set()
    t1 = time.perf_counter()
    for e in exs:
        assert e.result(timeout=600) is None
    t_finish = time.perf_counter() - t1
    s2 = status()
    r = {
        "n": a.n,
        "stack_size": a.stack_size or "default",
        "python": sys.version.split()[0],
        "start_s": round(t_start, 1),
        "finish_s": round(t_finish, 1),
        "rss_kib_per_exec": round((s1["VmRSS"] - s0["VmRSS"]) / a.n, 2),
        "pte_kib_per_exec": round((s1["VmPTE"] - s0["VmPTE"]) / a.n, 2),
        "suspended_rss_gib": round(s1["VmRSS"] / 2**20, 2),
        "suspended_pte_gib": round(s1["VmPTE"] / 2**20, 2),
        "suspended_total_gib": round((s1["VmRSS"] + s1["VmPTE"]) / 2**20, 2),
        "peak_rss_gib": round(s2["VmHWM"] / 2**20, 2),
        "peak_rss_plus_pte_gib": round((s2["VmHWM"] + max(s1["VmPTE"], s2["VmPTE"])) / 2**20, 2),
    }
    if a.json:
        print(json.dumps(r))
    else:
        for k, v in r.items():
            print(f"{k:24} {v}")


if __name__ == "__main__":
    main()
