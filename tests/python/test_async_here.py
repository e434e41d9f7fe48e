"""Async bodies submitted on their loop's thread settle their own execution (no promise).

The lean hand-off (docs/internals/sync-calls.md, "Async bodies started here"): the body returns
``_core.PENDING`` to the inline run, the execution stays running, and the asyncio task's end settles
it with ``_core.settle``. First the core primitive, then the paths through it that only this hand-off
has: its fallback when the submit is queued after all, and a cancel arriving from another thread.
Ordering by events, never by sleeping.
"""

import asyncio
import gc
import threading
import weakref

import pytest

import distaff
from distaff import _core

from conftest import run_python


class _PendingBody:
    """A body that hands its work over and returns PENDING; the bindings call _external_stop if the
    execution finishes other than by settle()."""

    def __init__(self, box, started):
        self.box, self.started = box, started
        box["stops"] = []
        box["stopped"] = threading.Event()

    def __call__(self, *args):
        self.box["me"] = distaff.current_execution()
        self.started.set()
        return _core.PENDING

    def _external_stop(self, ex):
        self.box["stops"].append(ex.state)
        self.box["stopped"].set()


def _submit_pending(engine, box, started):
    return _core.submit(engine._capsule, _PendingBody(box, started), "pending", 0, False, (), None, None)


# -- the core primitive -------------------------------------------------------------------------------


def test_a_body_returning_pending_leaves_its_execution_running_until_settle(engine):
    box, started = {}, threading.Event()
    ex = _submit_pending(engine, box, started)
    assert started.wait(30)
    assert box["me"] is ex
    assert not ex.done() and ex.running()
    assert _core.settle(ex, True, 41) is True
    assert ex.result(timeout=30) == 41
    assert _core.settle(ex, True, 42) is False  # once only
    assert ex.result() == 41
    assert box["stops"] == []  # settled: nothing to stop


def test_a_pending_execution_settled_with_an_error_or_none(engine):
    box, started = {}, threading.Event()
    failing = _submit_pending(engine, box, started)
    assert started.wait(30)
    _core.settle(failing, False, KeyError("k"))
    with pytest.raises(KeyError):
        failing.result(timeout=30)
    started.clear()
    cancelled = _submit_pending(engine, box, started)
    assert started.wait(30)
    _core.settle(cancelled, False, None)
    assert cancelled.cancelled()


def test_a_pending_execution_settled_with_an_execution_follows_it(engine):
    gate = threading.Event()

    @engine.task()
    def later():
        gate.wait(30)
        return "followed"

    box, started = {}, threading.Event()
    ex = _submit_pending(engine, box, started)
    assert started.wait(30)
    target = later.submit()
    assert _core.settle(ex, True, target) is True
    assert not ex.done()
    gate.set()
    assert ex.result(timeout=30) == "followed"


def test_cancelling_a_pending_execution_finishes_it_and_runs_its_callbacks(engine):
    box, started = {}, threading.Event()
    ex = _submit_pending(engine, box, started)
    assert started.wait(30)
    seen = []
    ex.add_done_callback(lambda e: seen.append(e.cancelled()))
    assert ex.cancel()
    assert ex.cancelled() and seen == [True]
    assert box["stops"] == ["cancelled"]  # its work is told to stop, once
    assert _core.settle(ex, True, 1) is False
    assert box["stops"] == ["cancelled"]


def test_a_pending_execution_cancelled_during_its_hand_off_stops_its_work_at_once(engine):
    class CancelledMeanwhile(_PendingBody):
        def __call__(self, *args):
            me = distaff.current_execution()
            me._shield()  # as a hand-off does: the cancel finishes it but raises nothing here
            me.cancel()
            return super().__call__(*args)

    box, started = {}, threading.Event()
    ex = _core.submit(engine._capsule, CancelledMeanwhile(box, started), "pending", 0, False, (), None, None)
    assert box["stopped"].wait(30)  # when the hand-off returns
    assert ex.cancelled() and box["stops"] == ["cancelled"]


def test_shutdown_cancel_running_reaches_a_pending_execution():
    eng = distaff.Engine(workers=1)
    box, started = {}, threading.Event()
    ex = _submit_pending(eng, box, started)
    assert started.wait(30)
    eng.shutdown(cancel_running=True, wait=True)
    assert ex.cancelled() and box["stops"] == ["cancelled"]


def test_a_settled_pending_execution_is_freed(engine):
    box, started = {}, threading.Event()
    ex = _submit_pending(engine, box, started)
    assert started.wait(30)
    _core.settle(ex, True, None)
    ref = weakref.ref(ex)
    del ex, box["me"]
    gc.collect()
    assert ref() is None


# -- the lean hand-off ------------------------------------------------------------------------------


def test_an_async_body_started_here_settles_its_own_execution_without_a_promise(engine):
    gate = threading.Event()

    @engine.task()
    def slow():
        gate.wait(30)
        return 1

    reached = None

    @engine.task()
    async def awaits(x):
        await asyncio.sleep(0)
        inner = slow()
        reached.set()  # main resumes after this step, which ends suspended in `await inner`
        return x + await inner, inner

    async def main():
        nonlocal reached
        reached = asyncio.Event()
        ex = awaits(7)
        await reached.wait()
        # Running and following nothing (an async body's execution used to follow a promise of
        # its own: blocked_on named it); while it awaits an execution, the wait graph has that.
        inner = ex.description["blocked_on"]
        gate.set()
        value, inner_ex = await ex
        return ex, value, inner, inner_ex

    ex, value, blocked_on, inner = asyncio.run(main())
    assert value == 8 and ex.result()[0] == 8
    assert blocked_on == inner.id
    assert ex.description["blocked_on"] is None


