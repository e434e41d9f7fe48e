"""Executions are awaitable from a running asyncio loop without blocking it."""

import asyncio
import threading

import pytest

import distaff


def test_await_execution(engine):
    @engine.task()
    def f(x):
        return x * 2

    async def main():
        return await f.submit(21)

    assert asyncio.run(main()) == 42


def test_calling_a_task_in_a_running_loop_returns_the_execution(engine):
    @engine.task()
    def f(x):
        return x + 1

    async def main():
        ex = f(1)
        assert isinstance(ex, distaff.Execution)
        return await ex

    assert asyncio.run(main()) == 2


def test_awaiting_does_not_block_the_loop(engine):
    gate = threading.Event()

    @engine.task()
    def slow():
        gate.wait(30)
        return "slow"

    async def main():
        ticks = 0
        waiter = asyncio.ensure_future(slow.submit())
        while not waiter.done():
            ticks += 1
            if ticks == 5:
                gate.set()
            await asyncio.sleep(0.001)
        return await waiter, ticks

    result, ticks = asyncio.run(main())
    assert result == "slow" and ticks >= 5


def test_await_reraises_the_body_error(engine):
    @engine.task()
    def bad():
        raise ValueError("async boom")

    async def main():
        await bad.submit()

    with pytest.raises(ValueError, match="async boom"):
        asyncio.run(main())


def test_gather_many_executions(engine):
    @engine.task()
    def f(i):
        return i

    async def main():
        return await asyncio.gather(*[f.submit(i) for i in range(2000)])

    assert asyncio.run(main()) == list(range(2000))


def test_await_outside_a_loop_is_an_error(engine):
    ex = engine.submit(int)
    with pytest.raises(RuntimeError):
        ex.__await__()
    ex.result()
