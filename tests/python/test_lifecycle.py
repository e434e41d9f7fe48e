"""Engine lifecycle: fire-and-forget, shutdown, context manager, default engine."""

import threading

import pytest

import distaff

from conftest import run_python


def test_fire_and_forget_runs_to_completion_before_shutdown_returns():
    done = []
    eng = distaff.Engine()

    @eng.task()
    def notify(i):
        distaff.sleep(0.01)
        done.append(i)

    for i in range(100):
        notify.submit(i)  # nobody keeps the Execution
    eng.shutdown(wait=True)
    assert sorted(done) == list(range(100))


def test_context_manager_waits_for_outstanding_work():
    done = []
    with distaff.Engine(workers=2) as eng:
        for i in range(50):
            eng.submit(done.append, i)
    assert sorted(done) == list(range(50))
    assert eng.stats()["live"] == 0


def test_submitting_to_a_shut_down_engine_is_a_runtime_error():
    eng = distaff.Engine()
    eng.shutdown()

    @eng.task()
    def f():
        pass

    with pytest.raises(RuntimeError, match="shut down"):
        f.submit()
    with pytest.raises(distaff.ShutdownError):
        eng.submit(print)


def test_shutdown_cancel_pending_cancels_what_has_not_started():
    eng = distaff.Engine(workers=1)
    gate = threading.Event()
    started = threading.Event()

    def block():
        started.set()
        gate.wait(30)
        return "ran"

    running = eng.submit(block)
    started.wait(30)
    queued = [eng.submit(lambda: "never") for _ in range(10)]
    t = threading.Thread(target=eng.shutdown, kwargs={"wait": True, "cancel_pending": True})
    t.start()
    # shutdown cancels the queued ones first, then waits for the running body.
    for q in queued:
        with pytest.raises(distaff.CancelledError):
            q.result(timeout=30)
    gate.set()
    t.join(30)
    assert running.result() == "ran"


def test_shutdown_from_a_task_is_refused(engine):
    @engine.task()
    def rogue():
        engine.shutdown()

    with pytest.raises(RuntimeError, match="own tasks"):
        rogue()


def test_failure_nobody_waits_for_at_exit_is_logged():
    proc = run_python(
        """
        import distaff
        @distaff.task()
        def fails():
            raise ValueError("lost?")
        fails.submit()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "nobody retrieved its error" in proc.stderr and "lost?" in proc.stderr


def test_module_shutdown_resets_the_default_engine():
    @distaff.task()
    def f():
        return 1

    assert f() == 1
    first = distaff.default_engine()
    distaff.shutdown()
    assert f() == 1
    assert distaff.default_engine() is not first


def test_engines_are_independent():
    with distaff.Engine() as a, distaff.Engine() as b:

        @a.task()
        def on_a():
            return "a"

        @b.task()
        def on_b(x):
            return x.result() + "b"

        assert on_b(on_a.submit()) == "ab"


# -- elastic workers --------------------------------------------------------------------------------


def test_bodies_blocked_in_calls_get_more_threads_up_to_max_workers():
    """Four bodies that block their OS thread until all four arrive: a fixed one-thread pool
    deadlocks; the elastic engine starts threads while its workers are stuck with work queued."""
    n = 4
    barrier = threading.Barrier(n, timeout=60)
    with distaff.Engine(workers=1, max_workers=n) as eng:

        @eng.task()
        def meet(i):
            barrier.wait()  # blocks the thread, GIL released
            return i

        assert [e.result(timeout=60) for e in [meet.submit(i) for i in range(n)]] == list(range(n))
        stats = eng.stats()
        assert stats["grown"] >= n - 1 and stats["threads"] <= n
        assert stats["workers"] == 1


def test_max_workers_equal_to_workers_turns_growth_off():
    started = threading.Event()
    release = threading.Event()
    with distaff.Engine(workers=1, max_workers=1) as eng:

        @eng.task()
        def blocks():
            started.set()
            release.wait(60)

        @eng.task()
        def queued():
            return "ran"

        b = blocks.submit()
        assert started.wait(30)
        q = queued.submit()
        # The only thread is blocked and no other may start: q cannot run. (An elastic engine runs
        # it within a few 2 ms ticks; 0.3 s is only how long this test gives growth to happen.)
        with pytest.raises(TimeoutError):
            q.result(timeout=0.3)
        assert eng.stats()["threads"] == 1
        release.set()
        assert q.result(timeout=30) == "ran" and b.result(timeout=30) is None
        assert eng.stats()["grown"] == 0


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"workers": 2, "max_workers": 1}, ValueError),
        ({"max_workers": 2000}, ValueError),
        ({"max_workers": True}, TypeError),
        ({"max_workers": 2.0}, TypeError),
    ],
)
def test_max_workers_is_validated(kwargs, error):
    with pytest.raises(error, match="max_workers"):
        distaff.Engine(**kwargs)


def test_default_max_workers():
    with distaff.Engine() as a, distaff.Engine(workers=40) as b:
        assert (a.max_workers, b.max_workers) == (32, 40)
