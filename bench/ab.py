#!/usr/bin/env python3
"""Interleaved cold A/B of two (or more) builds of distaff on one bench/worker.py case.

    python bench/ab.py W1 100000 --rounds 7 before=/path/venv-old/bin/python after=.venv/bin/python
    python bench/ab.py W4 20 --workers 2 before=... after=...
    python bench/ab.py W6-10k 10000 --rounds 1 before=... after=...
    python bench/ab.py W9 2000 --competitor executors_ --params '{"impl": "distaff-ppe"}' before=... after=...

Each round starts one fresh process per build (``--warmup 0 --reps 1``, as bench/cold.py does), so
load from other processes on the machine falls on every build alike. Reported per build: the
median (min, max) of the case's figure — µs per task for W1/W4, seconds for W5, the median
latency for S1, KiB per execution for W6 — of the process CPU time per task for W1/W4 (every
thread's, which on a loaded machine moves much less than wall time), and of the peak RSS; then each
build's ratio to the first, of medians and paired by round.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def fib_tasks(n: int) -> int:
    a, b = 1, 1
    for _ in range(n - 1):
        a, b = b, a + b + 1
    return b if n >= 2 else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload")
    ap.add_argument("n", type=int)
    ap.add_argument("builds", nargs="+", help="label=python")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--competitor", default="distaff_", help="bench/competitors module (executors_ for W8-W10)")
    ap.add_argument("--params", help='its params as JSON (default {"workers": --workers})')
    a = ap.parse_args()
    specs = [(lab, os.path.abspath(py) if os.sep in py else py) for lab, py in (b.split("=", 1) for b in a.builds)]
    wl, n = a.workload, a.n
    tasks = fib_tasks(n) if wl == "W4" else n
    per_task = wl in ("W1", "W4", "W9")
    params = a.params or json.dumps({"workers": a.workers})
    res: dict = {lab: {"v": [], "cpu": [], "rss": []} for lab, _ in specs}
    for _ in range(a.rounds):
        for lab, py in specs:
            with tempfile.TemporaryDirectory() as d:
                out = os.path.join(d, "r.json")
                subprocess.run([py, os.path.join(HERE, "worker.py"), "--competitor", a.competitor, "--params",
                                params, "--workload", wl, "--n", str(n), "--reps", "1",
                                "--warmup", "0", "--out", out], cwd=HERE, capture_output=True, timeout=600)
                r = json.load(open(out))
            if r.get("status") != "ok":
                print(f"{lab}: {r.get('status')} {r.get('reason', '')[:300]}", file=sys.stderr)
                continue
            ex = r["extras"][0] if r.get("extras") else {}
            sec = r["reps"][0]
            v = sec / tasks * 1e6 if per_task else ex["median_us"] if wl == "S1" else (
                ex["kib_per_exec"] if wl.startswith("W6") else sec)
            res[lab]["v"].append(v)
            if r.get("cpu_reps"):
                res[lab]["cpu"].append(r["cpu_reps"][0] / tasks * 1e6 if per_task else r["cpu_reps"][0])
            res[lab]["rss"].append(r.get("maxrss_kib", 0) / 1024)

    def med(xs):
        return statistics.median(xs) if xs else float("nan")

    for lab, _ in specs:
        x = res[lab]
        line = f"{lab}: {med(x['v']):.4g} ({min(x['v']):.4g}-{max(x['v']):.4g})"
        if x["cpu"]:
            line += f"  cpu {med(x['cpu']):.4g}"
        line += f"  peak RSS {med(x['rss']):.1f} MiB  [{' '.join(f'{v:.4g}' for v in x['v'])}]"
        print(line)
    base = specs[0][0]
    for lab, _ in specs[1:]:
        b, x = res[base], res[lab]
        paired = med([q / p for p, q in zip(b["v"], x["v"])])
        line = f"{lab}/{base}: {med(x['v']) / med(b['v']):.3f} (paired {paired:.3f})"
        if b["cpu"] and x["cpu"]:
            line += f", cpu {med(x['cpu']) / med(b['cpu']):.3f}"
        line += f", peak RSS {med(x['rss']) / med(b['rss']):.3f}"
        print(line)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
