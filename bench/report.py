#!/usr/bin/env python3
"""Regenerate docs/performance.md and the plots in docs/img/ from bench/results/latest.json.

    python bench/report.py [--results bench/results/latest.json]

bench/run.py calls generate() after a full run. The "Notes" section of docs/performance.md (between
the notes markers) is hand-written and kept as it is on regeneration.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import suite  # noqa: E402
from suite import BASELINE, COMPETITORS, WORKLOADS  # noqa: E402

DOC = os.path.join(ROOT, "docs", "performance.md")
IMG = os.path.join(ROOT, "docs", "img")
NOTES_START = "<!-- notes:start (hand-written; bench/report.py keeps this section) -->"
NOTES_END = "<!-- notes:end -->"
UNITS = {"us_per_task": "µs/task", "ms": "ms", "kib_per_exec": "KiB/execution"}

DEFAULT_NOTES = """\
- (Write observations here: what changed since the last release of this page, why a number moved,
  what a competitor's configuration means. Regeneration keeps this section.)
"""


def fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "—"
    ax = abs(x)
    if ax >= 1000:
        s = f"{x:,.0f}"
    elif ax >= 100:
        s = f"{x:.0f}"
    elif ax >= 10:
        s = f"{x:.1f}"
    elif ax >= 1:
        s = f"{x:.2f}"
    else:
        s = f"{x:.3f}"
    return s + (" " + unit if unit else "")


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "—"
    if r >= 100:
        return f"{r:,.0f}x"
    if r >= 10:
        return f"{r:.0f}x"
    if r >= 0.1:
        return f"{r:.1f}x"
    return f"{r:.2g}x"


def mib(kib):
    return None if not kib else kib / 1024


def status_text(c: dict) -> str:
    s = c.get("status")
    return {"not yet implemented": "n/a (not yet implemented)", "n/a": "n/a"}.get(s, s or "?")


def index(doc: dict) -> dict:
    return {(c["workload"], c["competitor"]): c for c in doc["cases"]}


def ratio(idx: dict, w: str, comp: str) -> float | None:
    c, b = idx.get((w, comp)), idx.get((w, BASELINE))
    if not c or not b or not c.get("metric") or not b.get("metric"):
        return None
    bm = b["metric"]["median"]
    return c["metric"]["median"] / bm if bm > 0 else None


def same_run(idx: dict, w: str, comp: str) -> bool:
    c, b = idx.get((w, comp)), idx.get((w, BASELINE))
    return bool(c and b and c.get("run_id") == b.get("run_id"))


def case_notes(c: dict) -> str:
    notes = []
    info = c.get("info") or {}
    ex = c.get("extras") or []
    if c["workload"] in ("W5", "W5b") and c.get("reps_s"):
        walls = sorted(c["reps_s"])
        wall = walls[len(walls) // 2]
        conc = [e.get("concurrency") for e in ex if e.get("concurrency")]
        conc_s = f", ~{sorted(conc)[len(conc) // 2]:,.0f} sleeping at once" if conc else ""
        notes.append(f"wall {wall:.2f} s{conc_s}")
    if c["workload"].startswith("W6") and c.get("reps_s"):
        per = sorted(s / c["n"] * 1e6 for s in c["reps_s"])
        notes.append(f"suspending took {fmt(per[len(per) // 2])} µs each")
    dg = [e["distaff_gather_us"] for e in ex if e.get("distaff_gather_us")]
    if dg:
        notes.append(f"`await distaff.gather(*executions)` instead: {fmt(sorted(dg)[len(dg) // 2])} µs/task")
    if c["workload"] == "W4" and c.get("n") is not None and c.get("status") in ("ok", "deadlock", "timeout"):
        notes.append(f"fib({c['n']}) = {c['tasks']:,} tasks")
    for k in ("wait", "fan_in", "sleep", "blocker", "workflow", "max_workers", "max_threads",
              "executor_threads", "W5"):
        if k in info:
            v = info[k]
            if k == "wait" and v == "distaff.wait":
                continue
            if k == "fan_in" and v == "distaff.gather":
                continue
            notes.append(f"{k}: {v}")
    if c.get("status") not in ("ok", None) and c.get("reason"):
        notes.append(c["reason"].replace("|", "/").replace("\n", " ")[:300])
    if c.get("partial"):
        notes.append(c["partial"])
    if c.get("teardown_error"):
        notes.append("teardown: " + c["teardown_error"][:120])
    return "; ".join(notes)


def workload_table(doc: dict, w: str) -> list[str]:
    idx = index(doc)
    spec = WORKLOADS[w]
    unit = UNITS[spec["metric"]]
    lines = [f"| engine | n ({spec['size']}) | median {unit} | min–max | × distaff | peak RSS, MiB | notes |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for comp in suite.COMPETITOR_ORDER:
        c = idx.get((w, comp))
        if not c:
            continue
        label = COMPETITORS[comp][2]
        if comp.startswith("distaff"):
            label = f"**{label}**"
        shown_n = c.get("status") in ("ok", "deadlock", "timeout", "error")
        n = "—" if c.get("n") is None or not shown_n else (f"{c['n']:,}" + ("*" if c.get("scaled") else ""))
        m = c.get("metric")
        if m:
            med, rng = fmt(m["median"]), f"{fmt(m['min'])}–{fmt(m['max'])}"
            r = ratio(idx, w, comp)
            rs = fmt_ratio(r) if comp != BASELINE else "1x"
            if r is not None and comp != BASELINE and not same_run(idx, w, comp):
                rs += " †"
        else:
            med, rng, rs = f"**{status_text(c)}**" if c.get("status") in ("deadlock", "timeout", "error") else status_text(c), "", ""
        rss = fmt(mib(c.get("peak_tree_rss_kib"))) if c.get("status") == "ok" else ""
        lines.append(f"| {label} | {n} | {med} | {rng} | {rs} | {rss} | {case_notes(c)} |")
    return lines


def summary_table(doc: dict) -> list[str]:
    idx = index(doc)
    ws = [w for w in suite.WORKLOAD_ORDER if any(k[0] == w for k in idx)]
    head = "| engine | " + " | ".join(w for w in ws) + " |"
    lines = [head, "| --- |" + " ---: |" * len(ws)]
    for comp in suite.COMPETITOR_ORDER:
        if not any((w, comp) in idx for w in ws):
            continue
        cells = []
        for w in ws:
            c = idx.get((w, comp))
            if not c:
                cells.append("")
                continue
            if comp == BASELINE:
                m = c.get("metric")
                cells.append(f"**{fmt(m['median'])}**" if m else status_text(c))
                continue
            r = ratio(idx, w, comp)
            if r is not None:
                cells.append(fmt_ratio(r))
            elif c.get("status") == "ok":
                cells.append("ok")
            else:
                cells.append({"not run": "·", "n/a": "n/a", "not installed": "not installed",
                              "not yet implemented": "n/a"}.get(c.get("status"), f"**{c.get('status')}**"))
        label = COMPETITORS[comp][2]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def targets(doc: dict) -> list[str]:
    """The issue's targets, checked against this run."""
    idx = index(doc)

    def med(w, c):
        x = idx.get((w, c))
        return x["metric"]["median"] if x and x.get("metric") else None

    rows = []

    def row(what, value, ok):
        mark = "—" if ok is None else ("met" if ok else "**missed**")
        rows.append(f"| {what} | {value} | {mark} |")

    d1 = med("W1", "distaff")
    row("W1: ≤ 2 µs per no-op task end to end", fmt(d1, "µs") if d1 else "—", None if d1 is None else d1 <= 2)
    for comp, k in (("threads", 8), ("asyncio", 5), ("dask-threads", 100), ("ray", 100), ("prefect", 100)):
        r = ratio(idx, "W1", comp)
        row(f"W1: ≥ {k}x {COMPETITORS[comp][2]}", fmt_ratio(r), None if r is None else r >= k)
    d4 = med("W4", "distaff-2w")
    row("W4: fib(20) completes with 2 workers, ≤ 10 µs per task", fmt(d4, "µs") if d4 else
        status_text(idx.get(("W4", "distaff-2w"), {})), None if d4 is None else d4 <= 10)
    a4 = med("W4", "asyncio")
    row("W4: faster than asyncio create_task recursion (2 workers / 1 worker)",
        (f"{fmt(d4)} / {fmt(med('W4', 'distaff'))} vs {fmt(a4)} µs" if d4 and a4 else "—"),
        None if not (d4 and a4) else d4 < a4)
    d5 = idx.get(("W5", "distaff-2w"))
    wall = sorted(d5["reps_s"])[len(d5["reps_s"]) // 2] if d5 and d5.get("reps_s") else None
    row("W5: 10k distaff.sleep(0.05) sleepers finish in < 0.3 s wall on 2 workers",
        fmt(wall, "s") if wall else status_text(d5 or {}), None if wall is None else (wall < 0.3 and d5["n"] >= 10_000))
    d6 = med("W6-100k", "distaff")
    row("W6: 100k suspended executions in one process, ≤ 20 KiB each", fmt(d6, "KiB") if d6 else
        status_text(idx.get(("W6-100k", "distaff"), {})), None if d6 is None else d6 <= 20)
    return ["| target (issue 5) | this run | |", "| --- | ---: | --- |"] + rows


def versions(doc: dict) -> list[str]:
    seen = {}
    for c in doc["cases"]:
        comp = c["competitor"]
        if c.get("version") and comp not in seen:
            seen[comp] = c["version"]
    out = []
    for comp in suite.COMPETITOR_ORDER:
        label = COMPETITORS[comp][2]
        if comp in seen:
            out.append(f"- {label}: {seen[comp]}")
        else:
            st = {c.get('status') for c in doc['cases'] if c['competitor'] == comp}
            if "not installed" in st:
                reason = next(c.get("reason") for c in doc["cases"] if c["competitor"] == comp and c.get("status") == "not installed")
                out.append(f"- {label}: **not installed** ({reason})")
    return out


def read_notes() -> str:
    try:
        with open(DOC) as f:
            text = f.read()
    except OSError:
        return DEFAULT_NOTES
    m = re.search(re.escape(NOTES_START) + r"\n(.*?)" + re.escape(NOTES_END), text, re.S)
    return m.group(1) if m else DEFAULT_NOTES


def generate(doc: dict, doc_path: str = DOC, img_dir: str = IMG) -> None:
    import plots
    os.makedirs(img_dir, exist_ok=True)
    pngs = plots.make_all(doc, img_dir)
    notes = read_notes()
    run = doc["run"]
    mach = run["machine"]
    L = []
    L.append("# Performance")
    L.append("")
    L.append("<!-- Generated by `python bench/run.py` (or `python bench/report.py` from "
             "bench/results/latest.json). Edit only the Notes section: regeneration keeps it. -->")
    L.append("")
    L.append("distaff side by side with the task engines a Python user would otherwise pick, on one "
             "machine, in one run. **Lower is better everywhere.** \"× distaff\" is the competitor's "
             "cost divided by distaff's (default engine: 1 worker) in the same run: `12x` means "
             "distaff is twelve times faster (or, for W6, twelve times smaller).")
    L.append("")
    inst = mach.get("distaff_installed") or {}
    L.append(f"Run `{run['id']}` ({run['mode']}), {run['started']}, {run['duration_s'] / 60:.1f} min; "
             f"checkout at commit `{mach.get('distaff_commit')}`"
             + (" with uncommitted changes in cpp/ or python/" if mach.get("distaff_tree_dirty") else "")
             + (f"; distaff {inst.get('version')} as installed {inst.get('built')}" if inst else "")
             + (" (**older than the checkout's sources**)" if inst.get("checkout_newer") else "")
             + (f"; some rows come from earlier runs {', '.join(run.get('merged_from', []))} (ratios "
                "across runs are marked †)" if run.get("merged_from") else "") + ".")
    L.append("")
    L.append("## Summary")
    L.append("")
    cold = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cold.md")
    if os.path.exists(cold):
        L.append("### Cold: a fresh interpreter per measurement, the first run after import and "
                 "engine creation")
        L.append("")
        L.append("What a script, a CLI or a test sees (`python bench/cold.py --save`; method and "
                 "before/after in the Notes). Where cold and warm differ, read this one.")
        L.append("")
        with open(cold) as f:
            L.append(f.read().rstrip("\n"))
        L.append("")
        L.append("### Warm: after a warm-up repetition in the same process")
        L.append("")
    L.append("The distaff row gives its own median (units as in each workload's table: µs per task, "
             "ms for W7b, KiB per suspended execution for W6); the other rows give × distaff. "
             "`·` = not run (see the tables), `n/a` = the library cannot express it (reason in the "
             "tables).")
    L.append("")
    L += summary_table(doc)
    L.append("")
    L.append("### Targets")
    L.append("")
    L += targets(doc)
    L.append("")
    if doc.get("regressions"):
        L.append("### Slower than the previous run")
        L.append("")
        L.append("distaff rows more than 10% slower than in the previous results file (a different "
                 "distaff commit). Sub-second workloads move by up to ~30% between runs on this "
                 "shared 2-core machine with no code change: re-run before blaming the engine, and "
                 "say why in the notes if it holds.")
        L.append("")
        for r in doc["regressions"]:
            L.append(f"- {r['workload']} {r['competitor']}: {fmt(r['before'])} → {fmt(r['after'])} "
                     f"(+{r['change'] * 100:.0f}%; previous: run {r.get('previous_run')}, commit "
                     f"`{r.get('previous_commit')}`)")
        L.append("")
    L.append("## Plots")
    L.append("")
    for name, caption in pngs:
        L.append(f"![{caption}](img/{name})")
        L.append("")
    L.append("## Results by workload")
    L.append("")
    L.append("`n*` = scaled down for a slow engine (its full-size run would take minutes); the "
             "number is per task, so it stays comparable, but fixed per-run costs weigh more at "
             "small n and some engines slow down as n grows (noted where measured). "
             "Peak RSS is the whole process tree (Ray's and Dask's daemons and workers included), "
             "sampled every 50–100 ms by the harness, including the interpreter and the library.")
    L.append("")
    for w in suite.WORKLOAD_ORDER:
        if not any(c["workload"] == w for c in doc["cases"]):
            continue
        L.append(f"### {w}: {WORKLOADS[w]['title']}")
        L.append("")
        L += workload_table(doc, w)
        L.append("")
    L.append("## Method")
    L.append("")
    L += METHOD
    L.append("")
    L.append("## Machine and versions")
    L.append("")
    L.append(f"- {mach['nproc']} CPUs (`nproc`), {mach['cpu']}, {mach.get('mem_gib')} GiB RAM, "
             f"Linux {mach['kernel']}")
    if mach.get("loadavg_at_start"):
        L.append(f"- load average (1/5/15 min) at start {' / '.join(map(str, mach['loadavg_at_start']))}, "
                 f"at end {' / '.join(map(str, mach.get('loadavg_at_end') or []))}: anything above ~0.3 "
                 "means something else was running and the numbers are noisier")
    L.append(f"- {mach['python']} (`{run.get('worker_python')}`)")
    L += versions(doc)
    L.append("")
    L.append("## Notes")
    L.append("")
    L.append(NOTES_START)
    L.append(notes.rstrip("\n"))
    L.append(NOTES_END)
    L.append("")
    L.append("## Reproduce")
    L.append("")
    L.append("```sh")
    L.append("python3 -m venv .venv-bench")
    L.append(".venv-bench/bin/pip install -r bench/requirements.txt . ")
    L.append(".venv-bench/bin/python bench/run.py            # full run, rewrites this page")
    L.append(".venv-bench/bin/python bench/run.py --quick    # smoke subset (CI): must finish")
    L.append(".venv-bench/bin/python bench/run.py --only W4 --competitors distaff distaff-2w asyncio")
    L.append("```")
    L.append("")
    L.append("Raw results: `bench/results/latest.json` (every repetition, per-case config, logs in "
             "`bench/results/logs/`).")
    L.append("")
    with open(doc_path, "w") as f:
        f.write("\n".join(L))
    print(f"wrote {os.path.relpath(doc_path, ROOT)} and {len(pngs)} plots in {os.path.relpath(img_dir, ROOT)}")


METHOD = [
    "- **Harness.** `bench/run.py` runs every (workload, engine) case in fresh subprocesses "
    "(`bench/worker.py`) with a timeout. Each process sets the engine up (not timed), runs one "
    "warm-up repetition (for slow engines at a tenth of the size), then the timed repetitions: 5 "
    "for fast engines, 3 for slow ones, 20 for W7b (5 for slow engines). W6 measures memory: one "
    "repetition in each of 3 fresh processes (2 for distaff with 2 workers), no warm-up. Reported: "
    "median and min–max over repetitions; ratios use medians of the same run.",
    "- **What is timed.** From the first submit to the last result in the submitting thread "
    "(`time.perf_counter`). Every result is checked (chain value, sum, fib value): a wrong result is "
    "an error, not a number. Per-task figures divide by the number of tasks (fib(n) counts every "
    "call: fib(20) is 21,891 tasks).",
    "- **Deadlocks.** W4 cases are watched: a process tree that uses under 3% of a core for "
    "several seconds while running is a deadlock (bounded pools whose threads all wait on "
    "children); it is killed and recorded as such. Other cases that exceed their timeout are "
    "recorded as timeouts.",
    "- **Idiomatic code.** Each engine's implementation is in `bench/competitors/` and is written "
    "the way its documentation writes it: futures passed as arguments where the engine resolves "
    "them (Dask, Ray, Prefect, Parsl, AsyncFlow), `worker_client` for Dask tasks that launch tasks, "
    "a `join_app` for Parsl's fan-out, an async actor for Ray's concurrent sleeps, "
    "`AsyncParallelBatchNode` for PocketFlow's fan-out. Pool sizes: the library default unless a "
    "user would change it for the workload (I/O-sized pools of 1,000 threads for W5; "
    "`ThreadPoolExecutor(8)` for W4 as the issue states).",
    "- **distaff** runs with its default engine (1 worker) and with 2 workers. Where a distaff API "
    "the workload needs is not there yet, the row says \"not yet implemented\"; where one is only "
    "preferred (`distaff.wait`, `distaff.gather`), the fallback used is named in the notes column.",
    "- **RSS per suspended execution (W6)**: RSS after all n waiters are suspended minus RSS "
    "before submitting them, divided by n (includes the execution objects and handles, the "
    "fiber/greenlet/thread stacks' touched pages, and the harness's list of handles).",
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=os.path.join(HERE, "results", "latest.json"))
    ap.add_argument("--doc", default=DOC)
    a = ap.parse_args()
    with open(a.results) as f:
        doc = json.load(f)
    generate(doc, a.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
