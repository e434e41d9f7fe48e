#!/usr/bin/env python3
"""``async def`` task bodies submitted inside a running event loop, against asyncio's own tasks.

    python bench/async_on_loop.py                                  # this interpreter's distaff
    python bench/async_on_loop.py before=/venv-old/bin/python after=.venv/bin/python --rounds 7

The everyday asyncio shape: inside ``asyncio.run``, call ``n`` no-op ``async def`` tasks and gather
them. Cases (each in fresh processes, interleaved round by round, so ratios are within one run):

- ``distaff/asyncio.gather``: ``await asyncio.gather(*[noop() for _ in range(n)])`` (a distaff task
  called in a running loop returns its Execution, which asyncio.gather accepts as a future);
- ``distaff/distaff.gather``: the same awaited with ``await distaff.gather(*executions)``;
- ``asyncio/create_task``: plain coroutines, ``create_task`` each, then ``await`` each (asyncio's
  fastest idiomatic form here); ``asyncio/gather``: ``asyncio.gather`` of plain coroutines;
- the two asyncio cases on uvloop too, if it is installed.

Each process times ``--reps`` batches: *cold* is its first batch (engine and loop just made: what a
script sees), *warm* the median of the others. Printed: per case, the median over rounds of each, in
µs per body, and × the first distaff build's. docs/performance.md quotes the results.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CHILD = r"""
import asyncio, sys, time
case, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if case.startswith("uvloop"):
    import uvloop
if case.startswith("distaff"):
    import distaff
    eng = distaff.Engine()

    @eng.task()
    async def noop():
        return None
else:
    async def noop():
        return None

async def batch():
    t = time.perf_counter()
    if case == "distaff/asyncio.gather":
        await asyncio.gather(*[noop() for _ in range(n)])
    elif case == "distaff/distaff.gather":
        await distaff.gather(*[noop() for _ in range(n)])
    elif case.endswith("/create_task"):
        tasks = [asyncio.create_task(noop()) for _ in range(n)]
        for x in tasks:
            await x
    else:
        await asyncio.gather(*[noop() for _ in range(n)])
    return (time.perf_counter() - t) / n * 1e6

async def main():
    return [await batch() for _ in range(reps)]

if case.startswith("uvloop"):
    out = uvloop.run(main())
else:
    out = asyncio.run(main())
print(out[0], sorted(out[1:])[len(out[1:]) // 2])
if case.startswith("distaff"):
    eng.shutdown()
"""

DISTAFF_CASES = ("distaff/asyncio.gather", "distaff/distaff.gather")
OTHER_CASES = ("asyncio/create_task", "asyncio/gather", "uvloop/create_task", "uvloop/gather")


def run(py: str, case: str, n: int, reps: int) -> tuple[float, float]:
    out = subprocess.run([py, "-c", CHILD, case, str(n), str(reps)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{case} ({py}): {out.stderr[-2000:]}")
    cold, warm = map(float, out.stdout.split())
    return cold, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="*", help="label=/path/to/python for distaff (default: this interpreter)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    builds = dict(b.split("=", 1) for b in a.builds) or {"distaff": sys.executable}
    first_py = next(iter(builds.values()))
    has_uvloop = subprocess.run([first_py, "-c", "import uvloop"], capture_output=True).returncode == 0
    cases = [(f"{label}: {c}" if len(builds) > 1 else c, py, c) for label, py in builds.items() for c in DISTAFF_CASES]
    cases += [(c, first_py, c) for c in OTHER_CASES if has_uvloop or not c.startswith("uvloop")]
    res: dict = {name: [] for name, _, _ in cases}
    for _ in range(a.rounds):
        for name, py, c in cases:
            res[name].append(run(py, c, a.n, a.reps))
    base = None
    print(f"n={a.n}, {a.rounds} rounds; us per body; (x) = / {cases[0][0]}")
    for name, v in res.items():
        cold = statistics.median(x[0] for x in v)
        warm = statistics.median(x[1] for x in v)
        base = base or (cold, warm)
        print(f"{name:42s} cold {cold:8.2f} ({cold / base[0]:.2f}x)   warm {warm:8.2f} ({warm / base[1]:.2f}x)")


if __name__ == "__main__":
    main()
