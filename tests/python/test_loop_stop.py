"""An ``async def`` body that calls ``loop.stop()`` on the loop distaff runs it on.

The engine's own loop (bodies submitted from outside a running loop) is shared by every such body,
and a ThreadPoolExecutor thread's loop by the bodies that thread runs: one body stopping it must
fail that body, as under ``asyncio.run``, and leave the loop running for the others. Each test runs
in a fresh interpreter with a deadline."""

import pytest

from conftest import run_python

SCRIPT = """
import asyncio, sys, threading
import distaff
from concurrent.futures import ThreadPoolExecutor

where = WHERE
options = {"executor": ThreadPoolExecutor(1)} if where == "pool" else {}

@distaff.task(**options)
async def stops_the_loop():
    asyncio.get_running_loop().stop()
    await asyncio.sleep(0.05)
    return "not reached"

@distaff.task(**options)
async def a_task_it_started_stops_the_loop():
    async def child():
        asyncio.get_running_loop().stop()
    await asyncio.get_running_loop().create_task(child())
    await asyncio.sleep(0.05)
    return "not reached"

@distaff.task(**options)
async def stops_the_loop_and_returns_at_once():
    asyncio.get_running_loop().stop()
    return "returned"

@distaff.task(**options)
async def fine(i):
    await asyncio.sleep(0.001)
    return i

def outcome(ex):
    err = ex.exception(timeout=20)
    return f"{type(err).__name__}: {err}" if err is not None else f"ok: {ex.result()}"

print("A", outcome(stops_the_loop.submit()), flush=True)
print("B", outcome(a_task_it_started_stops_the_loop.submit()), flush=True)
print("C", outcome(stops_the_loop_and_returns_at_once.submit()), flush=True)
# later async bodies, submitted from a plain thread, still run
got = []
t = threading.Thread(target=lambda: got.append(sum(e.result(timeout=20) for e in [fine.submit(i) for i in range(100)])))
t.start()
t.join()
print("LATER", got, flush=True)
fine.submit(1)  # fire and forget: the exit waits for it
"""


@pytest.mark.parametrize("where", ["engine-loop", "pool"])
def test_a_body_that_stops_its_loop_fails_and_the_loop_runs_on(where):
    # Before, on the engine's loop: A never ended (its exception() timed out), every later async
    # body never ran, and the exit printed "Task was destroyed but it is pending!". On a pool
    # thread's loop: A never ended either (its batch returned without it).
    r = run_python(SCRIPT.replace("WHERE", repr(where)), timeout=90)
    assert r.returncode == 0, r.stderr
    stopped = "RuntimeError: Event loop stopped before Future completed."
    assert f"A {stopped}" in r.stdout, (r.stdout, r.stderr)
    assert f"B {stopped}" in r.stdout, (r.stdout, r.stderr)
    assert "C ok: returned" in r.stdout, (r.stdout, r.stderr)
    assert "LATER [4950]" in r.stdout, (r.stdout, r.stderr)
    assert "Task was destroyed" not in r.stderr and "never awaited" not in r.stderr, r.stderr
