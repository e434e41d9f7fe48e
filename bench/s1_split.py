#!/usr/bin/env python3
"""S1 split into its two halves: a synchronous call from the main thread, each after 1 ms idle.

    python bench/s1_split.py distaff 2000          # go / back / total medians in µs
    python bench/s1_split.py tpe 2000              # the same through ThreadPoolExecutor(1)
    SPLIT=1 python bench/s1_split.py distaff 2000  # main thread on CPU 0, the others on CPU 1
    DISTAFF_HANDOFF_SPIN_NS=0 python bench/s1_split.py distaff 2000   # the hand-off spin off

"go" is submit to the body's first line (the worker's wake-up), "back" the body's last line to the
caller holding the result (the way back, GIL included). The body returns time.perf_counter().
docs/performance.md (Notes, session 14) and docs/internals/sync-calls.md use it with `perf sched`.
GAP=<seconds> changes the idle time between calls (0: back to back).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time

perf = time.perf_counter


def body(i: int) -> float:
    return perf()


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "distaff"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    gap = float(os.environ.get("GAP", "0.001"))
    if kind == "distaff":
        import distaff

        call = distaff.Engine(workers=1).task()(body)
    elif kind == "tpe":
        import concurrent.futures as cf

        pool = cf.ThreadPoolExecutor(1)
        call = lambda i: pool.submit(body, i).result()  # noqa: E731
    else:
        raise SystemExit(f"unknown kind {kind!r}: distaff or tpe")
    call(0)  # the worker thread exists from here on
    if os.environ.get("SPLIT"):
        me = threading.get_native_id()
        os.sched_setaffinity(me, {0})
        for tid in os.listdir("/proc/self/task"):
            if int(tid) != me:
                os.sched_setaffinity(int(tid), {1})
    go, back, total = [], [], []
    for i in range(n):
        if gap:
            time.sleep(gap)
        t0 = perf()
        tb = call(i)
        t1 = perf()
        go.append(tb - t0)
        back.append(t1 - tb)
        total.append(t1 - t0)

    def med(xs: list) -> float:
        return round(statistics.median(xs) * 1e6, 1)

    print(json.dumps({"kind": kind, "n": n, "go_us": med(go), "back_us": med(back), "total_us": med(total)}))


if __name__ == "__main__":
    main()
