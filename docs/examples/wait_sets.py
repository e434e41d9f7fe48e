"""docs/wait_sets.md, as a runnable file: wait, as_completed, gather, join.

    python docs/examples/wait_sets.py
"""

import asyncio
import threading

import distaff
from distaff import task

release = threading.Event()


@task()
def step(name, fail=False):
    if name == "slow":
        while not release.is_set():
            distaff.sleep(0.001)  # waits for `release` without holding a worker thread
    if fail:
        raise ValueError(f"{name} failed")
    return name


# wait: concurrent.futures semantics, (done, not_done) sets ------------------------------------------

quick, slow, bad = step.submit("quick"), step.submit("slow"), step.submit("bad", fail=True)
done, not_done = distaff.wait([quick, slow], return_when=distaff.FIRST_COMPLETED)
print("FIRST_COMPLETED:", sorted(e.result() for e in done), "still running:", len(not_done))
done, not_done = distaff.wait([slow, bad], return_when=distaff.FIRST_EXCEPTION)
print("FIRST_EXCEPTION:", [repr(e.exception()) for e in done], "still running:", len(not_done))
done, not_done = distaff.wait([slow], timeout=0.01)
print("timeout: no error, just the split:", len(done), "done,", len(not_done), "not done")

# as_completed: in completion order; TimeoutError if some are unfinished at the deadline ---------------

try:
    for ex in distaff.as_completed([slow, quick], timeout=0.05):
        print("as_completed yielded:", ex.result())
except TimeoutError as e:
    print("as_completed:", e)
release.set()
done, not_done = distaff.wait([quick, slow, bad])  # ALL_COMPLETED, the default
print("ALL_COMPLETED:", len(done), "done")

# gather: a list in argument order; an Execution itself (result(), await, a dependency) -----------------

g = distaff.gather(step.submit("a"), step.submit("b"), step.submit("c"))
print("gather:", g.result())
print("gather, return_exceptions:", distaff.gather(quick, bad, return_exceptions=True).result())
try:
    distaff.gather(quick, bad).result()
except ValueError as e:
    print("gather fails with the member's own error:", repr(e))


@task(resolve=True)
def count(values):
    return len(values)


print("gather as a dependency:", count(distaff.gather(quick, slow)))

# join: a dict by name (WebPipe's join) ----------------------------------------------------------------

print("join:", distaff.join(users=step.submit("users"), posts=step.submit("posts")).result())
try:
    distaff.join(users=quick, posts=bad).result()
except distaff.JoinError as e:
    print(f"JoinError names the member: {e.member!r} ({e})")


@task(wait=True)
def premium(guard):  # skipped when its wait= dependency fails
    return "premium data"


skipped = premium.submit(bad)
print("join, missing=None:", distaff.join(basic=quick, premium=skipped, missing=None).result())

# The same from asyncio: await the awaitables, async for over as_completed -------------------------------


async def main():
    done, _ = await distaff.wait([step.submit("x"), step.submit("y")])
    print("await wait:", sorted(e.result() for e in done))
    names = [ex.result() async for ex in distaff.as_completed([step.submit("p"), step.submit("q")])]
    print("async for as_completed:", sorted(names))
    print("await gather:", await distaff.gather(step.submit("g1"), step.submit("g2")))
    print("await join:", await distaff.join(left=step.submit("l"), right=step.submit("r")))


asyncio.run(main())

# Waiting on many: one wait-set in C++, one wake-up for the waiter ---------------------------------------

many = [step.submit(str(i)) for i in range(10_000)]
done, not_done = distaff.wait(many)
print(f"waited on {len(many)} executions: {len(done)} done")
distaff.shutdown()
