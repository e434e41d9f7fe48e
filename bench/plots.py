"""Plots for docs/performance.md (matplotlib, Agg). Called by bench/report.py."""
from __future__ import annotations

import os

import suite
from suite import COMPETITORS, WORKLOADS

DISTAFF = "#c0392b"
OTHER = "#5d6d7e"
FAILED = "#b7950b"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _short(comp: str) -> str:
    return {
        "distaff": "distaff (1 worker)", "distaff-2w": "distaff (2 workers)",
        "threads": "ThreadPoolExecutor", "processes": "ProcessPoolExecutor",
        "asyncio": "asyncio", "uvloop": "asyncio+uvloop", "gevent": "gevent",
        "dask-threads": "Dask (threads)", "dask-procs": "Dask (processes)", "ray": "Ray",
        "prefect": "Prefect 3", "parsl": "Parsl (threads)", "asyncflow": "radical.asyncflow",
        "asyncflow-distaff": "distaff.asyncflow",
        "pocketflow": "PocketFlow",
    }.get(comp, comp)


def _rows(doc, w):
    idx = {(c["workload"], c["competitor"]): c for c in doc["cases"]}
    rows = []
    for comp in suite.COMPETITOR_ORDER:
        c = idx.get((w, comp))
        if not c or c.get("status") in ("not run", "n/a", "not installed", None):
            continue
        rows.append((comp, c))
    return rows


def _barh(ax, rows, value, unit, title, log=True):
    labels, vals, colors, texts = [], [], [], []
    for comp, c in rows:
        if c["workload"] == "W4":
            lab = _short(comp) + (f"  (fib({c['n']}))" if c.get("scaled") else "")
        else:
            lab = _short(comp) + (f"  (n={c['n']:,})" if c.get("scaled") else "")
        labels.append(lab)
        if c.get("metric"):
            v = value(c)
            vals.append(v)
            colors.append(DISTAFF if comp.startswith("distaff") else OTHER)
            texts.append(_num(v))
        else:
            vals.append(0)
            colors.append(FAILED)
            st = c.get("status", "?")
            texts.append(st if st != "error" else "failed (see table)")
    y = list(range(len(rows)))[::-1]
    finite = [v for v in vals if v > 0]
    ax.barh(y, [v if v > 0 else 0 for v in vals], color=colors)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    if log and finite:
        ax.set_xscale("log")
        lo, hi = min(finite), max(finite)
        ax.set_xlim(lo / 3, hi * 8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(unit, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    xmin = ax.get_xlim()[0]
    for yi, v, t in zip(y, vals, texts):
        ax.text(v * 1.15 if v > 0 else xmin * 1.2, yi, t, va="center", fontsize=7,
                color="black" if v > 0 else FAILED)
    ax.grid(axis="x", which="major", alpha=0.3)


def _num(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def make_all(doc: dict, img_dir: str) -> list[tuple[str, str]]:
    plt = _plt()
    out = []

    # 1. W1 throughput, tasks/s
    rows = _rows(doc, "W1")
    if rows:
        fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.2))
        _barh(ax, rows, lambda c: 1e6 / c["metric"]["median"], "tasks per second (log scale, higher is better)",
              "W1: no-op tasks submitted from the main thread and waited (median)")
        fig.tight_layout()
        name = "bench_w1_throughput.png"
        fig.savefig(os.path.join(img_dir, name), dpi=110)
        plt.close(fig)
        out.append((name, "W1 throughput: tasks per second per engine"))

    # 2. per-task cost for the other time workloads
    ws = [w for w in ("W2", "W3", "W4", "W5", "W7a", "W7b") if _rows(doc, w)]
    if ws:
        ncol = 2
        nrow = (len(ws) + 1) // 2
        fig, axes = plt.subplots(nrow, ncol, figsize=(13, 3.6 * nrow))
        axes = axes.flatten() if hasattr(axes, "flatten") else [axes]
        for ax, w in zip(axes, ws):
            unit = "ms for the 5 workflows" if w == "W7b" else "µs per task (log, lower is better)"
            _barh(ax, _rows(doc, w), lambda c: c["metric"]["median"], unit, WORKLOADS[w]["short"])
        for ax in axes[len(ws):]:
            ax.axis("off")
        fig.tight_layout()
        name = "bench_per_task.png"
        fig.savefig(os.path.join(img_dir, name), dpi=100)
        plt.close(fig)
        out.append((name, "Cost per task for W2-W5 and W7 (median, log scale)"))

    # 3. memory: W6 KiB per suspended execution, W5 peak RSS
    r6 = [(w, _rows(doc, w)) for w in ("W6-10k", "W6-100k")]
    r5 = _rows(doc, "W5")
    if any(r for _, r in r6) or r5:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for ax, (w, rows) in zip(axes[:2], r6):
            if rows:
                _barh(ax, rows, lambda c: c["metric"]["median"], "KiB per suspended execution (log)",
                      WORKLOADS[w]["short"] + ": RSS per waiter")
            else:
                ax.axis("off")
        if r5:
            ok5 = [(comp, c) for comp, c in r5]
            _barh(axes[2], ok5, lambda c: (c.get("peak_tree_rss_kib") or 0) / 1024,
                  "MiB, peak RSS of the process tree (log)", "W5: peak RSS while sleeping")
        else:
            axes[2].axis("off")
        fig.tight_layout()
        name = "bench_memory.png"
        fig.savefig(os.path.join(img_dir, name), dpi=100)
        plt.close(fig)
        out.append((name, "Memory: RSS per suspended execution (W6) and peak RSS with sleepers (W5)"))
    return out
