"""docs/internals/scheduler.md, as a runnable file: the engine's machinery, seen from Python.

    python docs/examples/scheduler.py
"""

import threading
import time

import distaff

engine = distaff.Engine(workers=1)


def until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.001)
    return cond()


# -- executions are records until a worker starts them ---------------------------------------------
started, release = threading.Event(), threading.Event()


def hog():
    started.set()
    release.wait(10)  # deliberately blocks the only worker thread (docs/limits.md says why not to)


first = engine.submit(hog)
started.wait(5)
queued = [engine.submit(abs, -i) for i in range(10_000)]
s = engine.stats()
print(f"submitted {s['submitted']}: queued {s['queued']}, fibers {s['fibers']} (records, not stacks)")
release.set()
print("all ran:", sum(e.result() for e in queued) == sum(range(10_000)), "| fibers back to 0:", until(lambda: engine.stats()["fibers"] == 0))

# -- states: pending -> waiting -> running -> succeeded | failed | cancelled -----------------------
gate = threading.Event()


@engine.task
def gated():
    while not gate.is_set():
        distaff.sleep(0.001)  # suspends the fiber; the worker runs the others
    return "gated"


@engine.task(wait=True)
def dependent(dep):
    return dep.result() + " -> dependent"


@engine.task
def waiter(dep):
    return dep.result()  # suspends here: description["blocked_on"] names dep


g = gated.submit()
d = dependent.submit(g)
w = waiter.submit(g)
until(lambda: w.description["blocked_on"] == g.id)
print("states while gated:", g.state, "|", d.state, "(waiting for its dependency) |", w.state, "blocked on", g.name)
gate.set()
print("after:", d.result(), "|", [x.state for x in (g, d, w)])

gate.clear()
victim = gated.submit()
skipped = dependent.submit(victim)
victim.cancel()
print("cancel a running one:", victim.state, "| its wait= dependent:", skipped.state, type(skipped.exception()).__name__)


# -- the wait graph: a cycle is refused before anyone parks ----------------------------------------
@engine.task
def child_of(parent):
    return parent.result()  # the parent waits on us below: a cycle


@engine.workflow
def parent():
    return child_of(distaff.current_execution())


try:
    parent()
except distaff.DeadlockError as e:
    print("DeadlockError:", str(e).split(": ", 1)[1])

# -- fibers are pinned to their worker; all fibers on a worker share its thread id ----------------
with distaff.Engine(workers=2) as two:

    @two.task
    def hop():
        seen = {threading.get_ident()}
        for _ in range(10):
            distaff.sleep(0.001)
            seen.add(threading.get_ident())
        return len(seen)

    print("threads seen by a fiber across 10 suspensions:", {e.result() for e in [hop.submit() for _ in range(8)]})

engine.shutdown(wait=True)
s = engine.stats()
print(f"after shutdown: live {s['live']}, fibers {s['fibers']}, closed {s['closed']}")
