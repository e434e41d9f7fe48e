#!/usr/bin/env python3
"""distaff benchmark suite: distaff against the task engines a user would otherwise pick.

    python bench/run.py                 # full run (~20 min on 2 cores): bench/results/latest.json,
                                        # docs/img/bench_*.png, docs/performance.md
    python bench/run.py --quick         # CI smoke subset (< 2 min): checks everything finishes;
                                        # writes bench/results/quick.json only
    python bench/run.py --only W1 W4    # some workloads (prefix match: W6 = W6-10k and W6-100k)
    python bench/run.py --competitors distaff threads
    python bench/report.py              # regenerate plots + docs/performance.md from latest.json

Run it with the interpreter that has the competitors installed (.venv-bench, see
bench/requirements.txt); a competitor that does not import there is reported "not installed".
Each (workload, competitor) case runs in fresh subprocesses (bench/worker.py) with a timeout;
this process samples their RSS (whole process tree) and CPU time, and reports a timed-out case
whose processes had gone idle as "deadlock".
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import suite  # noqa: E402
from suite import COMPETITORS, WORKLOADS, Case  # noqa: E402

RESULTS = os.path.join(HERE, "results")
LOGS = os.path.join(RESULTS, "logs")

try:
    import psutil
except ImportError:  # CI's plain venv: a minimal /proc reader with the few calls used here
    import contextlib
    import signal
    from types import SimpleNamespace

    class _Proc:
        _tick = os.sysconf("SC_CLK_TCK")
        _page = os.sysconf("SC_PAGE_SIZE")

        def __init__(self, pid):
            self.pid = pid
            self._start = self._stat()[19]

        def _stat(self):
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[1:]  # fields from 3 (state) on, 0-based

        def oneshot(self):
            return contextlib.nullcontext()

        def memory_info(self):
            with open(f"/proc/{self.pid}/statm") as f:
                return SimpleNamespace(rss=int(f.read().split()[1]) * self._page)

        def cpu_times(self):
            st = self._stat()
            return SimpleNamespace(user=int(st[11]) / self._tick, system=int(st[12]) / self._tick)

        def children(self, recursive=False):
            out = []
            try:
                for tid in os.listdir(f"/proc/{self.pid}/task"):
                    with open(f"/proc/{self.pid}/task/{tid}/children") as f:
                        for c in f.read().split():
                            try:
                                q = _Proc(int(c))
                            except OSError:
                                continue
                            out.append(q)
                            if recursive:
                                out += q.children(True)
            except OSError:
                pass
            return out

        def is_running(self):
            try:
                return self._stat()[19] == self._start
            except OSError:
                return False

        def kill(self):
            os.kill(self.pid, signal.SIGKILL)

    psutil = SimpleNamespace(Process=_Proc)


# ------------------------------------------------------------------------------------------------
# one case
def _tree(proc):
    try:
        return [proc] + proc.children(recursive=True)
    except Exception:
        return [proc]


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_process(case: Case, python: str, workdir: str, log_path: str) -> dict:
    """One worker process: returns its JSON plus what the parent observed."""
    module, params, _ = COMPETITORS[case.competitor]
    out_path = os.path.join(workdir, f"{case.workload}_{case.competitor}_{uuid.uuid4().hex[:6]}.json")
    cmd = [python, os.path.join(HERE, "worker.py"), "--competitor", module, "--params",
           json.dumps(params), "--workload", case.workload, "--n", str(case.n), "--reps",
           str(case.reps), "--warmup", str(case.warmup), "--warmup-n", str(case.warmup_n),
           "--out", out_path]
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env,
                             start_new_session=True)
        seen = {}
        peak_rss = 0
        cpu_hist: deque = deque()
        dead_cpu = 0.0  # CPU time of tree members that have exited
        last_cpu = {}
        verdict = None
        done_at = None
        last_read = 0.0
        phase = None
        root = psutil.Process(p.pid) if psutil else None
        while p.poll() is None:
            now = time.monotonic()
            if root is not None:
                procs = _tree(root)
                rss = 0
                alive = set()
                for q in procs:
                    seen.setdefault(q.pid, q)
                    try:
                        with q.oneshot():
                            rss += q.memory_info().rss
                            ct = q.cpu_times()
                            last_cpu[q.pid] = ct.user + ct.system
                        alive.add(q.pid)
                    except Exception:
                        pass
                for pid in list(last_cpu):
                    if pid not in alive:
                        dead_cpu += last_cpu.pop(pid)
                peak_rss = max(peak_rss, rss)
                cpu_hist.append((now, dead_cpu + sum(last_cpu.values())))
                while cpu_hist and now - cpu_hist[0][0] > case.idle_window + 1:
                    cpu_hist.popleft()
            if now - last_read > 0.5:
                last_read = now
                st = _read_json(out_path)
                phase = st.get("phase") if st else None
                if phase == "done" and done_at is None:
                    done_at = now

            def idle() -> bool:
                if len(cpu_hist) < 2 or now - cpu_hist[0][0] < case.idle_window:
                    return False
                # CPU used over the window, as a share of one core
                return (cpu_hist[-1][1] - cpu_hist[0][1]) / (now - cpu_hist[0][0]) < 0.03

            if case.deadlock_check and root is not None and phase in ("warmup", "measure") and idle():
                verdict = "deadlock"
            elif now - t0 > case.timeout:
                verdict = "deadlock" if (root is not None and case.deadlock_check and idle()) else "timeout"
            elif done_at is not None and now - done_at > 30:
                verdict = "hung at exit"
            if verdict:
                break
            time.sleep(0.05 if now - t0 < 5 else 0.1)
        elapsed = time.monotonic() - t0
        # kill whatever is left of the tree (also Ray's daemons if a worker died without shutdown)
        for q in list(seen.values()):
            try:
                if q.is_running():
                    q.kill()
            except Exception:
                pass
        if p.poll() is None:
            p.kill()
        p.wait()
        log.write(f"[harness] exit={p.returncode} elapsed={elapsed:.1f}s verdict={verdict}\n")
    res = _read_json(out_path) or {"status": None, "reps": [], "extras": []}
    res["elapsed_s"] = elapsed
    res["peak_tree_rss_kib"] = peak_rss / 1024 if root is not None else None
    res["nprocs_seen"] = len(seen)
    if verdict == "hung at exit" and res.get("status") == "ok":
        res["teardown_error"] = "did not exit within 30 s after finishing (killed)"
    elif verdict == "timeout" and res.get("reps") and res.get("phase") == "measure":
        # some repetitions finished before the timeout: keep them, say so
        res["status"] = "ok"
        res["partial"] = (f"{len(res['reps'])} of the planned repetitions finished before the "
                          f"{case.timeout:.0f} s timeout")
    elif verdict:
        res["status"] = verdict
        res["reason"] = (f"no CPU use for {case.idle_window:.0f} s while running: every thread waits"
                         if verdict == "deadlock" else f"did not finish within {case.timeout:.0f} s")
    elif res.get("status") is None:
        res["status"] = "error"
        res["reason"] = f"worker exited with code {p.returncode} (phase {res.get('phase')}); see log"
    try:
        os.remove(out_path)
    except OSError:
        pass
    return res


def _summ(values):
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


def metric_values(workload: str, tasks: int, reps: list, extras: list) -> list:
    m = WORKLOADS[workload]["metric"]
    if m == "us_per_task":
        return [s / tasks * 1e6 for s in reps]
    if m == "ms":
        return [s * 1e3 for s in reps]
    if m == "kib_per_exec":
        return [e["kib_per_exec"] for e in extras if "kib_per_exec" in e]
    raise ValueError(m)


def tasks_of(workload: str, n: int) -> int:
    from common import fib_tasks
    return fib_tasks(n) if workload == "W4" else n


def run_case(case: Case, python: str, workdir: str, verbose: bool = True) -> dict:
    log_path = os.path.join(LOGS, f"{case.workload}_{case.competitor}.log")
    open(log_path, "w").close()
    runs = []
    for _ in range(case.procs):
        r = run_process(case, python, workdir, log_path)
        runs.append(r)
        if r.get("status") != "ok":
            break
    last = runs[-1]
    ok_runs = [r for r in runs if r.get("status") == "ok"]
    reps = [s for r in ok_runs for s in r.get("reps", [])]
    extras = [e for r in ok_runs for e in r.get("extras", [])]
    tasks = tasks_of(case.workload, case.n)
    status = "ok" if len(ok_runs) == len(runs) else last.get("status")
    res = {
        "workload": case.workload, "competitor": case.competitor, "n": case.n, "tasks": tasks,
        "scaled": case.scaled, "status": status, "reason": last.get("reason"),
        "version": next((r.get("version") for r in runs if r.get("version")), None),
        "reps_s": reps, "extras": extras,
        "metric": _summ(metric_values(case.workload, tasks, reps, extras)) if status == "ok" else None,
        "peak_tree_rss_kib": max((r.get("peak_tree_rss_kib") or 0) for r in runs) or None,
        "maxrss_kib": max((r.get("maxrss_kib") or 0) for r in runs) or None,
        "rss_before_kib": next((r.get("rss_before_kib") for r in runs if r.get("rss_before_kib")), None),
        "setup_s": next((r.get("setup_s") for r in runs if r.get("setup_s") is not None), None),
        "elapsed_s": sum(r.get("elapsed_s", 0) for r in runs),
        "info": last.get("info") or {}, "config": {"reps": case.reps, "warmup": case.warmup,
                                                   "warmup_n": case.warmup_n, "procs": case.procs,
                                                   "timeout": case.timeout},
    }
    for r in runs:
        if r.get("partial"):
            res["partial"] = r["partial"]
        if r.get("teardown_error"):
            res["teardown_error"] = r["teardown_error"]
        if r.get("traceback"):
            res["traceback"] = r["traceback"]
    if verbose:
        m = res["metric"]
        unit = {"us_per_task": "µs/task", "ms": "ms", "kib_per_exec": "KiB/exec"}[WORKLOADS[case.workload]["metric"]]
        shown = (f"{m['median']:.3g} {unit} ({m['min']:.3g}-{m['max']:.3g})" if m else
                 f"{status}: {(res['reason'] or '')[:110]}")
        print(f"  {case.workload:8s} {case.competitor:13s} n={case.n:<7d} {shown}  "
              f"[{res['elapsed_s']:.1f}s]", flush=True)
    return res


# ------------------------------------------------------------------------------------------------
def machine_info(python: str) -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 1024 / 1024
    except (OSError, ValueError):
        pass
    py = subprocess.run([python, "-c", "import platform,sys;print(platform.python_version());"
                         "print(platform.python_implementation())"], capture_output=True, text=True)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "cpp", "python"],
                           capture_output=True, text=True)
    # which distaff the workers import, and whether the checkout changed since it was built
    probe = subprocess.run([python, "-c", "import distaff, distaff._core as c, os, json;"
                            "print(json.dumps([distaff.__file__, c.__file__, os.path.getmtime(c.__file__),"
                            " getattr(distaff, '__version__', '?')]))"],
                           capture_output=True, text=True)
    installed = None
    try:
        pkg, core, core_mtime, ver = json.loads(probe.stdout.strip().splitlines()[-1])
        newest = 0.0
        for sub in ("cpp", "python", "CMakeLists.txt", "pyproject.toml"):
            top = os.path.join(ROOT, sub)
            paths = [top] if os.path.isfile(top) else [os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs]
            for pth in paths:
                newest = max(newest, os.path.getmtime(pth))
        installed = {"version": ver, "core": core,
                     "built": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(core_mtime)),
                     "checkout_newer": newest > core_mtime + 1}
    except (ValueError, IndexError, OSError):
        pass
    return {
        "distaff_installed": installed,
        "nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem, 1) if mem else None,
        "kernel": platform.release(), "os": platform.platform(),
        "python": " ".join(py.stdout.split()) or platform.python_version(),
        "distaff_commit": (commit.stdout.strip() or None),
        "distaff_tree_dirty": bool(dirty.stdout.strip()),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def compare_previous(old: dict | None, new_cases: list, machine: dict) -> list:
    """distaff rows that got >10% worse than in the previous latest.json, when the distaff build
    changed in between (the same build measured twice differs by noise only)."""
    if not old:
        return []
    om = old.get("run", {}).get("machine", {})
    before, now = om.get("distaff_installed") or {}, machine.get("distaff_installed") or {}
    if before and now and before.get("built") == now.get("built") and before.get("core") == now.get("core"):
        return []
    if not before and om.get("distaff_commit") == machine.get("distaff_commit") and not om.get("distaff_tree_dirty"):
        return []
    prev = {(c["workload"], c["competitor"]): c for c in old.get("cases", [])}
    out = []
    for c in new_cases:
        if not c["competitor"].startswith("distaff") or not c.get("metric"):
            continue
        p = prev.get((c["workload"], c["competitor"]))
        if not p or not p.get("metric") or p["n"] != c["n"]:
            continue
        a, b = p["metric"]["median"], c["metric"]["median"]
        if a > 0 and b > a * 1.10:
            out.append({"workload": c["workload"], "competitor": c["competitor"], "before": a,
                        "after": b, "change": b / a - 1, "previous_run": p.get("run_id"),
                        "previous_commit": om.get("distaff_commit")})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI smoke subset: small sizes, 1 rep")
    ap.add_argument("--only", nargs="+", metavar="W", help="workloads (prefix match)")
    ap.add_argument("--competitors", nargs="+", metavar="C", choices=list(COMPETITORS))
    ap.add_argument("--python", default=None,
                    help="interpreter for the workers (default: .venv-bench/bin/python if present, "
                         "else this one)")
    ap.add_argument("--no-report", action="store_true", help="do not regenerate plots/docs")
    ap.add_argument("--list", action="store_true", help="print the cases and exit")
    a = ap.parse_args()

    python = a.python
    if python is None:
        venv_py = os.path.join(ROOT, ".venv-bench", "bin", "python")
        in_venv = sys.prefix != sys.base_prefix
        python = venv_py if (not in_venv and os.path.exists(venv_py)) else sys.executable
    cases = suite.build_cases(a.quick, a.only, a.competitors)
    skipped = suite.not_run(a.quick, a.only, a.competitors)
    if a.list:
        for c in cases:
            print(f"{c.key:28s} n={c.n:<7d} reps={c.reps} warmup={c.warmup} procs={c.procs} timeout={c.timeout:.0f}")
        return 0
    os.makedirs(LOGS, exist_ok=True)
    run_id = time.strftime("%Y%m%dT%H%M%S")
    info = machine_info(python)
    inst = info.get("distaff_installed")
    if inst and inst.get("checkout_newer"):
        print(f"WARNING: the distaff the workers import was built {inst['built']}; cpp/ or python/ in "
              f"this checkout changed since. Reinstall ({python} -m pip install .) to measure them.",
              file=sys.stderr)
    print(f"distaff bench {'(quick) ' if a.quick else ''}run {run_id}: {len(cases)} cases, "
          f"python {python} ({info['python']}), {info['nproc']} cpus, {info['cpu']}", flush=True)
    t_start = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="distaff-bench-") as workdir:
        current = None
        for case in cases:
            if case.workload != current:
                current = case.workload
                print(f"{case.workload}: {WORKLOADS[case.workload]['title']}", flush=True)
            r = run_case(case, python, workdir)
            r["run_id"] = run_id
            results.append(r)
    for w, c in skipped:
        results.append({"workload": w, "competitor": c, "n": None, "tasks": None, "status": "not run",
                        "reason": suite.not_run_reason(w, c), "run_id": run_id, "metric": None})
    duration = time.time() - t_start
    print(f"done in {duration / 60:.1f} min", flush=True)

    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    run_meta = {"id": run_id, "mode": "quick" if a.quick else "full", "argv": sys.argv[1:],
                "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t_start)),
                "duration_s": round(duration, 1), "machine": info, "worker_python": python}
    out_name = "quick.json" if a.quick else "latest.json"
    out_path = os.path.join(RESULTS, out_name)
    old = _read_json(out_path) if not a.quick else None
    regressions = compare_previous(old, results, info)
    if old and (a.only or a.competitors):
        # partial run: keep the other cases of the previous full run (marked by their run_id)
        keys = {(r["workload"], r["competitor"]) for r in results}
        kept = [c for c in old.get("cases", []) if (c["workload"], c["competitor"]) not in keys]
        results = kept + results
        run_meta["merged_from"] = sorted({c.get("run_id") for c in kept if c.get("run_id")})
        run_meta["runs"] = old.get("run", {}).get("runs", []) + [run_id]
    else:
        run_meta["runs"] = [run_id]
    order = {(w, c): i for i, (w, c) in enumerate((w, c) for w in suite.WORKLOAD_ORDER
                                                  for c in suite.COMPETITOR_ORDER)}
    results.sort(key=lambda r: order.get((r["workload"], r["competitor"]), 1 << 30))
    doc = {"run": run_meta, "regressions": regressions, "cases": results}
    with open(out_path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(out_path + ".tmp", out_path)
    print(f"wrote {os.path.relpath(out_path, ROOT)}")
    for r in regressions:
        print(f"REGRESSION {r['workload']} {r['competitor']}: {r['before']:.3g} -> {r['after']:.3g} "
              f"(+{r['change'] * 100:.0f}%)")

    if not a.quick and not a.no_report:
        import report
        report.generate(doc)

    # exit status: the suite must finish. Failures of the engine under test fail the run;
    # a competitor's failure is a result, reported in the table.
    bad = [r for r in results if r.get("run_id") == run_id and r["competitor"].startswith("distaff")
           and r["status"] not in ("ok", "not yet implemented", "not run")]
    for r in bad:
        print(f"FAILED {r['workload']} {r['competitor']}: {r['status']}: {r.get('reason')}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