def test_an_error_from_an_async_body_started_here_carries_one_note(engine):
    @engine.task(name="broken")
    async def broken():
        await asyncio.sleep(0)
        raise ValueError("bad")

    async def main():
        ex = broken()
        with pytest.raises(ValueError) as info:
            await ex
        return ex, info.value

    ex, err = asyncio.run(main())
    notes = [n for n in getattr(err, "__notes__", []) if "raised in task 'broken'" in n]
    assert notes == [f"distaff: raised in task 'broken' (execution {ex.id})"]


def test_cancel_from_another_thread_stops_an_async_body_started_here(engine):
    entered = threading.Event()
    unwound = []

    @engine.task()
    async def waits():
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            unwound.append(True)

    async def main():
        ex = waits()
        t = threading.Thread(target=lambda: (entered.wait(30), ex.cancel()))
        t.start()
        with pytest.raises(asyncio.CancelledError):
            await ex
        await asyncio.to_thread(t.join, 30)
        # The coroutine got its CancelledError on the loop: give the task its turn to unwind.
        for _ in range(100):
            if unwound:
                break
            await asyncio.sleep(0)
        return ex

    ex = asyncio.run(main())
    assert ex.cancelled() and unwound == [True]


@pytest.mark.parametrize("path", ["lean", "general"])
def test_an_async_body_cancelled_from_another_thread_before_its_first_step_never_starts(engine, path):
    # An outsider's find: the cancel reaches the task through call_soon_threadsafe, behind the
    # task's first step, which ran the body up to its first await although its execution was
    # reported cancelled already. (concurrency= takes the general hand-off.)
    started = []
    opts = {} if path == "lean" else {"concurrency": 10**6}

    @engine.task(**opts)
    async def child(i):
        started.append(i)
        await asyncio.sleep(30)

    async def main():
        exs = [child(i) for i in range(200)]
        t = threading.Thread(target=lambda: [ex.cancel() for ex in exs])
        t.start()
        t.join(30)  # blocking the loop on purpose: every cancel lands before any first step runs
        await distaff.wait(exs, timeout=30)
        for _ in range(5):
            await asyncio.sleep(0)  # the tasks' first steps, then their cancels, run
        return exs

    exs = asyncio.run(main())
    assert all(ex.cancelled() for ex in exs)
    assert started == []


def test_un_awaited_async_bodies_started_here_end_cancelled_when_asyncio_run_returns(engine):
    unwound = []

    @engine.task()
    async def never_awaited(i):
        try:
            await asyncio.Event().wait()
        finally:
            unwound.append(i)

    async def main():
        exs = [never_awaited(i) for i in range(50)]
        await asyncio.sleep(0)  # their tasks have started and wait
        return exs

    exs = asyncio.run(main())  # cancels the tasks still pending, as it does any task of its loop
    assert all(ex.cancelled() for ex in exs)
    assert sorted(unwound) == list(range(50))


def test_an_async_body_queued_past_the_inline_nesting_bound_still_runs_on_its_loop(engine):
    # The main thread's synchronous calls run inline, nested; past the bound (16) a submit is queued
    # to a worker, where the lean hand-off gives way to the general one, bound to the same loop.
    @engine.task()
    async def where():
        await asyncio.sleep(0)
        return threading.current_thread(), asyncio.get_running_loop()

    @engine.task()
    def nest(depth):
        if depth:
            return nest(depth - 1)

        async def main():
            ex = where()
            thread, loop = await ex
            return thread is threading.current_thread() and loop is asyncio.get_running_loop(), ex

        return asyncio.run(main())

    same, ex = nest(20)
    assert same is True and ex.done() and not ex.cancelled()


def test_exit_with_async_bodies_started_here_pending_on_an_unfinished_loop():
    # A script that leaves bodies pending on a loop it never finishes or closes: the process ends
    # (no hang). (asyncio reports each pending task of such a loop as destroyed, as it would its own.)
    r = run_python(
        """
import asyncio, distaff

@distaff.task()
async def forever():
    await asyncio.Event().wait()

loop = asyncio.new_event_loop()
async def main():
    global exs
    exs = [forever() for _ in range(100)]
    await asyncio.sleep(0)
loop.run_until_complete(main())
print("submitted", sum(not e.done() for e in exs))
""",
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "submitted 100" in r.stdout


def test_engine_submit_of_an_async_function_on_its_loop_takes_the_lean_hand_off(engine):
    # engine.submit(async_fn) (the concurrent.futures-style call) hands over like a task's call:
    # running when submit returns, following no promise while it awaits an execution, settled by
    # its own coroutine, cancellable from another thread.
    gate = threading.Event()
    reached = None

    @engine.task()
    def slow():
        gate.wait(30)
        return 1

    async def awaits(x):
        inner = slow()
        reached.set()
        return x + await inner, inner

    async def forever():
        await asyncio.Event().wait()

    async def main():
        nonlocal reached
        reached = asyncio.Event()
        ex = engine.submit(awaits, 7)
        state = ex.state
        await reached.wait()
        blocked_on = ex.description["blocked_on"]
        gate.set()
        value, inner = await ex
        stuck = engine.submit(forever)
        threading.Thread(target=stuck.cancel).start()
        await distaff.wait([stuck], timeout=30)
        return state, blocked_on, value, inner, stuck

    state, blocked_on, value, inner, stuck = asyncio.run(main())
    assert state == "running" and value == 8 and blocked_on == inner.id
    assert stuck.cancelled()
