"""An Execution is an asyncio future: every asyncio API that takes futures takes it as it is.

One test per asyncio API (docs/asyncio.md, "asyncio APIs over Executions"). Each runs under a
deadline: pytest-timeout for the module, asyncio.timeout inside the coroutines, and a fresh
interpreter for the case that used to hang (asyncio.wait).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading

import pytest

import distaff
from conftest import fiber_wait, run_python

pytestmark = pytest.mark.timeout(120)

var = contextvars.ContextVar("var", default="unset")


def run(main, deadline: float = 30):
    async def bounded():
        async with asyncio.timeout(deadline):
            return await main()

    return asyncio.run(bounded())


@pytest.fixture
def blocked(engine, new_gate):
    """blocked() -> (execution, gate): a sync task that finishes with "done" once gate is set."""

    @engine.task()
    def slow(gate):
        assert fiber_wait(gate)
        return "done"

    def make():
        gate = new_gate()
        return slow.submit(gate), gate

    return make


@pytest.fixture
def tasks(engine):
    @engine.task()
    def double(x):
        return 2 * x

    @engine.task()
    def boom(msg):
        raise KeyError(msg)

    return double, boom


async def _await(ex):
    return await ex


# -- the protocol ---------------------------------------------------------------------------------


def test_isfuture_inside_a_running_loop_and_a_plain_awaitable_outside(tasks):
    double, _ = tasks
    ex = double.submit(1)

    async def main():
        return asyncio.isfuture(ex)

    assert run(main) is True
    # No loop runs here, so no loop for get_loop() to name: a plain awaitable, as before.
    assert asyncio.isfuture(ex) is False
    assert ex.result() == 2


def test_get_loop_is_the_callers_running_loop_and_raises_outside(tasks):
    double, _ = tasks
    ex = double.submit(1)

    async def main():
        return ex.get_loop() is asyncio.get_running_loop()

    assert run(main)
    with pytest.raises(RuntimeError, match="belongs to no event loop"):
        ex.get_loop()


def test_add_done_callback_on_a_loop_runs_on_its_thread_in_the_given_context(blocked, tasks):
    double, _ = tasks

    async def main():
        loop_thread = threading.get_ident()
        seen = []
        got = asyncio.Event()

        def cb(ex):
            seen.append((ex, threading.get_ident(), var.get()))
            if len(seen) == 3:
                got.set()

        ex, gate = blocked()
        ctx = contextvars.copy_context()
        ctx.run(var.set, "given")
        ex.add_done_callback(cb, context=ctx)
        var.set("registering")
        ex.add_done_callback(cb)  # default: a copy of the current context
        done = double.submit(1)
        done.result()
        done.add_done_callback(cb)  # already finished: still through the loop, never synchronously
        assert [s[0] for s in seen] == []
        gate.set()
        await got.wait()
        assert all(t == loop_thread for _, t, _ in seen)
        return sorted(v for _, _, v in seen)

    assert run(main) == ["given", "registering", "registering"]


def test_add_done_callback_off_a_loop_runs_on_the_completing_thread_in_the_given_context(blocked):
    ex, gate = blocked()
    got = threading.Event()
    seen = []
    ctx = contextvars.copy_context()
    ctx.run(var.set, "given")

    def cb(e):
        seen.append((e, var.get()))
        got.set()

    ex.add_done_callback(cb, context=ctx)
    gate.set()
    assert got.wait(30)
    assert seen == [(ex, "given")]
    with pytest.raises(TypeError, match="contextvars.Context"):
        ex.add_done_callback(cb, context={})


def test_remove_done_callback_takes_back_a_loop_registration(blocked):
    async def main():
        ex, gate = blocked()
        calls = []
        ex.add_done_callback(calls.append)
        ex.add_done_callback(calls.append)
        assert ex.remove_done_callback(calls.append) == 2
        marker = asyncio.Event()
        ex.add_done_callback(lambda _: marker.set())
        gate.set()
        await marker.wait()
        return calls

    assert run(main) == []


def test_cancel_with_msg_and_the_cancelled_error_of_both_protocols(blocked):
    async def main():
        ex, _gate = blocked()
        assert ex.cancel(msg="no longer needed")
        assert ex.cancelled()
        (res,) = await asyncio.gather(ex, return_exceptions=True)
        with pytest.raises(asyncio.CancelledError, match="no longer needed"):
            await asyncio.gather(ex)
        return ex, res

    ex, res = run(main)
    assert isinstance(res, asyncio.CancelledError) and str(res) == "no longer needed"
    # result() raises distaff.CancelledError: an asyncio and a concurrent.futures CancelledError.
    with pytest.raises(distaff.CancelledError) as info:
        ex.result()
    assert isinstance(info.value, asyncio.CancelledError)
    assert isinstance(info.value, concurrent.futures.CancelledError)


# -- asyncio.wait -----------------------------------------------------------------------------------


def test_asyncio_wait_over_an_execution_returns_with_an_idle_and_with_a_busy_loop():
    # It used to hang forever with an idle loop (the completion callback ran on a worker thread and
    # never woke the loop), and to fail with AttributeError (remove_done_callback) with a busy one.
    r = run_python(
        """
