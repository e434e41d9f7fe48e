"""Every example in examples/ and docs/examples/ runs: exit code 0 and a key line."""

import glob
import os
import subprocess
import sys

import pytest

from conftest import ROOT

# A line (or several) each example must print; a file not listed here must still run and print.
KEY_LINES = {
    "examples/demo.py": ["order:", "fib(20) = 6765"],
    "examples/asyncflow_workflows.py": ["Workflow 4 completed", "Total time running asynchronously is:"],
    "examples/asyncflow_scopes.py": [
        "inside experiment-42:        train        workflow_id=experiment-42",
        "call-time id wins over the scope: run-007",
        "another engine's task inside experiment-44: None",
    ],
    "examples/asyncflow_layer_workflows.py": ["Workflow 4 completed at", "Total time running asynchronously is:"],
    "examples/asyncflow_layer_scopes.py": [
        "scope experiment-42: preprocess -> experiment-42, train -> experiment-42",
        "call-time id: run-007; its neighbour in the scope: experiment-43",
        "another engine's task inside experiment-44 -> None",
    ],
    "examples/pocketflow_async.py": ["Stored recipes for chicken.", "Suggestion: Pizza", "Async recipe flow finished"],
    "examples/webpipe_join.py": ["parallel:", "basic user:   {'basic': 13, 'premium': None}", "'member': 'api1'"],
    "docs/examples/asyncio_basics.py": [
        "in a running loop: Execution -> 42",
        "submitted from a running loop, runs on it: True",
        "asyncio.isfuture: True",
        "asyncio.wait: 1 done, 0 pending",
        "wait_for timed out; the execution was cancelled: True",
        "shielded: execution cancelled? False -> <slow>",
        "async with Engine: <in>",
        "result() on the loop thread: DeadlockError; await it: <x>",
    ],
    "docs/examples/asyncflow_features.py": [
        "a call returns an asyncio.Future: True PENDING",
        "total: 60 DONE",
        "dependency failure: ['fetch'] ConnectionError('upstream down') True",
        "a cancelled dependency cancels the dependent: CANCELLED CANCELLED",
        "wc: 3",
        "non-zero exit fails with stderr: True",
        "prompt_task on LocalExecutionBackend: NotImplementedError, as in AsyncFlow 0.5",
        "block result: 15",
        "cancelled block: CANCELLED members: ['CANCELLED', 'CANCELLED']",
        "scope: experiment-42 | experiment-42 run-007 | description: {'gpus': 4}",
        "routing: default in this process: True | backend='procs' in another: True",
        "dry run: Dummy Output | body ran: False True",
        "files: asyncflow_features.py -> converted.txt ['asyncflow_features.py'] ['converted.txt']",
    ],
    "docs/examples/sync_calls.py": [
        "main thread: (1, 'MainThread', True)",
        "another thread: True True",
        "Ctrl-C: KeyboardInterrupt; the child was cancelled: True",
    ],
    "docs/examples/sync.py": [
        "lock: [0, 1, 2] ['in 0', 'out 0', 'in 1', 'out 1', 'in 2', 'out 2']",
        "semaphore: at most 2 at once",
        "queued without fibers: True",
    ],
    "docs/examples/wait_sets.py": [
        "as_completed: 1 (of 2) executions unfinished",
        "join, missing=None: {'basic': 'quick', 'premium': None}",
        "waited on 10000 executions: 10000 done",
    ],
    "docs/examples/scopes.py": [
        "a function with its own workflow_id parameter: ('mine', 'experiment-43')",
        "concurrent asyncio tasks: ['A', 'B']",
        "scope.cancel() cancelled: 3 | states: ['cancelled']",
    ],
    "docs/examples/concepts.py": [
        "call inside a running loop: Execution -> 8",
        "forwarded result: 100",
        "graph edge: root -> leaf (parent)",
        "DependencyError: KeyError is the cause; the body never ran",
        "logged on 'distaff' at ERROR, with traceback: True",
        "escape hatch, a parameter of that name receives it: ('run-7', None)",
    ],
    "docs/examples/limits.py": [
        "threading.get_ident() values seen by 20 tasks on 1 worker: 1",
        "threading.local and contextvars are per fiber: True True",
        "runaway recursion in a body: RecursionError",
        "finally around the loop ran on cancel: True",
    ],
    "docs/examples/observability.py": [
        "results: {1: 15.0, 2: 15.0, 3: 'failed: order 3: address missing', 4: 15.0}",
        "events: TaskCreated 24, TaskStarted 24, TaskCompleted 22, TaskFailed 2",
        "first failure: validate in order-3, ValueError: order 3: address missing, attempts=2",
        "chrome trace: tracks ['other threads', 'worker 0'",
        "flow arrows: parent->child 20, dependency->dependent 12",
        "report written: True",
        "python -m distaff report: True",
        "shipped: ['mailed 1', 'mailed 2', 'mailed 3']",
        "elsewhere: tracks ['asyncio loop (distaff-event-loop)', 'executor processes']",
    ],
    "docs/examples/testing.py": ["3 passed", "distaff_engine example tests: passed"],
    "docs/examples/scheduler.py": [
        "queued 10000, fibers 1 (records, not stacks)",
        "(waiting for its dependency)",
        "its wait= dependent: failed DependencyError",
        "threads seen by a fiber across 10 suspensions: {1}",
        "after shutdown: live 0, fibers 0, closed True",
    ],
    "docs/examples/executors_processes.py": [
        "ran in 2 worker processes, none of them this one: True",
        "sum of squares: 30",
        "ValueError: invalid literal for int() with base 10: 'forty-two' | note: distaff: task 'parse' raised on executor 'processes'",
        "worker died: WorkerLostError",
        "timed out: TimeoutError | next call works: True",
        "description: {'executor': 'processes', 'state': 'failed'}",
    ],
    "docs/examples/executors_dask.py": [
        "sum of 20 squares computed on Dask: 2470",
        "this process among them: False",
        "description executor: dask",
        "client still running after the engine's shutdown: True",
    ],
    "docs/examples/graph_pictures.py": [
        "merged: ['rows from a', 'rows from c']",
        "digraph distaff {",
        'n3 [label="fetch  #3\\nfailed\\nConnectionError: source \'b\' is down"',
        "flowchart TD",
        "    n2 --> n5",
        "dot drew a PNG: True",
    ],
    "docs/examples/progress.py": [
        "wait: 40 done, 0 not done",
        "as_completed: 40 in completion order",
        "join: {'first': 0, 'last': 1521}",
        "progress(): {'done': 10, 'total': 10, 'failed': 0, 'cancelled': 0, 'running': 0, 'pending': 0}",
    ],
    "docs/examples/executors_ray.py": [
        "ray results: [1, 2, 3, 4, 5]",
        "IndexError from Ray keeps its type: True",
    ],
}

# Examples of optional backends: skipped where the package is not installed (Ray has no wheel for
# every CPython; the test extra installs it where it has).
NEEDS = {"docs/examples/executors_dask.py": "distributed", "docs/examples/executors_ray.py": "ray"}

EXAMPLES = sorted(
    os.path.relpath(p, ROOT)
    for pattern in ("examples/*.py", "docs/examples/*.py")
    for p in glob.glob(os.path.join(ROOT, pattern))
)


def test_every_listed_example_exists():
    assert sorted(KEY_LINES) == sorted(set(KEY_LINES) & set(EXAMPLES)), set(KEY_LINES) - set(EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES)
def test_example_runs(path):
    if path in NEEDS:
        pytest.importorskip(NEEDS[path])
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 0, f"{path} exited with {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert r.stdout.strip(), f"{path} printed nothing"
    for line in KEY_LINES.get(path, []):
        assert line in r.stdout, f"{path}: {line!r} not in its output:\n{r.stdout}"
    # Nothing went wrong quietly: no traceback, no failure that nobody looked at.
    assert "Traceback" not in r.stderr and "nobody retrieved" not in r.stderr, r.stderr
