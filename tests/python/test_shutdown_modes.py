"""Engine.shutdown(cancel_running=..., cancel_pending=..., wait=...) (issue 4).

Ordering is by events and gates; where a test must involve time (a delay, a deadline) its bounds
are generous and only one side is tight. docs/reliability.md names these tests.
"""

import threading
import time

import pytest

import distaff

from conftest import CallbackLog, fiber_wait


def test_shutdown_cancel_running_cancels_parked_bodies_and_their_children():
    eng = distaff.Engine(workers=2)
    log = CallbackLog()
    seen = []
    parked_started, parent_started = threading.Event(), threading.Event()

    @eng.task()
    def parked():
        try:
            parked_started.set()  # (a threading wait here would block the worker's OS thread)
            distaff.sleep(60)  # parked here, or about to be: woken or interrupted either way
        except distaff.CancelledError:
            seen.append("body saw CancelledError")
            raise

    @eng.task()
    def child():
        distaff.sleep(60)

    @eng.task()
    def parent():
        c = child.submit()
        seen.append(c)
        parent_started.set()
        c.result()

    p = log.watch(parked.submit())
    w = log.watch(parent.submit())
    assert parked_started.wait(30) and parent_started.wait(30)
    eng.shutdown(wait=True, cancel_running=True)
    for ex in (p, w, seen[0]):
        assert ex.cancelled(), ex
    assert "body saw CancelledError" in seen
    log.wait_for(2)
    assert all(len(v) == 1 for v in log.calls.values())
    assert eng.stats()["fibers"] == 0


def test_shutdown_cancel_running_interrupts_a_body_running_python():
    eng = distaff.Engine(workers=1)
    started = threading.Event()

    @eng.task()
    def spin():
        started.set()
        n = 0
        while True:
            n = (n + 1) % 1000

    ex = spin.submit()
    assert started.wait(30)
    eng.shutdown(wait=True, cancel_running=True)  # returns: the loop was interrupted
    assert ex.cancelled()


def _shut_down_with_a_body_its_worker_took(body, shutdown_args):
    """Runs, in a fresh interpreter, `engine.shutdown(wait=False, <shutdown_args>)` while a worker
    has taken `job` (state running) but its body waits for the GIL: this thread keeps it (a huge
    switch interval) until then. Prints the outcome and whether the body ran."""
    from conftest import run_python

    return run_python(
        f"""
        import sys, distaff
        engine = distaff.Engine(workers=1, max_workers=1)
        ran = []

        @engine.task
        def job():
            ran.append(1)
            {body}

        sys.setswitchinterval(1000)  # this thread keeps the GIL until it blocks
        ex = job.submit()
        while ex.state != "running":  # the worker took it; its body waits for the GIL held here
            pass
        engine.shutdown(wait=False, {shutdown_args})
        sys.setswitchinterval(0.005)
        try:
            print(ex.result(timeout=20), ran)
        except distaff.CancelledError:
            print("cancelled", ran)
        engine.shutdown()
        """,
        timeout=60,
    )


def test_shutdown_cancel_running_cancels_a_body_its_worker_took_but_had_not_started():
    """A worker that took an execution (state running) waits for the GIL before the body starts,
    so the body is not in the running list yet. shutdown(cancel_running=True) cancels it all the
    same: it never runs. Staged: this thread keeps the GIL (a huge switch interval) until the
    worker has taken the execution. Before the fix the body ran its 30 s sleep in full; a program
    whose thread had just submitted work ignored a Ctrl-C at exit that way (about 1 run in 2)."""
    proc = _shut_down_with_a_body_its_worker_took("distaff.sleep(30)", "cancel_running=True")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cancelled []", (proc.stdout, proc.stderr)


