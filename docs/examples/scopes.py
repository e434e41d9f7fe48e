"""docs/scopes.md, as a runnable file: workflow scopes and workflow_id tagging.

    python docs/examples/scopes.py
"""

import asyncio
import threading

import distaff
from distaff import task, workflow


@task()
def leaf():
    return distaff.current_execution().workflow_id


@task()
def parent():
    return leaf()  # submitted from a body: inherits the body's workflow id


@task()
def report(name, workflow_id=None):
    # Has its own `workflow_id` parameter: it receives the argument (the escape hatch).
    return workflow_id, distaff.current_execution().workflow_id


@workflow()
def pipeline():
    return distaff.current_execution().workflow_id, parent()


# A scope: a context manager yielding the id; everything submitted inside is tagged, transitively.
with distaff.workflow_scope("experiment-42") as wid:
    ex = parent.submit()
    print("scope:", wid, "| execution:", ex.description["workflow_id"], "| its child:", ex.result())

with distaff.workflow_scope() as wid:
    print("generated id:", wid)

# Call-time workflow_id=: one execution, wins over the scope, stripped before the body.
with distaff.workflow_scope("experiment-43"):
    print("call-time id wins:", parent(workflow_id="run-007"))
    print("a function with its own workflow_id parameter:", report("r", workflow_id="mine"))
print("outside any scope:", report("r", workflow_id="mine"))

# @workflow opens a scope of its own id when none is active.
own, child = pipeline()
print("workflow's own id:", own, "| its child:", child)


# Scopes follow contextvars: concurrent asyncio tasks (and threads, and fibers) each see their own.
async def tagged(name, mine, other):
    async with distaff.workflow_scope(name):
        mine.set()
        await other.wait()  # both scopes are open at the same time
        return await leaf()


async def main():
    a, b = asyncio.Event(), asyncio.Event()
    print("concurrent asyncio tasks:", await asyncio.gather(tagged("A", a, b), tagged("B", b, a)))


asyncio.run(main())

# Scopes are per engine.
with distaff.Engine() as other:
    elsewhere = other.task()(lambda: distaff.current_execution().workflow_id)
    with distaff.workflow_scope("mine"):
        print("another engine's task inside this engine's scope:", elsewhere())

# Listing and cancelling a workflow's executions.
gate = threading.Event()


@task()
def opener():
    while not gate.is_set():
        distaff.sleep(0.001)


@task(wait=True)
def later(dep):
    return "ran"


first = opener.submit()  # outside the scope: not tagged, not cancelled with it
scope = distaff.workflow_scope("batch-1")
with scope:
    queued = [later.submit(first) for _ in range(3)]  # waiting for `first`: not started yet
engine = distaff.default_engine()
print("executions(workflow_id='batch-1'):", [e.name for e in engine.executions(workflow_id="batch-1")])
print("scope.cancel() cancelled:", scope.cancel(), "| states:", sorted({e.state for e in queued}))
gate.set()
distaff.shutdown()
