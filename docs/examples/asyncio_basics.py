"""docs/asyncio.md, as a runnable file: async def tasks and awaiting Executions.

    python docs/examples/asyncio_basics.py
"""

import asyncio
import threading

import distaff
from distaff import task


@task()
def double(x):
    return 2 * x


@task()
async def where():
    await asyncio.sleep(0)
    return asyncio.get_running_loop(), threading.current_thread().name


@task()
async def fetch(name, delay=0.05):
    await asyncio.sleep(delay)  # in async bodies keep using asyncio.sleep
    return f"<{name}>"


@task()
def sync_body_calling_async():
    # A fiber: calling an async task suspends this fiber until the value is there.
    return fetch("from a fiber")


@task(resolve=True)
def combine(a, pair, mapping):
    # resolve=True: Executions at the top level and one container level down arrive as values.
    return a, pair, mapping


@task()
def polite_sleeper():
    distaff.sleep(0.05)  # suspends this fiber only; time.sleep would hold the worker thread
    return "slept"


# 1. What a call returns ----------------------------------------------------------------------------

print("sync code:", double(21))  # the value (the caller blocks)


@task()
def in_a_fiber():
    return double(21)  # the value (the fiber suspends; the worker runs others)


print("in a fiber:", in_a_fiber())


async def in_a_loop():
    ex = double(21)  # the Execution, at once: blocking would freeze the loop
    print("in a running loop:", type(ex).__name__, "->", await ex)


asyncio.run(in_a_loop())

# 2. Which loop runs an async body ---------------------------------------------------------------------


async def which_loop():
    loop, thread = await where()
    print("submitted from a running loop, runs on it:", loop is asyncio.get_running_loop(), thread)


asyncio.run(which_loop())
loop, thread = where()  # no running loop here: the engine's own loop thread
print("submitted from plain code, runs on the engine's loop:", thread)

# 3. Sync and async mix ---------------------------------------------------------------------------------

print("a sync body calling an async task:", sync_body_calling_async())

# 4. resolve= and how deep Executions count ------------------------------------------------------------

out = combine(double.submit(1), (double.submit(2), "x"), {"k": double.submit(3)})
print("resolve=True:", out)

# 5. asyncio APIs over Executions (an Execution is an asyncio future); cancelling ------------------


async def asyncio_tools():
    print("asyncio.gather:", await asyncio.gather(double.submit(1), fetch.submit("a")))
    print("asyncio.isfuture:", asyncio.isfuture(double.submit(1)))
    done, pending = await asyncio.wait([fetch.submit("w")], return_when=asyncio.FIRST_COMPLETED)
    print("asyncio.wait:", len(done), "done,", len(pending), "pending")
    slow = fetch.submit("slow", 0.2)
    try:
        await asyncio.wait_for(slow, 0.01)  # asyncio's rule for futures: a timeout cancels it
    except asyncio.TimeoutError:
        print("wait_for timed out; the execution was cancelled:", slow.cancelled())
    slow = fetch.submit("slow", 0.2)
    try:
        await asyncio.wait_for(asyncio.shield(slow), 0.01)  # shield: the timeout cancels the await only
    except asyncio.TimeoutError:
        print("shielded: execution cancelled?", slow.cancelled(), "->", await slow)
    done, pending = await distaff.wait([fetch.submit("w")])  # an awaitable inside a loop
    print("await distaff.wait(...):", len(done), "done,", len(pending), "pending")


asyncio.run(asyncio_tools())

# 5b. An engine inside a coroutine: async with / await ashutdown(); DeadlockError instead of a freeze ---


async def engine_in_a_coroutine():
    async def fetch_here(name):
        await asyncio.sleep(0.01)
        return f"<{name}>"

    async with distaff.Engine() as e:  # leaving the block awaits e.ashutdown(): the loop keeps running
        ex = e.task(fetch_here).submit("in")
    print("async with Engine:", ex.result())  # finished by now: no wait
    e2 = distaff.Engine()
    ex2 = e2.task(fetch_here).submit("x")
    try:
        ex2.result()  # would block the loop this body needs
    except distaff.DeadlockError:
        print("result() on the loop thread: DeadlockError; await it:", await ex2)
    await e2.ashutdown()


asyncio.run(engine_in_a_coroutine())

# 6. distaff.sleep -------------------------------------------------------------------------------------

print("distaff.sleep in a sync body:", polite_sleeper())
distaff.shutdown()
