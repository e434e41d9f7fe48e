"""Runs one (workload, competitor) case in this fresh process and writes JSON to --out.

Started by bench/run.py; not meant to be run by hand, though it can be:

    python bench/worker.py --competitor distaff --workload W1 --n 1000 --reps 3 --out /tmp/x.json

The JSON file is rewritten after every phase change and every repetition, so the parent can
read progress (and partial results) even if this process has to be killed.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import NotSupported, NotYetImplemented, maxrss_kib, rss_kib  # noqa: E402

METHODS = {
    "W1": "w1", "W2": "w2", "W3": "w3", "W4": "w4", "W5": "w5", "W5b": "w5b",
    "W6-10k": "w6", "W6-100k": "w6", "W7a": "w7a", "W7b": "w7b",
    "W8": "w8", "W9": "w9", "W10": "w10", "S1": "s1",
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--competitor", required=True, help="module in bench/competitors")
    ap.add_argument("--params", default="{}", help="JSON dict passed to the implementation")
    ap.add_argument("--workload", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--warmup-n", type=int, default=0, help="size of warm-up runs (default: --n)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    out: dict = {"phase": "import", "status": None, "reps": [], "extras": [], "info": {},
                 "pid": os.getpid()}

    def flush() -> None:
        tmp = a.out + ".part"
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, a.out)

    def fail(status: str, reason: str) -> int:
        out["status"] = status
        out["reason"] = reason
        out["phase"] = "done"
        flush()
        return 0

    flush()
    t0 = time.perf_counter()
    try:
        mod = importlib.import_module("competitors." + a.competitor)
        version = mod.version()
    except ImportError as e:  # the library (or distaff) is not installed
        return fail("not installed", f"{type(e).__name__}: {e}")
    except Exception as e:
        return fail("error", "import: " + "".join(traceback.format_exception_only(type(e), e)).strip())
    out["version"] = version
    out["import_s"] = time.perf_counter() - t0

    method_name = METHODS[a.workload]
    impl = mod.Impl(json.loads(a.params))
    method = getattr(impl, method_name, None)
    if method is None:
        reason = getattr(mod, "NOT_EXPRESSIBLE", {}).get(a.workload, "not implemented for this competitor")
        return fail("n/a", reason)

    try:
        out["phase"] = "setup"
        flush()
        t0 = time.perf_counter()
        impl.setup(a.workload)
        out["setup_s"] = time.perf_counter() - t0
        out["phase"] = "warmup"
        flush()
        for _ in range(a.warmup):
            method(a.warmup_n or a.n)
        out["rss_before_kib"] = rss_kib()
        out["phase"] = "measure"
        flush()
        out["cpu_reps"] = []  # process CPU seconds (every thread) of each repetition, setup included
        for _ in range(a.reps):
            c0 = time.process_time()
            res = method(a.n)
            out["cpu_reps"].append(time.process_time() - c0)
            if isinstance(res, dict):
                sec = float(res["seconds"])
                extra = {k: v for k, v in res.items() if k != "seconds"}
            else:
                sec, extra = float(res), {}
            out["reps"].append(sec)
            out["extras"].append(extra)
            flush()
        out["maxrss_kib"] = maxrss_kib()
        out["info"] = dict(getattr(impl, "info", {}))
        out["status"] = "ok"
        out["phase"] = "teardown"
        flush()
    except NotYetImplemented as e:
        return fail("not yet implemented", str(e))
    except NotSupported as e:
        return fail("n/a", str(e))
    except BaseException as e:  # noqa: BLE001 - everything is reported, nothing hidden
        out["info"] = dict(getattr(impl, "info", {}))
        out["traceback"] = traceback.format_exc()[-4000:]
        out["maxrss_kib"] = maxrss_kib()
        fail("error", "".join(traceback.format_exception_only(type(e), e)).strip()[:500])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # never hang in shutdown after a failure

    if getattr(impl, "dirty", False):
        # Executions that can never finish are still pending (W6): a clean shutdown would wait
        # for them forever, so leave without one.
        out["phase"] = "done"
        flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    t0 = time.perf_counter()
    try:
        impl.teardown()
    except Exception as e:  # noqa: BLE001
        out["teardown_error"] = f"{type(e).__name__}: {e}"
    out["teardown_s"] = time.perf_counter() - t0
    out["phase"] = "done"
    flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
