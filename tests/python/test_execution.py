"""Execution: result, exception, done, callbacks, description, timeouts, cancellation."""

import logging
import threading
import traceback

import pytest

import distaff


def test_result_exception_done_and_description(engine):
    gate = threading.Event()

    @engine.task()
    def f(x):
        gate.wait(30)
        return x + 1

    ex = f.submit(1)
    assert isinstance(ex, distaff.Execution)
    assert not ex.done()
    gate.set()
    assert ex.result() == 2 and ex.done() and ex.exception() is None
    d = ex.description
    assert d["id"] == ex.id and d["name"].endswith("f") and d["kind"] == "task"
    assert d["state"] == "succeeded" and d["parent_id"] is None
    assert d["submitted"] <= d["started"] <= d["finished"]


def test_result_timeout_raises_timeout_error_and_the_execution_lives_on(engine):
    gate = threading.Event()

    @engine.task()
    def f():
        gate.wait(30)
        return "late"

    ex = f.submit()
    with pytest.raises(TimeoutError):
        ex.result(timeout=0.01)
    with pytest.raises(TimeoutError):
        ex.exception(timeout=0)
    gate.set()
    assert ex.result(timeout=30) == "late"


def test_bad_timeout_values(engine):
    ex = engine.submit(lambda: 1)
    ex.result()
    gate = threading.Event()
    pending = engine.submit(gate.wait, 30)
    with pytest.raises(TypeError):
        pending.result(timeout="soon")
    with pytest.raises(ValueError):
        pending.result(timeout=float("nan"))
    gate.set()
    pending.result()


def test_errors_keep_type_traceback_and_gain_a_note(engine):
    @engine.task()
    def inner():
        raise KeyError("missing")

    @engine.workflow()
    def outer():
        return inner()

    with pytest.raises(KeyError) as info:
        outer()
    tb = "".join(traceback.format_exception(info.value))
    assert "raise KeyError" in tb
    assert any("task 'test_errors_keep_type_traceback_and_gain_a_note.<locals>.inner'" in n for n in info.value.__notes__)
    assert any("workflow" in n for n in info.value.__notes__)


def test_callbacks_run_exactly_once_in_order_also_after_done(engine):
    gate = threading.Event()
    seen = []

    @engine.task()
    def f():
        gate.wait(30)
        return 5

    ex = f.submit()
    ex.add_done_callback(lambda e: seen.append(("a", e.result())))
    ex.add_done_callback(lambda e: seen.append(("b", e.result())))
    gate.set()
    ex.result()
    engine.wait_idle()
    ex.add_done_callback(lambda e: seen.append(("late", e.result())))
    assert seen == [("a", 5), ("b", 5), ("late", 5)]
    with pytest.raises(TypeError):
        ex.add_done_callback(3)


def test_a_failing_callback_is_logged_not_raised(engine, caplog):
    ex = engine.submit(lambda: 1)
    ex.result()
    with caplog.at_level(logging.ERROR, logger="distaff"):
        ex.add_done_callback(lambda e: 1 / 0)
    assert "exception calling callback" in caplog.text


def test_cancel_before_start(engine):
    gate = threading.Event()
    started = threading.Event()

    def blocker():
        started.set()
        gate.wait(30)

    first = engine.submit(blocker)
    started.wait(30)
    # With the worker(s) busy, more work stays queued: cancel it.
    blockers = [engine.submit(blocker) for _ in range(engine.workers - 1)]
    queued = engine.submit(lambda: "never")
    assert queued.cancel() is True
    assert queued.cancelled() and queued.done()
    with pytest.raises(distaff.CancelledError):
        queued.result()
    with pytest.raises(distaff.CancelledError):
        queued.exception()
    gate.set()
    first.result()
    for b in blockers:
        b.result()
    assert first.cancel() is False


def test_cancelled_error_is_a_concurrent_futures_cancelled_error():
    import concurrent.futures

    assert issubclass(distaff.CancelledError, concurrent.futures.CancelledError)


def test_unobserved_failure_is_logged(engine, caplog):
    @engine.task()
    def fails():
        raise RuntimeError("nobody looks")

    from conftest import wait_for_log

    with caplog.at_level(logging.ERROR, logger="distaff"):
        fails.submit()
        assert wait_for_log(caplog, "nobody retrieved its error")
    assert "nobody looks" in caplog.text


def test_unobserved_failure_collected_during_interpreter_finalization_is_reported_plainly():
    """A failed execution kept in a module global dies while modules are torn down, when logging no
    longer works: the failure is written to stderr from C, not lost and not 'Exception ignored'."""
    from conftest import run_python

    proc = run_python(
        """
        import distaff

        @distaff.task
        def boom():
            raise ValueError("late")

        keep = boom.submit()  # a global: collected only during finalization
        distaff.wait([keep])
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "(boom) failed and nobody retrieved its error: ValueError: late" in proc.stderr, proc.stderr
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_observed_failure_is_not_logged(engine, caplog):
    from conftest import collect

    @engine.task()
    def fails():
        raise RuntimeError("seen")

    with caplog.at_level(logging.ERROR, logger="distaff"):
        ex = fails.submit()
        with pytest.raises(RuntimeError):
            ex.result()
        del ex
        collect()
    assert "nobody retrieved" not in caplog.text


@pytest.mark.parametrize("retrieve", ["a", "b", "none"])
def test_a_forward_cycle_is_reported_once(retrieve):
    """Two bodies that return each other's execution: the forward that closes the cycle fails with
    DeadlockError, and the other execution, following it, fails with the same error. It is one
    failure: retrieved from either execution nothing is logged, retrieved from neither it is
    logged once. Before, retrieving the one whose forward found the cycle still logged the other as
    never retrieved (an outsider's finding)."""
    from conftest import run_python

    proc = run_python(
        f"""
        import gc, threading
        import distaff
        eng = distaff.Engine(workers=2)
        holder, go = {{}}, threading.Event()

        @eng.task
        def a():
            return holder["b"]

        @eng.task
        def b():
            go.wait()
            return holder["a"]

        holder["b"] = b.submit()
        holder["a"] = a.submit()
        go.set()
        eng.wait_idle()
        print(holder["a"].state, holder["b"].state, flush=True)
        if "{retrieve}" != "none":
            print(type(holder["{retrieve}"].exception()).__name__, flush=True)
        holder.clear()
        gc.collect()
        eng.shutdown()
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["failed", "failed"], proc.stdout
    if retrieve != "none":
        assert proc.stdout.split()[2] == "DeadlockError", proc.stdout
    logged = proc.stderr.count("nobody retrieved its error")
    assert logged == (0 if retrieve != "none" else 1), proc.stderr
    assert proc.stderr.count("DeadlockError") == logged, proc.stderr


def test_execution_cannot_be_instantiated_directly():
    with pytest.raises(TypeError):
        distaff.Execution()


def test_base_exceptions_from_bodies_are_stored_and_reraised(engine):
    @engine.task()
    def exits():
        raise SystemExit(3)

    with pytest.raises(SystemExit) as info:
        exits()
    assert info.value.code == 3

    @engine.task()
    def interrupts():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupts()
