"""Cancelling n parked executions at once: n bodies asleep in distaff.sleep(1000), each cancelled,
then waited until the engine is idle (every body has unwound). Against asyncio: n tasks asleep in
asyncio.sleep(1000), each cancelled, then gathered. Each measurement in a fresh interpreter.

    python bench/cancel_parked.py [--n 50000] [--procs 3] [--python PY ...]

Prints the median per-execution wall and CPU time of each engine (µs). Several --python
interpreters (e.g. the venvs of two builds) are interleaved, for an A/B of distaff.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

DISTAFF = r"""
import json, resource, sys, time
import distaff
n = int(sys.argv[1])
eng = distaff.Engine(workers=1)
count = [0]

@eng.task()
def sleeper():
    count[0] += 1
    distaff.sleep(1000)

exs = [sleeper.submit() for _ in range(n)]
while count[0] < n:  # every body parked (a condition, polled)
    time.sleep(0.002)
t0, c0 = time.perf_counter(), time.process_time()
for e in exs:
    e.cancel()
eng.shutdown(wait=True)  # returns once every body has unwound and the workers are joined
t1, c1 = time.perf_counter(), time.process_time()
assert all(e.cancelled() for e in exs)
print(json.dumps({"wall_us": (t1 - t0) / n * 1e6, "cpu_us": (c1 - c0) / n * 1e6,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

ASYNCIO = r"""
import asyncio, json, resource, sys, time
n = int(sys.argv[1])

async def main():
    tasks = [asyncio.create_task(asyncio.sleep(1000)) for _ in range(n)]
    await asyncio.sleep(0)  # every task started and parked
    t0, c0 = time.perf_counter(), time.process_time()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    t1, c1 = time.perf_counter(), time.process_time()
    assert all(t.cancelled() for t in tasks)
    return (t1 - t0) / n * 1e6, (c1 - c0) / n * 1e6

w, c = asyncio.run(main())
print(json.dumps({"wall_us": w, "cpu_us": c, "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(py: str, code: str, n: int) -> dict:
    out = subprocess.run([py, "-c", code, str(n)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"{py}: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--procs", type=int, default=3)
    ap.add_argument("--python", action="append", help="interpreter(s) with distaff (default: this one)")
    a = ap.parse_args()
    pythons = a.python or [sys.executable]
    cases = [(f"distaff ({py})", py, DISTAFF) for py in pythons] + [("asyncio", pythons[0], ASYNCIO)]
    results: dict = {label: [] for label, _, _ in cases}
    for _ in range(a.procs):
        for label, py, code in cases:
            results[label].append(run(py, code, a.n))
    print(f"cancel {a.n} parked executions, medians of {a.procs} fresh processes (µs per execution)")
    print("| engine | wall | CPU | peak RSS (MiB) |\n| --- | ---: | ---: | ---: |")
    for label, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"| {label} | {med['wall_us']:.2f} | {med['cpu_us']:.2f} | {med['maxrss_mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
