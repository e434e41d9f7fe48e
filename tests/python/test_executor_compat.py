"""Issue 10: Engine as a concurrent.futures.Executor (submit, map, shutdown) and Task.map."""

import asyncio
import concurrent.futures
import threading
import time

import pytest

import distaff
from conftest import run_python


def test_engine_is_an_executor(engine):
    assert isinstance(engine, concurrent.futures.Executor)
    ex = engine.submit(pow, 2, 10)
    assert ex.result(timeout=30) == 1024


def test_map_yields_results_in_order_lazily(engine, new_gate):
    gate = new_gate()

    def f(x):
        if x == 0:
            gate.wait(30)  # the first item finishes last
        return x * 10

    it = engine.map(f, range(4))
    # Submitted at the map call, before the iterator is consumed.
    assert engine.stats()["submitted"] >= 4
    gate.set()
    assert list(it) == [0, 10, 20, 30]


def test_map_over_several_iterables_stops_at_the_shortest(engine):
    assert list(engine.map(lambda a, b: a + b, [1, 2, 3], [10, 20])) == [11, 22]
    assert list(engine.map(str, [])) == []


@pytest.mark.parametrize("chunksize", [1, 2, 3, 10])
def test_map_chunksize_keeps_order_and_results(engine, chunksize):
    assert list(engine.map(lambda x, y: x * y, range(7), range(7), chunksize=chunksize)) == [i * i for i in range(7)]


def test_map_chunksize_uses_fewer_executions():
    with distaff.Engine() as eng:
        before = eng.stats()["submitted"]
        assert list(eng.map(abs, range(-10, 0), chunksize=5)) == list(range(10, 0, -1))
        assert eng.stats()["submitted"] - before == 2


def test_map_raises_the_exception_when_its_item_is_reached(engine):
    def f(x):
        if x == 2:
            raise ValueError("two")
        return x

    it = engine.map(f, range(5))
    assert next(it) == 0
    assert next(it) == 1
    with pytest.raises(ValueError, match="two"):
        next(it)


def test_map_timeout_counts_from_the_map_call(engine, new_gate):
    gate = new_gate()
    it = engine.map(lambda x: gate.wait(30) and x, range(3), timeout=0.2)
    time.sleep(0.3)  # the deadline passes before the iterator is even started
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        next(it)
    assert time.monotonic() - t0 < 5
    assert issubclass(distaff.TimeoutError, concurrent.futures.TimeoutError)


def test_closing_the_map_iterator_cancels_the_rest(new_gate):
    eng = distaff.Engine(workers=1, max_workers=1)
    gate = new_gate()
    ran = []

    def f(x):
        if x == 0:
            return 0
        gate.wait(30)  # holds the only worker: the others stay queued
        ran.append(x)
        return x

    it = eng.map(f, range(6))
    assert next(it) == 0
    it.close()  # items 1..5 not reached: cancelled (the running one too)
    gate.set()
    eng.shutdown(wait=True)
    assert len(ran) <= 1, ran


def test_map_bad_arguments(engine):
    with pytest.raises(TypeError, match="callable"):
        engine.map(3, [1])
    with pytest.raises(ValueError, match="chunksize must be >= 1"):
        engine.map(abs, [1], chunksize=0)
    with pytest.raises(TypeError, match="chunksize"):
        engine.map(abs, [1], chunksize=1.5)
    with pytest.raises(TypeError, match="timeout"):
        engine.map(abs, [1], timeout="1")


def test_submit_after_shutdown_raises_runtime_error():
    eng = distaff.Engine()
    eng.shutdown()
    with pytest.raises(RuntimeError):
        eng.submit(abs, 1)
    with pytest.raises(RuntimeError):
        eng.map(abs, [1])