import asyncio, distaff

@distaff.task()
def work(x):
    distaff.sleep(0.05)
    return x

async def idle():
    done, pending = await asyncio.wait([work.submit(1)])
    return [d.result() for d in done], pending

async def busy():
    async def spin():
        while True:
            await asyncio.sleep(0)
    spinner = asyncio.create_task(spin())
    done, pending = await asyncio.wait([work.submit(2)])
    spinner.cancel()
    return [d.result() for d in done], pending

print(asyncio.run(idle()), asyncio.run(busy()))
""",
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["([1],", "set())", "([2],", "set())"], r.stdout


@pytest.mark.parametrize("return_when", ["FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED"])
def test_asyncio_wait_with_each_return_when(blocked, tasks, return_when):
    double, boom = tasks

    async def main():
        slow, gate = blocked()
        quick, failing = double.submit(2), boom.submit("x")
        done, pending = await asyncio.wait([slow, quick, failing], return_when=getattr(asyncio, return_when), timeout=None if return_when != "ALL_COMPLETED" else 0.2)
        if return_when == "ALL_COMPLETED":  # timed out with `slow` pending, which it leaves alone
            assert done == {quick, failing} and pending == {slow} and not slow.done()
            gate.set()
            done, pending = await asyncio.wait([slow, quick, failing])
            assert done == {slow, quick, failing} and pending == set()
        elif return_when == "FIRST_EXCEPTION":
            assert failing in done and slow in pending
        else:
            assert done and done <= {quick, failing} and slow in pending
        gate.set()
        assert await slow == "done"
        return isinstance(failing.exception(), KeyError)

    assert run(main)


# -- wait_for, shield, timeout ---------------------------------------------------------------------


def test_asyncio_wait_for_returns_and_on_timeout_cancels_the_execution(blocked, tasks):
    double, _ = tasks

    async def main():
        assert await asyncio.wait_for(double.submit(21), 30) == 42
        ex, _gate = blocked()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ex, 0.05)
        assert ex.cancelled()  # asyncio's semantics for futures: the timed-out awaitable is cancelled
        ex0, _gate0 = blocked()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ex0, 0)  # the timeout <= 0 path: ensure_future + cancel
        assert ex0.cancelled()
        kept, gate = blocked()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(kept), 0.05)
        assert not kept.done()
        gate.set()
        return await asyncio.wait_for(kept, 30)

    assert run(main) == "done"


def test_asyncio_timeout_block_around_await_cancels_the_execution(blocked):
    async def main():
        ex, _gate = blocked()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await ex
        return ex.cancelled()

    assert run(main)


def test_asyncio_shield_keeps_the_execution_when_the_outer_is_cancelled(blocked, tasks):
    double, _ = tasks

    async def main():
        assert await asyncio.shield(double.submit(4)) == 8
        ex, gate = blocked()
        outer = asyncio.shield(ex)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert not ex.done()
        gate.set()
        return await ex

    assert run(main) == "done"


# -- gather, as_completed, ensure_future, wrap_future, TaskGroup ----------------------------------


def test_asyncio_gather_over_executions_wraps_none_in_a_task(tasks):
    double, boom = tasks

    async def main():
        exs = [double.submit(i) for i in range(50)]
        before = len(asyncio.all_tasks())
        g = asyncio.gather(*exs)
        assert len(asyncio.all_tasks()) == before  # no Task per Execution
        assert await g == [2 * i for i in range(50)]
        mixed = await asyncio.gather(double.submit(1), boom.submit("m"), return_exceptions=True)
        assert mixed[0] == 2 and isinstance(mixed[1], KeyError)
        with pytest.raises(KeyError):
            await asyncio.gather(double.submit(1), boom.submit("n"))
        return True

    assert run(main)


def test_cancelling_an_asyncio_gather_cancels_its_executions(blocked):
    async def main():
        pairs = [blocked() for _ in range(3)]
        g = asyncio.gather(*(ex for ex, _ in pairs))
        g.cancel()
        with pytest.raises(asyncio.CancelledError):
            await g
        return [ex.cancelled() for ex, _ in pairs]

    assert run(main) == [True, True, True]


def test_asyncio_as_completed_over_executions(blocked, tasks):
    double, _ = tasks

    async def main():
        slow, gate = blocked()
        order = []
        for i, fut in enumerate(asyncio.as_completed([slow, double.submit(5)])):
            order.append(await fut)
            if i == 0:
                gate.set()
        return order

    assert run(main) == [10, "done"]


def test_asyncio_ensure_future_and_wrap_future_return_the_execution(tasks):
    double, _ = tasks

    async def main():
        ex = double.submit(3)
        assert asyncio.ensure_future(ex) is ex
        assert asyncio.wrap_future(ex) is ex
        other = asyncio.new_event_loop()
        try:
            with pytest.raises(ValueError, match="different loop"):
                asyncio.ensure_future(ex, loop=other)
        finally:
            other.close()
        return await asyncio.ensure_future(ex)

    assert run(main) == 6


def test_asyncio_task_group_over_executions(blocked, tasks):
    double, boom = tasks

    async def main():
        async with asyncio.TaskGroup() as tg:
            a = tg.create_task(_await(double.submit(1)))
            b = tg.create_task(_await(double.submit(2)))
        assert (a.result(), b.result()) == (2, 4)
        # A failing sibling cancels the group's other tasks, and so the execution they await.
        slow, _gate = blocked()
        with pytest.raises(ExceptionGroup) as info:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_await(slow))
                tg.create_task(_await(boom.submit("sibling")))
        assert [type(e) for e in info.value.exceptions] == [KeyError]
        return slow.cancelled()

    assert run(main)


# -- running a loop on an Execution -----------------------------------------------------------------


def test_loop_run_until_complete_over_an_execution(tasks):
    double, _ = tasks
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(double.submit(7)) == 14
    finally:
        loop.close()


def test_asyncio_run_takes_coroutines_so_an_execution_is_awaited_in_one(tasks):
    double, _ = tasks
    ex = double.submit(8)
    with pytest.raises(ValueError, match="coroutine"):
        asyncio.run(ex)  # asyncio's own rule: asyncio.run takes a coroutine, never a future
    assert asyncio.run(_await(ex)) == 16


# -- one Execution, many waiters ---------------------------------------------------------------------


def test_one_execution_from_two_loops_threads_and_fibers_at_once(engine, blocked):
    ex, gate = blocked()

    @engine.task()
    def in_fiber(e):
        return e.result()

    async def on_a_loop(started):
        loop_thread = threading.get_ident()
        done, _ = await asyncio.wait([ex])
        called = asyncio.Event()
        where = []
        ex.add_done_callback(lambda e: (where.append(threading.get_ident()), called.set()))
        await called.wait()
        started.set()
        return (await asyncio.gather(ex, asyncio.shield(ex)), await ex, done == {ex}, where == [loop_thread])

    results = [None, None]
    ready = [threading.Event(), threading.Event()]

    def loop_thread(i):
        results[i] = run(lambda: on_a_loop(ready[i]))

    threads = [threading.Thread(target=loop_thread, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    fiber = in_fiber.submit(ex)
    from_thread = []
    waiter = threading.Thread(target=lambda: from_thread.append(ex.result(timeout=30)))
    waiter.start()
    gate.set()
    for t in threads:
        t.join(60)
    waiter.join(60)
    assert results == [(["done", "done"], "done", True, True)] * 2
    assert fiber.result(timeout=30) == "done" and from_thread == ["done"]


# -- async def bodies ---------------------------------------------------------------------------------


def test_distaff_sleep_in_an_async_body_is_an_error_naming_asyncio_sleep(engine):
    @engine.task()
    async def sleeper():
        distaff.sleep(0.01)

    async def main():
        with pytest.raises(RuntimeError, match=r"await asyncio\.sleep"):
            await sleeper.submit()
        with pytest.raises(RuntimeError, match=r"await asyncio\.sleep"):
            distaff.sleep(0)  # any coroutine: it would block the loop
        return True

    assert run(main)
    with pytest.raises(RuntimeError, match=r"asyncio\.sleep"):
        sleeper()  # on the engine's loop too

    # Sync code that merely runs on a loop's thread (a Jupyter cell) still sleeps.
    def sync_helper():
        distaff.sleep(0.001)
        return "slept"

    async def calls_sync_helper():
        return sync_helper()

    assert run(calls_sync_helper) == "slept"


def test_an_async_workflows_error_note_says_workflow(engine):
    @engine.workflow()
    async def flow():
        raise KeyError("wf")

    with pytest.raises(KeyError) as info:
        flow()
    assert any(n.startswith("distaff: raised in workflow '") for n in info.value.__notes__), info.value.__notes__


def test_deliveries_posted_to_a_loop_that_closes_before_running_them_are_freed():
    # A completion posts its delivery and schedules the loop's wake-up; asyncio.run returning (or
    # loop.close()) drops that wake-up unrun. The inbox held the batch strongly, and the batch's
    # futures hold their loop — the key of the inbox's WeakKeyDictionary — so the loop, the inbox
    # and every Execution in the batch stayed alive for good (seen as 52 leaked executions after
    # asyncio.gather over Executions on 2 workers, about one run in four).
    import gc
    import weakref

    from distaff import _asyncio

    loop = asyncio.new_event_loop()

    class Payload:
        pass

    payload = Payload()
    payload.loop = loop  # as an asyncio future refers to its loop
    freed = weakref.ref(payload)
    _asyncio._inbox_for(loop).post_call(lambda _p: None, payload)
    del payload
    loop.close()
    del loop
    gc.collect()
    assert freed() is None
