"""A wait that times out or is cancelled takes back what it registered on its members
(docs/reliability.md, "A wait that gives up leaves nothing on its members"): repeated polls of
executions that run on cost no memory per call. Counted directly (the core callbacks registered
on each member, _core._callbacks) and, for the asyncio forms, with tracemalloc."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest

import distaff
from distaff import _core


@pytest.fixture
def running(engine, new_gate):
    """Two executions that run until the test ends (their gate is released at teardown)."""
    gate = new_gate()

    @engine.task()
    def hold() -> None:
        gate.wait()

    ex, other = hold.submit(), hold.submit()
    yield ex, other
    gate.set()
    ex.result(timeout=30)
    other.result(timeout=30)


def _registered(*execs) -> list:
    return [_core._callbacks(e) for e in execs]


@pytest.mark.parametrize("return_when", [distaff.ALL_COMPLETED, distaff.FIRST_COMPLETED, distaff.FIRST_EXCEPTION])
def test_a_timed_out_sync_wait_leaves_no_callback_on_its_members(running, return_when):
    ex, other = running
    before = _registered(ex, other)
    for _ in range(500):
        done, not_done = distaff.wait([ex, other], timeout=1e-6, return_when=return_when)
        assert not done and not_done == {ex, other}
    assert _registered(ex, other) == before


def test_a_timed_out_or_abandoned_sync_as_completed_leaves_no_callback(running):
    ex, other = running
    before = _registered(ex, other)
    for _ in range(500):
        with pytest.raises(TimeoutError):
            for _e in distaff.as_completed([ex, other], timeout=1e-6):
                pass

    # Left after its first item (a `break`): freeing the iterator takes its callbacks back.
    finished = distaff.gather()  # an execution already done
    it = distaff.as_completed([finished, ex, other])
    assert next(it) is finished
    assert _registered(ex, other) == [n + 1 for n in before]
    del it
    assert _registered(ex, other) == before


def test_an_async_as_completed_left_with_break_takes_back_what_it_registered(running):
    ex, other = running
    before = _registered(ex, other)

    async def main():
        finished = distaff.gather()
        agen = aiter(distaff.as_completed([finished, ex, other]))
        async for e in agen:
            assert e is finished
            assert _registered(ex, other) == [n + 1 for n in before]
            break
        await agen.aclose()  # what asyncio's async-generator hooks do for a dropped one
        return _registered(ex, other)

    assert asyncio.run(main()) == before


def _traced_growth(make_one, n: int) -> int:
    """Bytes still allocated after n more calls than after a warm-up."""

    async def main():
        for _ in range(50):  # warm-up: asyncio's and distaff's caches, the inbox
            await make_one()
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for _ in range(n):
                await make_one()
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()

    return asyncio.run(main())


def test_a_cancelled_async_wait_takes_back_what_it_registered(running):
    ex, other = running
    before = _registered(ex, other)

    async def one():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(distaff.wait([ex, other]), 1e-4)

    async def timed_out():
        done, pending = await distaff.wait([ex, other], timeout=1e-4)
        assert not done

    grown = _traced_growth(one, 2000)
    assert _registered(ex, other) == before
    grown_timeout = _traced_growth(timed_out, 2000)
    assert _registered(ex, other) == before
    # Before: ~360 bytes per call (the combined execution and its asyncio Task) until ex ended.
    assert grown < 2000 * 40, grown
    assert grown_timeout < 2000 * 40, grown_timeout


def test_an_async_as_completed_cut_short_takes_back_what_it_registered(running):
    ex, other = running
    before = _registered(ex, other)

    async def one():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1e-4):
                async for _e in distaff.as_completed([ex, other]):
                    pass

    async def own_timeout():
        with pytest.raises(TimeoutError):
            async for _e in distaff.as_completed([ex, other], timeout=1e-4):
                pass

    grown = _traced_growth(one, 2000)
    assert _registered(ex, other) == before
    grown_own = _traced_growth(own_timeout, 2000)
    assert _registered(ex, other) == before
    # Before: ~1.1 KB per call (an asyncio.Event and the notify closure) until ex ended.
    assert grown < 2000 * 40, grown
    assert grown_own < 2000 * 40, grown_own


def test_a_wait_that_completes_still_sees_its_members_finish(engine, new_gate):
    # The release path must not drop a completion: wait and as_completed still return members as
    # they finish, after many timed-out polls on the same executions.
    gate = new_gate()

    @engine.task()
    def hold(i: int) -> int:
        gate.wait()
        return i

    execs = [hold.submit(i) for i in range(4)]
    for _ in range(50):
        distaff.wait(execs, timeout=1e-6, return_when=distaff.FIRST_COMPLETED)
    gate.set()
    done, not_done = distaff.wait(execs, timeout=30)
    assert done == set(execs) and not not_done
    assert sorted(e.result() for e in distaff.as_completed(execs, timeout=30)) == [0, 1, 2, 3]

    async def main():
        done, _ = await distaff.wait(execs, timeout=30)
        got = [e async for e in distaff.as_completed(execs, timeout=30)]
        return len(done), len(got)

    assert asyncio.run(main()) == (4, 4)
    assert _registered(*execs) == [0, 0, 0, 0]