def test_shutdown_cancel_futures_cancels_queued_work(new_gate):
    eng = distaff.Engine(workers=1, max_workers=1)
    gate = new_gate()
    started = threading.Event()

    def hold():
        started.set()
        gate.wait(30)
        return "held"

    first = eng.submit(hold)
    assert started.wait(30)
    queued = [eng.submit(abs, -i) for i in range(5)]
    t = threading.Thread(target=lambda: eng.shutdown(wait=True, cancel_futures=True))
    t.start()
    deadline = time.monotonic() + 30
    while not all(q.done() for q in queued) and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    t.join(30)
    assert not t.is_alive()
    assert all(q.cancelled() for q in queued)
    assert first.result() == "held"
    with pytest.raises(TypeError, match="cancel_futures"):
        eng.shutdown(cancel_futures="yes")


def test_executor_context_manager_waits():
    with distaff.Engine() as eng:
        ex = eng.submit(lambda: (distaff.sleep(0.05), 7)[1])
    assert ex.done() and ex.result() == 7


def test_engine_submit_of_a_task_runs_it_on_that_engine():
    calls = []

    @distaff.task
    def where(x):
        calls.append(distaff.current_execution().id)
        return x + 1

    with distaff.Engine() as eng:
        ex = eng.submit(where, 1)
        assert ex.result(timeout=30) == 2
        with pytest.raises(TypeError, match="where"):
            eng.submit(where, 1, 2)  # the task's own argument check
    assert calls


def test_run_in_executor_in_a_fresh_interpreter():
    # loop.run_in_executor(engine, fn, *args) needs asyncio to accept the Execution; checked in a
    # fresh interpreter with a deadline so a hang fails the test.
    proc = run_python(
        """
        import asyncio, distaff

        async def main():
            eng = distaff.Engine()
            loop = asyncio.get_running_loop()
            r = await loop.run_in_executor(eng, pow, 3, 4)
            print("result", r)
            await eng.ashutdown()

        asyncio.run(main())
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "result 81" in proc.stdout


# -- Task.map -------------------------------------------------------------------------------------------


def test_task_map_returns_one_execution_per_item(engine):
    @engine.task
    def add(a, b):
        return a + b

    exs = add.map([1, 2, 3], [10, 20, 30])
    assert isinstance(exs, list) and len(exs) == 3
    assert all(isinstance(e, distaff.Execution) for e in exs)
    assert distaff.gather(*exs).result(timeout=30) == [11, 22, 33]
    assert add.map([]) == []


def test_task_map_from_a_body_and_on_methods(engine):
    class Scaler:
        def __init__(self, k):
            self.k = k

        @engine.task
        def scale(self, x):
            return self.k * x

    @engine.workflow
    def flow(xs):
        return distaff.gather(*Scaler(3).scale.map(xs)).result()

    assert flow(range(4)) == [0, 3, 6, 9]


def test_task_map_checks_lengths_and_arguments_before_submitting(engine):
    @engine.task
    def one(x):
        return x

    before = engine.stats()["submitted"]
    with pytest.raises(ValueError, match=r"different lengths \(2, 3\)"):
        one.map([1, 2], [1, 2, 3])
    with pytest.raises(TypeError, match="at least one iterable"):
        one.map()
    with pytest.raises(TypeError, match="iterables"):
        one.map(5)
    assert engine.stats()["submitted"] == before


def test_task_map_cancels_what_it_submitted_when_a_call_is_refused(engine, new_gate):
    from distaff._task import _map

    gate = new_gate()
    submitted = []

    def submit(x):
        if x == 2:
            raise distaff.ShutdownError("refused")
        ex = engine.submit(gate.wait, 30)
        submitted.append(ex)
        return ex

    with pytest.raises(distaff.ShutdownError):
        _map(submit, "t", ([0, 1, 2, 3],))
    assert len(submitted) == 2
    for ex in submitted:
        with pytest.raises(distaff.CancelledError):
            ex.result(timeout=30)


def test_task_map_with_options_and_workflow_id(engine):
    @engine.task
    def sq(x):
        return x * x

    exs = sq.options(workflow_id="map-1").map(range(3))
    assert [e.result(timeout=30) for e in exs] == [0, 1, 4]
    assert {e.workflow_id for e in exs} == {"map-1"}
