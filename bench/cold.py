#!/usr/bin/env python3
"""Cold benchmark: every measurement in a FRESH interpreter, the first run after import and
engine creation (what a script, a CLI or a test sees), no warm-up of the workload.

    python bench/cold.py                       # all cases, 5 processes each, markdown to stdout
    python bench/cold.py --only W4 S1 --procs 7
    python bench/cold.py --out /tmp/cold.json  # raw per-process results too

Each case is bench/worker.py with ``--warmup 0 --reps 1``, started --procs times; the rounds are
interleaved (round 1 of every case, then round 2, ...) so that load from other processes on the
machine spreads over all competitors alike. Reported: the median over processes, and ratios
against the distaff row of the same run. bench/run.py is the warm view (a warm-up repetition,
then several timed ones in one process).

Cases: W1 (100k no-ops), W4 fib(16) and fib(20) (every call a task, both children submitted, then
waited), W5 (10k x 50 ms sleepers: wall and peak RSS), W6 (100k suspended executions: RSS each),
S1 (synchronous call latency from the main thread to an idle engine: median of 2,000 calls, each
after 1 ms of idleness).
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

D1 = ("distaff (1 worker)", "distaff_", {})
D2 = ("distaff (2 workers)", "distaff_", {"workers": 2})
AIO = ("asyncio", "asyncio_", {})
UV = ("uvloop", "asyncio_", {"loop": "uvloop"})
GEV = ("gevent", "gevent_", {})
TPE = ("ThreadPoolExecutor", "threads", {})

# (label, workload, n, unit, metric, competitors)
CASES = [
    ("W1 100k no-ops", "W1", 100_000, "µs/task", "per_task", [D1, D2, AIO, UV, GEV]),
    ("W4 fib(16)", "W4", 16, "µs/task", "per_task", [D1, D2, AIO, UV, GEV]),
    ("W4 fib(20)", "W4", 20, "µs/task", "per_task", [D1, D2, AIO, UV, GEV]),
    ("W5 10k sleepers, wall", "W5", 10_000, "s", "seconds", [D1, D2, AIO, UV, GEV]),
    ("W5 10k sleepers, peak RSS", "W5", 10_000, "MiB", "maxrss", None),  # from the row above
    ("W6 100k suspended, RSS each", "W6-100k", 100_000, "KiB", "kib_per_exec", [D1, D2, AIO, UV, GEV]),
    ("S1 sync call, median", "S1", 2_000, "µs", "median_us", [D1, D2, TPE]),
]


def fib_tasks(n: int) -> int:
    a, b = 1, 1
    for _ in range(n - 1):
        a, b = b, a + b + 1
    return b if n >= 2 else 1


def run_one(python: str, comp: str, params: dict, workload: str, n: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.json")
        cmd = [python, os.path.join(HERE, "worker.py"), "--competitor", comp, "--params",
               json.dumps(params), "--workload", workload, "--n", str(n), "--reps", "1",
               "--warmup", "0", "--out", out]
        try:
            p = subprocess.run(cmd, cwd=HERE, timeout=timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"status": "timeout"}
        try:
            with open(out) as f:
                r = json.load(f)
        except (OSError, ValueError):
            return {"status": "error", "reason": p.stderr[-500:]}
        return r


def metric(r: dict, workload: str, n: int, kind: str):
    if r.get("status") != "ok" or not r.get("reps"):
        return None
    sec = r["reps"][0]
    ex = r["extras"][0] if r.get("extras") else {}
    if kind == "per_task":
        tasks = fib_tasks(n) if workload == "W4" else n
        return sec / tasks * 1e6
    if kind == "seconds":
        return sec
    if kind == "maxrss":
        return r.get("maxrss_kib", 0) / 1024
    return ex.get(kind)


def fmt(v) -> str:
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if v < 1 else f"{v:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--procs", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="workload prefixes (W1 W4 W5 W6 S1)")
    ap.add_argument("--competitors", nargs="*", help="labels' first word (distaff asyncio uvloop ...)")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--out", help="raw per-process results (JSON)")
    ap.add_argument("--save", action="store_true",
                    help="also write the table to bench/results/cold.md, which bench/report.py puts in "
                         "docs/performance.md's summary")
    a = ap.parse_args()

    cases = [c for c in CASES if c[5] is not None and (not a.only or any(c[1].startswith(o) for o in a.only))]
    jobs = []
    for label, wl, n, unit, kind, comps in cases:
        for comp in comps:
            if a.competitors and comp[0].split()[0] not in a.competitors:
                continue
            jobs.append((label, wl, n, comp))
    raw: dict = {}
    for rnd in range(a.procs):
        for label, wl, n, comp in jobs:
            r = run_one(a.python, comp[1], comp[2], wl, n, a.timeout)
            raw.setdefault(f"{wl}|{n}|{comp[0]}", []).append(r)
            if r.get("status") != "ok":
                print(f"# round {rnd}: {label} {comp[0]}: {r.get('status')} {r.get('reason', '')[:300]}",
                      file=sys.stderr)
        print(f"# round {rnd + 1}/{a.procs} done", file=sys.stderr)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(raw, f)

    comps_all = []
    for c in CASES:
        for comp in c[5] or []:
            if comp[0] not in comps_all and any(j[3] == comp for j in jobs):
                comps_all.append(comp[0])
    rows = []
    for label, wl, n, unit, kind, comps in CASES:
        src = comps if comps is not None else next(c[5] for c in CASES if c[1] == wl and c[5])
        if a.only and not any(wl.startswith(o) for o in a.only):
            continue
        med = {}
        for comp in src:
            vals = [metric(r, wl, n, kind) for r in raw.get(f"{wl}|{n}|{comp[0]}", [])]
            vals = [v for v in vals if v is not None]
            if vals:
                med[comp[0]] = (statistics.median(vals), min(vals), max(vals))
        base = med.get(D1[0], (None,))[0]
        cells = []
        for name in comps_all:
            if name not in med:
                cells.append("—")
                continue
            m, lo, hi = med[name]
            ratio = f" ({m / base:.2g}x)" if base and name != D1[0] else ""
            cells.append(f"{fmt(m)}{ratio}")
        rows.append(f"| {label} ({unit}) | " + " | ".join(cells) + " |")
    import platform
    import time as _time
    load = os.getloadavg()
    head = (f"Cold run {_time.strftime('%Y-%m-%d %H:%M', _time.gmtime())} UTC, "
            f"{os.path.basename(a.python)} (Python {platform.python_version()} here), medians of "
            f"{a.procs} fresh processes per case, load average {load[0]:.1f}; (Nx) = that engine's "
            "median / distaff 1 worker's in the same run.")
    table = ["| workload | " + " | ".join(comps_all) + " |", "|---|" + "---:|" * len(comps_all)] + rows
    print(head)
    print()
    print("\n".join(table))
    if a.save:
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        with open(os.path.join(HERE, "results", "cold.md"), "w") as f:
            f.write(head + "\n\n" + "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