def test_shutdown_cancel_pending_cancels_a_body_its_worker_took_but_had_not_started():
    """cancel_pending's counterpart of the test above: a body whose worker took it (state running)
    but still waits for the GIL has not started, so shutdown(cancel_pending=True) cancels it and it
    never runs. Staged the same way (a huge switch interval). Before the fix it ran after the
    shutdown had drained the engine, and its submits met a closed scheduler (the forwarders
    program: a forwarder failed with ShutdownError, logged as never retrieved)."""
    proc = _shut_down_with_a_body_its_worker_took('return "ran"', "cancel_pending=True")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cancelled []", (proc.stdout, proc.stderr)


@pytest.mark.parametrize("returns", ["state", "execution"])
def test_shutdown_cancel_pending_gives_a_running_body_a_cancelled_child_not_a_shutdown_error(returns):
    """A body running when shutdown(cancel_pending=True) drains the engine may still submit
    children (as under a plain shutdown), but they are work that has not started, which the
    shutdown cancels: submit() returns an Execution already cancelled, and the child never runs.
    Before, the drained scheduler refused it with ShutdownError, which failed the body (a
    forwarder under concurrency= failed that way and its error was logged as never retrieved).
    "execution": the body forwards to its child (returns it), and ends cancelled with it."""
    from conftest import run_python

    proc = run_python(
        f"""
        import threading, distaff
        engine = distaff.Engine(workers=1, max_workers=1)
        started, go, ran = threading.Event(), threading.Event(), []

        @engine.task
        def child():
            ran.append(1)

        @engine.task
        def parent():
            started.set()
            go.wait(30)  # running (its worker blocked, the GIL free) while the shutdown drains
            c = child.submit()
            if {returns!r} == "execution":
                return c
            distaff.wait([c], timeout=30)
            return c.state

        p = parent.submit()
        assert started.wait(30)
        engine.shutdown(wait=False, cancel_pending=True)
        go.set()
        try:
            print(p.result(timeout=30), ran, flush=True)
        except distaff.CancelledError:
            print("parent cancelled", ran, flush=True)
        engine.shutdown()
        print("stats", engine.stats()["live"], flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    first = "cancelled []" if returns == "state" else "parent cancelled []"
    assert proc.stdout.splitlines() == [first, "stats 0"], (proc.stdout, proc.stderr)
    assert "ShutdownError" not in proc.stderr and "nobody retrieved" not in proc.stderr, proc.stderr


def test_shutdown_cancel_pending_cancels_queued_and_waiting_and_waits_for_running(new_gate):
    gate = new_gate()
    # max_workers=1: the body blocks its worker in a plain wait, and elastic growth would start
    # another worker that runs the queued ones before the shutdown (under load: "DID NOT RAISE").
    eng = distaff.Engine(workers=1, max_workers=1)
    started = threading.Event()
    log = CallbackLog()

    @eng.task()
    def running():
        started.set()
        gate.wait(60)
        return "ran to completion"

    @eng.task()
    def queued():
        return "never"

    @eng.task(wait=True)
    def waiting(dep):
        return "never"

    r = log.watch(running.submit())
    assert started.wait(30)
    q = [log.watch(queued.submit()) for _ in range(5)]
    w = log.watch(waiting.submit(r))
    done = threading.Event()
    t = threading.Thread(target=lambda: (eng.shutdown(wait=True, cancel_pending=True), done.set()))
    t.start()
    for ex in q:
        with pytest.raises(distaff.CancelledError):
            ex.result(timeout=30)
    distaff.wait([w], timeout=30)
    assert w.cancelled()  # waiting for its dependency: not started, so cancelled too
    assert not done.is_set()  # still waiting for the running body
    gate.set()
    t.join(30)
    assert done.is_set()
    assert r.result() == "ran to completion"
    log.wait_for(7)
    assert all(len(v) == 1 for v in log.calls.values()) and len(log.calls) == 7
    with pytest.raises(distaff.ShutdownError):
        queued.submit()
    stats = eng.stats()
    assert stats["live"] == 0 and stats["fibers"] == 0, stats


@pytest.mark.parametrize("kw", ["cancel_pending", "cancel_running"])
def test_shutdown_cancels_a_waiting_dependent_of_a_queued_execution_instead_of_failing_it(new_gate, kw, caplog):
    # Outsider finding (session 9): the sweep cancelled the queued `a` first, and its cancel failed
    # the dependent `d` (wait=True on a) with DependencyError — logged as never retrieved, thousands
    # of times under load — instead of cancelling it as the shutdown promises for everything that
    # has not started. A dependency cancelled by the drain now cancels its dependents.
    gate = new_gate()
    eng = distaff.Engine(workers=1, max_workers=1)
    started = threading.Event()

    @eng.task()
    def blocker():
        started.set()
        gate.wait(60)

    @eng.task()
    def a():
        return 1

    @eng.task(wait=True)
    def d(x):
        return x

    @eng.task(wait=True)
    def d2(y):
        return y

    b = blocker.submit()
    assert started.wait(30)
    x = a.submit()
    y = d.submit(x)
    z = d2.submit(y)
    t = threading.Thread(target=lambda: eng.shutdown(**{kw: True}))
    t.start()
    distaff.wait([x, y, z], timeout=30)
    gate.set()
    t.join(30)
    assert not t.is_alive()
    assert (x.state, y.state, z.state) == ("cancelled", "cancelled", "cancelled")
    del x, y, z
    import gc

    gc.collect()
    assert "nobody retrieved" not in caplog.text, caplog.text


def test_a_running_workflow_whose_child_the_drain_cancelled_ends_cancelled_not_failed(new_gate, caplog):
    """Outsider finding (session 10): shutdown(cancel_pending=True) cancels a running workflow's
    pending child; the workflow's result() raises CancelledError, which the body lets through. The
    workflow ended *failed* and was logged as never retrieved (30-80 times per run under load). A
    body that lets a CancelledError through while its engine drains now ends cancelled, as a
    wait= dependent of a drained execution does."""
    gate = new_gate()
    eng = distaff.Engine(workers=1)
    waiting = threading.Event()

    @eng.task()
    def blocker():
        gate.wait(60)

    @eng.task(wait=True)
    def step(g):
        return 1

    @eng.workflow()
    def flow(g):
        s = step.submit(g)
        waiting.set()
        return s.result() + 1  # waits for a step that has not started

    g = blocker.submit()
    w = flow.submit(g)
    assert waiting.wait(30)
    t = threading.Thread(target=lambda: eng.shutdown(cancel_pending=True))
    t.start()
    distaff.wait([w], timeout=30)
    gate.set()
    t.join(30)
    assert not t.is_alive()
    assert w.state == "cancelled", (w.state, w.exception() if w.state == "failed" else None)
    del w
    import gc

    gc.collect()
    assert "nobody retrieved" not in caplog.text, caplog.text


def test_shutdown_cancel_pending_cancels_pending_children_of_a_body():
    """Pending executions a worker already took (children of a body) are cancelled too."""
    eng = distaff.Engine(workers=1, max_workers=1)  # no elastic worker to run them meanwhile
    started = threading.Event()
    ran = []

    @eng.task()
    def running():
        started.set()
        time.sleep(0.3)  # holds the only worker: nothing else can start meanwhile

    @eng.task()
    def queued(i):
        ran.append(i)

    @eng.task()
    def parent():
        return [running.submit()] + [queued.submit(i) for i in range(5)]

    exs = parent()
    assert started.wait(30)
    assert [e.state for e in exs[1:]] == ["pending"] * 5
    eng.shutdown(wait=True, cancel_pending=True)
    assert ran == [] and all(e.cancelled() for e in exs[1:])


def test_shutdown_without_wait_returns_at_once_and_work_finishes(new_gate):
    gate = new_gate()
    eng = distaff.Engine(workers=1)

    @eng.task()
    def slow():
        fiber_wait(gate, timeout=60)
        return "done"

    ex = slow.submit()
    eng.shutdown(wait=False)
    assert not ex.done()
    gate.set()
    assert ex.result(timeout=30) == "done"
    eng.shutdown(wait=True)  # a second call joins the workers
    assert eng.stats()["fibers"] == 0
