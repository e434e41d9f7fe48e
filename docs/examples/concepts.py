"""docs/concepts.md, as a runnable file: tasks, workflows, Executions, dependencies, engines.

    python docs/examples/concepts.py
"""

import asyncio
import logging
import threading
import time

import distaff
from distaff import task, workflow


# -- tasks and workflows: bare or called, with options ---------------------------------------------
@task
def double(x):
    """Doubles x."""
    return 2 * x


@task(name="add-one")
def add_one(x):
    return x + 1


@workflow()
def pipeline(x):
    # In a body (a fiber) a call returns the value; only this fiber waits.
    return add_one(double(x))


print("call from sync code:", double(21))
print("decorated function keeps its metadata:", double.__name__, "|", double.__doc__, "| .fn(2) =", double.fn(2))
print("workflow:", pipeline(5), "| names:", double.name, add_one.name, pipeline.kind)


async def main():
    ex = double(4)  # in a running event loop a call returns the Execution: await it
    print("call inside a running loop:", type(ex).__name__, "->", await ex)


asyncio.run(main())

# -- Executions ------------------------------------------------------------------------------------
ex = double.submit(3)
called_back = threading.Event()
ex.add_done_callback(lambda e: called_back.set())  # runs once, on the thread that finished it
print("submit() -> Execution:", ex.result(), ex.done(), ex.exception(), "| callback ran:", called_back.wait(5))
d = ex.description
print("description keys:", sorted(d))
print("state:", d["state"], "| kind:", d["kind"], "| id == ex.id:", d["id"] == ex.id)

# -- Executions as arguments: dependencies ---------------------------------------------------------
@task(wait=True)  # starts only once its Execution arguments are done; the body gets the Executions
def total(a, b):
    return a.result() + b.result()


@task(resolve=True)  # waits the same way; the body gets the values
def total_values(a, b):
    return a + b


a, b = double.submit(1), double.submit(2)
print("wait=True:", total(a, b), "| resolve=True:", total_values(a, b))


# -- returning an Execution: its result is ours (forwarding) ---------------------------------------
@workflow()
def delegating(x):
    return double.submit(x)  # the body ends here; the workflow finishes when double does


print("forwarded result:", delegating(50))

# -- parents and engine.graph() --------------------------------------------------------------------
with distaff.Engine(workers=1) as engine:
    leaf = engine.task(name="leaf")(lambda x: x)

    @engine.workflow(name="root")
    def root():
        first = leaf.submit(1)
        return leaf(first)  # the second leaf depends on the first

    root()
    graph = engine.graph()
    names = {n["id"]: n["name"] for n in graph["nodes"]}
    for e in sorted(graph["edges"], key=lambda e: (e["kind"], e["target"])):
        print(f"graph edge: {names[e['source']]} -> {names[e['target']]} ({e['kind']})")

# -- engines: fire-and-forget, context manager -----------------------------------------------------
sent = []
with distaff.Engine(workers=2) as engine:
    notify = engine.task(lambda i: sent.append(i))
    for i in range(5):
        notify.submit(i)  # nobody keeps the Execution: it still runs
print("fire-and-forget ran before the with block ended:", sorted(sent))

# -- options: timeout, retries, per-call options ---------------------------------------------------
attempts = []


@task(retries=2, retry_delay=0.01)
def flaky():
    attempts.append(1)
    if len(attempts) < 3:
        raise ConnectionError("try again")
    return "ok"


ex = flaky.submit()
print("retries:", ex.result(), "after", ex.description["attempts"], "attempts")


@task(timeout=0.05)
def slow():
    distaff.sleep(10)  # interrupted by the timeout


try:
    slow()
except distaff.TimeoutError as e:
    print("timeout=:", type(e).__name__, "| also a builtin TimeoutError:", isinstance(e, TimeoutError))
print("per call: slow.options(timeout=0.01) ->", type(slow.options(timeout=0.01).submit().exception()).__name__)

# -- errors ----------------------------------------------------------------------------------------
@task
def fails():
    raise KeyError("missing")


@workflow()
def calls_fails():
    return fails()


try:
    calls_fails()
except KeyError as e:  # the original type (and traceback), plus a note per task it crossed
    print("original type:", repr(e))
    for note in e.__notes__:
        print("  note:", note)

skipped = total.submit(fails.submit(), a)
try:
    skipped.result()
except distaff.DependencyError as e:
    print("DependencyError:", type(e.__cause__).__name__, "is the cause; the body never ran")


@task
def waits_on_itself():
    return distaff.current_execution().result()


try:
    waits_on_itself()
except distaff.DeadlockError as e:
    print("DeadlockError:", "waits on itself" in str(e))

gate = threading.Event()


@task
def blocked():
    while not gate.is_set():
        distaff.sleep(0.005)


ex = blocked.submit()
while not ex.running():
    time.sleep(0.001)
print("cancel() a running execution:", ex.cancel(), ex.state)
try:
    ex.result()
except distaff.CancelledError:
    print("CancelledError from result()")
pending = blocked.submit()
try:
    pending.result(timeout=0.01)
except TimeoutError:
    print("result(timeout=0.01): TimeoutError; the execution keeps running:", not pending.done())
gate.set()
pending.result()

closed = distaff.Engine()
closed.shutdown()
try:
    closed.submit(print)
except distaff.ShutdownError as e:
    print("ShutdownError (a RuntimeError):", isinstance(e, RuntimeError))

# A failure nobody looks at is logged on logger "distaff" when its Execution is collected.
logged = threading.Event()


class PrintMessage(logging.Handler):
    def emit(self, record):
        print(f"logged on {record.name!r} at {record.levelname}, with traceback: {record.exc_info is not None}")
        logged.set()


log = logging.getLogger("distaff")
log.addHandler(PrintMessage())
log.propagate = False  # keep this demo's stderr clean
fails.submit()  # fire-and-forget, and it fails: logged once its Execution is collected
logged.wait(5)


# -- the reserved keyword workflow_id --------------------------------------------------------------
@task
def plain(x):
    return x, distaff.current_execution().workflow_id


@task
def has_own(x, workflow_id=None):
    return workflow_id, distaff.current_execution().workflow_id


print("workflow_id= tags the call, the body never sees it:", plain(1, workflow_id="run-7"))
print("escape hatch, a parameter of that name receives it:", has_own(1, workflow_id="run-7"))
print("reserved keywords:", distaff.RESERVED_KWARGS)
distaff.shutdown()
