"""The benchmark matrix: workloads, competitors, and per-case sizes, repetitions and timeouts.

Sizes: the fast engines run the workloads at the sizes the issue names; the slow ones (Dask, Ray,
Prefect, Parsl, radical.asyncflow) at smaller sizes, reported per task so the ratios stay
comparable. Every scaled size is listed in the report's tables (column n).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# ----------------------------------------------------------------------------------------------
# Workloads
# metric: how one repetition becomes the reported number
#   us_per_task  seconds / tasks * 1e6         (lower is better)
#   kib_per_exec extras["kib_per_exec"]       (lower is better)
#   ms           seconds * 1e3                 (lower is better)
WORKLOADS = {
    "W1": dict(title="Throughput: independent no-op tasks submitted from the main thread, then all waited",
               short="W1 no-op throughput", metric="us_per_task", size="tasks"),
    "W2": dict(title="Chain: each task depends on the previous one (per-hop latency)",
               short="W2 chain", metric="us_per_task", size="hops"),
    "W3": dict(title="Fan-out/fan-in: a workflow submits n children and sums their results",
               short="W3 fan-out/fan-in", metric="us_per_task", size="children"),
    "W4": dict(title="Nested synchronous waits: recursive fib(n), every call a task that waits on two child tasks",
               short="W4 recursive fib", metric="us_per_task", size="fib(n)"),
    "W5": dict(title="Concurrent waits: n tasks that each sleep 50 ms (the library's own non-blocking sleep where it has one)",
               short="W5 50 ms sleepers", metric="us_per_task", size="sleepers"),
    "W5b": dict(title="Blocking calls in bodies: n tasks that each call time.sleep(0.05)",
                short="W5b time.sleep sleepers", metric="us_per_task", size="sleepers"),
    "W6-10k": dict(title="Suspended executions: 10k executions waiting on one never-finished execution",
                   short="W6 10k suspended", metric="kib_per_exec", size="waiters"),
    "W6-100k": dict(title="Suspended executions: 100k executions waiting on one never-finished execution",
                    short="W6 100k suspended", metric="kib_per_exec", size="waiters"),
    "W7a": dict(title="asyncio: n executions awaited with asyncio.gather",
                short="W7a asyncio.gather", metric="us_per_task", size="tasks"),
    "W7b": dict(title="asyncio: the AsyncFlow seed, 5 concurrent workflows task3(task1(), task2())",
                short="W7b 5 AsyncFlow workflows", metric="ms", size="workflows"),
    "W8": dict(title="CPU-bound fan-out: 32 pure-Python bodies of ~50 ms each, on 2 cores",
               short="W8 CPU-bound fan-out", metric="ms", size="bodies"),
    "W9": dict(title="Remote overhead: n tiny bodies through distaff on an executor vs the executor's own submit+result",
               short="W9 remote overhead", metric="us_per_task", size="bodies"),
    "W10": dict(title="A DAG: 200 Dask-executed leaves of 10 ms combined in three levels",
                short="W10 Dask DAG", metric="ms", size="leaves"),
}
WORKLOAD_ORDER = list(WORKLOADS)
EXECUTOR_WORKLOADS = {"W8", "W9", "W10"}

# ----------------------------------------------------------------------------------------------
# Competitors: id -> (module in bench/competitors, params, label)
COMPETITORS = {
    "distaff": ("distaff_", {"workers": 1}, "distaff (1 worker, default)"),
    "distaff-2w": ("distaff_", {"workers": 2}, "distaff (2 workers)"),
    # The same with engine.trace("....jsonl") recording around the measured part (the file is
    # written after it; its time is in the case's info): docs/observability.md, "Cost".
    "distaff-traced": ("distaff_", {"workers": 1, "trace": "jsonl"}, "distaff (1 worker) recording a trace"),
    "threads": ("threads", {}, "concurrent.futures ThreadPoolExecutor"),
    "processes": ("processes", {}, "concurrent.futures ProcessPoolExecutor(2)"),
    "asyncio": ("asyncio_", {"loop": "asyncio"}, "asyncio create_task + gather"),
    "uvloop": ("asyncio_", {"loop": "uvloop"}, "asyncio on uvloop"),
    "gevent": ("gevent_", {}, "gevent greenlets"),
    "dask-threads": ("dask_", {"processes": False}, "Dask distributed LocalCluster (threads)"),
    "dask-procs": ("dask_", {"processes": True}, "Dask distributed LocalCluster (2 processes)"),
    "ray": ("ray_", {}, "Ray (local)"),
    "prefect": ("prefect_", {}, "Prefect 3 (local temporary server)"),
    "parsl": ("parsl_", {}, "Parsl ThreadPoolExecutor"),
    "asyncflow": ("asyncflow_", {}, "radical.asyncflow"),
    "asyncflow-distaff": ("asyncflow_distaff_", {}, "distaff.asyncflow (AsyncFlow's API, same program)"),
    "pocketflow": ("pocketflow_", {}, "PocketFlow"),
    # W8-W10 (docs/executors.md)
    "x-distaff-processes": ("executors_", {"impl": "distaff-processes"}, "distaff executor=\"processes\" (2)"),
    "x-distaff-local": ("executors_", {"impl": "distaff-local"}, "distaff in-process (1 worker)"),
    "x-ppe": ("executors_", {"impl": "ppe"}, "ProcessPoolExecutor(2) directly"),
    "x-distaff-ppe": ("executors_", {"impl": "distaff-ppe"}, "distaff executor=ProcessPoolExecutor(2)"),
    "x-loky": ("executors_", {"impl": "loky"}, "loky reusable executor (2)"),
    "x-dask": ("executors_", {"impl": "dask"}, "Dask LocalCluster (2 procs) directly"),
    "x-distaff-dask": ("executors_", {"impl": "distaff-dask"}, "distaff executor=Dask client"),
    "x-ray": ("executors_", {"impl": "ray"}, "Ray (2 CPUs) directly"),
    "x-distaff-ray": ("executors_", {"impl": "distaff-ray"}, "distaff executor=Ray()"),
}
EXECUTOR_COMPETITORS = {c for c in COMPETITORS if c.startswith("x-")}
COMPETITOR_ORDER = list(COMPETITORS)
BASELINE = "distaff"
SLOW = {"dask-threads", "dask-procs", "ray", "prefect", "parsl", "asyncflow", "asyncflow-distaff"}

# Full sizes (the issue's), for every competitor unless overridden below.
FULL_N = {"W1": 100_000, "W2": 10_000, "W3": 10_000, "W4": 20, "W5": 10_000, "W5b": 200,
          "W6-10k": 10_000, "W6-100k": 100_000, "W7a": 100_000, "W7b": 5, "W8": 32, "W9": 2_000, "W10": 200}

# Scaled-down sizes for slow competitors (and a few fast ones where the full size would take
# minutes). None = not run (the module states why, or the table says).
SCALED_N = {
    "processes": {"W1": 10_000},
    "dask-threads": {"W1": 2_000, "W2": 1_000, "W3": 1_000, "W4": 10, "W5": 100, "W7a": 2_000},
    "dask-procs": {"W1": 2_000, "W2": 1_000, "W3": 1_000, "W4": 10, "W5": 100, "W7a": 2_000},
    "ray": {"W1": 2_000, "W2": 1_000, "W3": 1_000, "W4": 9, "W5": 2_000, "W7a": 2_000},
    "prefect": {"W1": 300, "W2": 100, "W3": 100, "W4": 7, "W5": 50},
    "parsl": {"W1": 2_000, "W2": 1_000, "W3": 1_000, "W4": 15, "W5": 2_000},
    "asyncflow": {"W1": 2_000, "W2": 100, "W3": 2_000, "W4": 15, "W5": 2_000, "W7a": 2_000},
    # the same sizes as radical.asyncflow, so that the two rows compare the same program
    "asyncflow-distaff": {"W1": 2_000, "W2": 100, "W3": 2_000, "W4": 15, "W5": 2_000, "W7a": 2_000},
    "threads": {"W7a": 20_000},
}

# Workloads each competitor is tried on (anything else is listed as not expressible, with the
# reason its module gives). Dask with processes only runs the task-graph workloads.
RUNS_ON = {c: set(WORKLOAD_ORDER) - EXECUTOR_WORKLOADS for c in COMPETITORS}
RUNS_ON.update({
    "x-distaff-processes": {"W8", "W9"}, "x-distaff-local": {"W8"}, "x-ppe": {"W8", "W9"},
    "x-distaff-ppe": {"W9"}, "x-loky": {"W8"}, "x-dask": {"W9", "W10"}, "x-distaff-dask": {"W9", "W10"},
    "x-ray": {"W9", "W10"}, "x-distaff-ray": {"W9"},
})
RUNS_ON["dask-procs"] = {"W1", "W2", "W3", "W4"}
RUNS_ON["distaff-traced"] = {"W1", "W4"}
# W5b (time.sleep in bodies) is about distaff's blocking-call handling; threads are the reference.
for _c in COMPETITORS:
    if _c not in ("distaff", "distaff-2w", "threads"):
        RUNS_ON[_c].discard("W5b")

# Competitors whose W4 is expected to deadlock (bounded pools): short timeout + idle detection.
DEADLOCK_PRONE = {("threads", "W4"), ("parsl", "W4"), ("prefect", "W4")}

QUICK_COMPETITORS = ["distaff", "distaff-2w", "threads", "asyncio", "x-distaff-processes"]
QUICK_N = {"W1": 2_000, "W2": 500, "W3": 500, "W4": 12, "W5": 200, "W5b": 100,
           "W6-10k": 500, "W6-100k": 1_000, "W7a": 2_000, "W7b": 5, "W8": 4, "W9": 100, "W10": 20}


@dataclass
class Case:
    workload: str
    competitor: str
    n: int
    reps: int = 5
    warmup: int = 1
    warmup_n: int = 0
    procs: int = 1  # fresh processes; each does `reps` repetitions
    timeout: float = 180.0
    deadlock_check: bool = False
    idle_window: float = 4.0
    scaled: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.workload}:{self.competitor}"


def build_cases(quick: bool, workloads=None, competitors=None) -> list[Case]:
    cases = []
    comps = QUICK_COMPETITORS if quick else COMPETITOR_ORDER
    if competitors:
        comps = [c for c in COMPETITOR_ORDER if c in competitors]
    for w in WORKLOAD_ORDER:
        if workloads and not any(w == x or w.startswith(x) for x in workloads):
            continue
        for c in comps:
            if w not in RUNS_ON[c]:
                continue
            scaled_n = SCALED_N.get(c, {}).get(w)
            n = QUICK_N[w] if quick else (scaled_n or FULL_N[w])
            case = Case(w, c, n, scaled=bool(scaled_n) and scaled_n != FULL_N[w] and not quick)
            slow = c in SLOW
            if w.startswith("W6"):
                # memory: one repetition per fresh process, no warm-up (a warm-up would pre-grow
                # the heap and hide the cost)
                case.reps, case.warmup, case.procs = 1, 0, 3
                case.timeout = 240
            elif w == "W5":
                case.reps, case.warmup = 3, 1
                case.warmup_n = max(1, n // 10)
            elif w == "W5b":
                # 200 x 50 ms = 10 s if the sleepers run one at a time: no warm-up, and a timeout
                # that keeps the repetitions finished before it
                case.reps, case.warmup, case.timeout = 3, 0, 45
            elif w == "W7b":
                case.reps, case.warmup = (5 if slow or c == "prefect" else 20), 1
            elif w in EXECUTOR_WORKLOADS:
                case.reps, case.warmup = 5, 1
            elif slow:
                case.reps, case.warmup = 3, 1
                case.warmup_n = max(1, n // 10) if w != "W4" else n
            else:
                case.reps = 7  # sub-second repetitions: more of them steady the median
            if c == "prefect":
                case.reps = min(case.reps, 3)
                case.timeout = 300
            if (c, w) in DEADLOCK_PRONE:
                case.timeout = 60
                case.deadlock_check = True
            elif w == "W4":
                case.deadlock_check = True
                case.idle_window = 8.0
            if c == "distaff-2w" and w.startswith("W6"):
                case.procs = 2
            if quick:
                case.reps, case.warmup, case.procs = 1, 0, 1
                case.warmup_n = 0
                case.timeout = min(case.timeout, 60)
                if case.deadlock_check:
                    case.timeout = 20
            cases.append(case)
    return cases


def not_run_reason(workload: str, competitor: str) -> str:
    if workload in EXECUTOR_WORKLOADS or competitor in EXECUTOR_COMPETITORS:
        return "not run: W8-W10 compare executors (the x- rows); see docs/executors.md"
    if competitor == "dask-procs":
        return "not run: the processes cluster runs the task-graph workloads W1-W4 only (see the threads cluster)"
    if workload == "W5b":
        return "not run: W5b shows distaff's handling of blocking calls; see this library's W5 row"
    return "not run"


def not_run(quick: bool, workloads=None, competitors=None) -> list[tuple[str, str]]:
    """(workload, competitor) pairs outside RUNS_ON: listed in the report with a reason."""
    out = []
    comps = QUICK_COMPETITORS if quick else COMPETITOR_ORDER
    if competitors:
        comps = [c for c in COMPETITOR_ORDER if c in competitors]
    for w in WORKLOAD_ORDER:
        if workloads and not any(w == x or w.startswith(x) for x in workloads):
            continue
        for c in comps:
            if (w in EXECUTOR_WORKLOADS) != (c in EXECUTOR_COMPETITORS):
                continue  # the executor workloads and competitors are a table of their own
            if w not in RUNS_ON[c]:
                out.append((w, c))
    return out
