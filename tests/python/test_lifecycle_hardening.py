"""Engine lifecycle under hostile use: engines shut down or dropped inside other engines' bodies,
dropped busy engines, shutdown racing submitters, exit after shutdown(wait=False), signals during
the exit wait, Ctrl-C in blocking calls, self-waits.

Every case runs in a fresh interpreter with a deadline (conftest.run_python, or _signalled below):
a hang fails the test instead of stalling the suite. Signals are sent once the child has said it is
ready (a line on stdout, or the exit hook's log line on stderr), never after a guessed sleep.
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import run_python

CRASH_MARKERS = ("terminate called", "FATAL", "Fatal Python error", "Aborted", "Segmentation")
EXIT_WAIT = "outstanding execution(s) before exit"


def assert_no_crash(proc_or_err):
    err = proc_or_err if isinstance(proc_or_err, str) else proc_or_err.stderr
    for marker in CRASH_MARKERS:
        assert marker not in err, err


def _signalled(script, sends, *, timeout=60):
    """Runs `script`; `sends` is a list of (wait_for, signal): wait until `wait_for` appears — on
    stdout if it starts with "out:", else on stderr — then send `signal` (None: send nothing).
    Returns (rc, out, err).
    Everything, the waits for the ready lines included, is bounded by `timeout`."""
    import queue
    import threading
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = {"out": [], "err": []}
    arrived = queue.Queue()

    def pump(name, stream):
        for line in stream:
            lines[name].append(line)
            arrived.put(name)
        arrived.put(None)

    pumps = [
        threading.Thread(target=pump, args=("out", proc.stdout), daemon=True),
        threading.Thread(target=pump, args=("err", proc.stderr), daemon=True),
    ]
    for t in pumps:
        t.start()
    deadline = time.monotonic() + timeout

    def text():
        return "".join(lines["out"]), "".join(lines["err"])

    try:
        for wait_for, sig in sends:
            name, needle = ("out", wait_for[4:]) if wait_for.startswith("out:") else ("err", wait_for)
            while not any(needle in line for line in list(lines[name])):
                try:
                    arrived.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    pytest.fail(f"no {needle!r} from the child in time: {text()}")
                if proc.poll() is not None and all(not t.is_alive() for t in pumps):
                    if not any(needle in line for line in lines[name]):
                        pytest.fail(f"child ended before printing {needle!r}: {text()}")
            if sig is not None:
                os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=max(0.01, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the child hung: {text()}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for t in pumps:
            t.join(10)
        proc.stdout.close()
        proc.stderr.close()
    out, err = text()
    return proc.returncode, out, err


# -- item 4: an engine shut down or dropped inside another engine's body ----------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_engine_used_as_a_context_manager_inside_another_engines_body(workers):
    proc = run_python(
        f"""
        import distaff
        outer = distaff.Engine(workers={workers})

        def body(i):
            with distaff.Engine() as inner:
                return inner.submit(lambda: i * 10).result()

        print(sorted(outer.submit(body, i).result(timeout=30) for i in range(5)), flush=True)
        exs = [outer.submit(body, i) for i in range(5)]  # several at once, on the same workers
        print(sorted(e.result(timeout=30) for e in exs), flush=True)
        outer.shutdown()
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[0, 10, 20, 30, 40]"] * 2
    assert_no_crash(proc)


def test_shutting_down_an_engine_from_a_body_of_another_one_waits_for_its_work():
    proc = run_python(
        """
        import distaff
        a, b = distaff.Engine(), distaff.Engine()
        done = []

        def work(i):
            distaff.sleep(0.05)
            done.append(i)

        for i in range(5):
            a.submit(work, i)

        def stopper():
            a.shutdown()  # waits for a's work and joins a's workers: suspends this fiber only
            return sorted(done)

        print(b.submit(stopper).result(timeout=30), flush=True)
        print(a.stats()["threads"], a.stats()["closed"], flush=True)
        b.shutdown()
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[0, 1, 2, 3, 4]", "0 True"]
    assert_no_crash(proc)


def test_an_engine_garbage_collected_in_a_body_of_another_one():
    proc = run_python(
        """
        import gc, distaff
        outer = distaff.Engine()

        def body(i):
            local = distaff.Engine(workers=2)
            v = local.submit(lambda: i + 1).result()
            local.submit(distaff.sleep, 0.02)  # still running when `local` is dropped
            del local
            distaff.Engine(max_workers=4)  # and one dropped at once, with no work at all
            gc.collect()
            return v

        print([outer.submit(body, i).result(timeout=30) for i in range(5)], flush=True)
        outer.shutdown()
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("[1, 2, 3, 4, 5]")
    assert_no_crash(proc)


def test_two_engines_shutting_each_other_down_from_their_bodies():
    proc = run_python(
        """
        import distaff
        a, b = distaff.Engine(), distaff.Engine()
        x = a.submit(lambda: b.shutdown())
        y = b.submit(lambda: distaff.sleep(0.05))
        x.result(timeout=30)
        print(y.state, b.stats()["closed"], flush=True)
        a.shutdown()
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("succeeded True")


def test_cancel_wakes_a_body_parked_in_another_engines_shutdown():
    # Outsider trial finding 4: two engines whose bodies shut each other down wait for each other
    # for good, and cancel() returned True but did not wake a body parked in *another* engine's
    # shutdown() (before: both wait_idle() calls returned False, then the exit hung to the
    # deadline). The wait is now interruptible like every other wait of a body.
    proc = run_python(
        """
        import time
        import distaff
        a, b = distaff.Engine(), distaff.Engine()
        x = a.submit(lambda: b.shutdown())
        y = b.submit(lambda: a.shutdown())
        deadline = time.monotonic() + 20
        while not (a.stats()["closed"] and b.stats()["closed"]):  # both shutdowns have begun
            assert time.monotonic() < deadline
            time.sleep(0.001)
        print(x.cancel(), y.cancel(), flush=True)
        print(a.wait_idle(timeout=10), b.wait_idle(timeout=10), x.state, y.state, flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "True", "True", "cancelled", "cancelled"], proc.stdout


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_bodies_that_shut_each_other_down_end_at_their_cancel_or_timeout_and_the_exit_follows(how):
    # Session 12: the cancels woke both bodies from each other's drain, but each engine then went idle
    # (its body was cancelled), so the *other* body's shutdown went on to join this engine's worker
    # — which could not end while this body, parked in that other join, lived on it. The exit then
    # waited for the joins for good (test_known_gaps.py had it as an xfail). The join wait is now
    # interruptible too: each body gets its CancelledError/TimeoutError out of shutdown() and ends.
    proc = run_python(
        f"""
        import threading, time
        import distaff
        HOW = {how!r}
        a, b = distaff.Engine(), distaff.Engine()
        seen = []
        left = threading.Barrier(3)

        def shut(other, tag):
            try:
                other.shutdown()
            except BaseException as e:
                seen.append((tag, type(e).__name__))
                raise
            finally:
                threading.Thread(target=left.wait).start()  # the body is leaving (no wait in a body)

        opts = dict(timeout=0.5) if HOW == "timeout" else {{}}
        x = a.task(**opts)(shut).submit(b, "x")
        y = b.task(**opts)(shut).submit(a, "y")
        deadline = time.monotonic() + 20
        while not (a.stats()["closed"] and b.stats()["closed"]):  # both shutdowns have begun
            assert time.monotonic() < deadline
            time.sleep(0.001)
        if HOW == "cancel":
            x.cancel(); y.cancel()
        left.wait(timeout=20)  # both bodies left shutdown()
        # A body whose shutdown() completed (below) is still returning when its finally lets the
        # barrier go: wait for both to end (one still parked stays not done: the bug this guards).
        distaff.wait([x, y], timeout=20)
        print(x.state, y.state, sorted(seen), flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr  # the exit followed (it hung before)
    want = "cancelled" if how == "cancel" else "failed"
    err = "CancelledError" if how == "cancel" else "TimeoutError"
    states = proc.stdout.split("[")[0].split()
    seen = eval(proc.stdout[proc.stdout.index("["):])  # noqa: S307 - our own child's repr of a list
    # Usually both bodies get their interruption out of shutdown(). The one interrupted second may
    # instead see its shutdown() complete: the first one's end lets the join it waits in finish
    # (seen under load with two equal timeouts). Either way no body stays parked.
    assert want in states and set(states) <= {want, "succeeded"}, proc.stdout
    assert seen and all(e == err for _, e in seen), proc.stdout


def test_a_timeout_or_cancel_ends_a_body_waiting_for_another_engine():
    # The same for a body's timeout= and for wait_idle() of another engine: the wait raises the
    # body's distaff.TimeoutError or CancelledError at once (the body's `finally` runs while the
    # other engine is still busy), and the other engine's work goes on. Before, each execution
    # finished at once but its body stayed parked until the other engine's work ended.
    proc = run_python(
        """
        import threading
        import distaff
        gate, waiting = threading.Event(), threading.Event()
        ended_shutdown, ended_wait = threading.Event(), threading.Event()
        a, b = distaff.Engine(), distaff.Engine()
        busy = b.submit(gate.wait)  # b stays busy until the gate opens

        @a.task(timeout=0.3)
        def shuts_b_down():
            try:
                b.shutdown()
            finally:
                ended_shutdown.set()

        def waits_for_b():
            waiting.set()
            try:
                return b.wait_idle()
            finally:
                ended_wait.set()

        try:
            shuts_b_down.submit().result(timeout=20)
        except distaff.TimeoutError:
            print("timed out", ended_shutdown.wait(10), flush=True)
        w = a.submit(waits_for_b)
        waiting.wait(20)
        w.cancel()
        try:
            w.result(timeout=20)
        except distaff.CancelledError:
            print("cancelled", ended_wait.wait(10), busy.done(), flush=True)
        print(a.wait_idle(timeout=10), flush=True)
        gate.set()
        print(busy.result(timeout=20), flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")[:4]
    assert lines == ["timed out True", "cancelled True False", "True", "True"], proc.stdout


def test_a_cancelled_body_shutting_down_an_inner_engine_while_its_own_engine_is_joined():
    """shutdown(cancel_running=True) finishes the outer body at once, so the outer engine's join
    starts while that body still unwinds — through `with Engine() as inner:`, whose shutdown needs
    a join of its own. It must not wait behind the outer one (one shared join thread deadlocked)."""
    proc = run_python(
        """
        import threading, distaff
        outer = distaff.Engine()
        started = threading.Event()

        def body():
            with distaff.Engine() as inner:
                started.set()
                inner.submit(distaff.sleep, 600).result()  # a child: cancelled with its parent

        ex = outer.submit(body)
        started.wait(30)
        outer.shutdown(cancel_running=True)
        print(ex.state, outer.stats()["threads"], flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("cancelled 0"), proc.stdout
    assert_no_crash(proc)


# -- item 5: dropped engines with work running ------------------------------------------------------------


def test_dropping_an_engine_with_work_running_finishes_the_work_at_exit():
    for _ in range(3):
        proc = run_python(
            """
            import distaff

            def start():
                e = distaff.Engine()

                def body(i):
                    s = 0
                    for k in range(300_000):  # running Python when the interpreter exits
                        s += k
                    distaff.sleep(0.05)
                    print("finished", i, flush=True)

                for i in range(3):
                    e.submit(body, i)

            start()  # the Engine object is gone; its executions are not
            print("main done", flush=True)
            """,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert_no_crash(proc)
        assert sorted(proc.stdout.split("\n")[1:4]) == ["finished 0", "finished 1", "finished 2"], proc.stdout
        # (a wait under a second is not announced: test_exit_wait_under_a_second_is_silent)


def test_dropped_busy_engines_release_their_threads():
    proc = run_python(
        """
        import gc, os, threading, time
        import distaff
        from distaff import _core

        def threads():
            return len(os.listdir("/proc/self/task"))

        def fds():
            return len(os.listdir("/proc/self/fd"))

        distaff.Engine().shutdown()  # first-use allocations out of the way
        base_threads, base_fds = threads(), fds()
        n = 300
        left = [n]
        lock = threading.Lock()
        all_done = threading.Event()

        def body():
            distaff.sleep(0.01)
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    all_done.set()

        for _ in range(n):
            distaff.Engine(workers=2).submit(body)  # dropped at once, busy
        print("peak threads", threads(), flush=True)
        assert all_done.wait(60)
        # The last reference to each engine goes when its execution is freed, on its own worker:
        # a join thread joins those workers. Wait until every engine is joined (a condition polled
        # with a deadline), then for the join threads.
        deadline = time.monotonic() + 60
        while _core._open_engines():
            assert time.monotonic() < deadline, len(_core._open_engines())
            gc.collect()
            time.sleep(0.01)
        _core._wait_reaped()
        print("threads", base_threads, threads(), flush=True)
        print("fds", base_fds, fds(), flush=True)
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    base, now = map(int, lines["threads"].split())
    assert now <= base, proc.stdout
    base, now = map(int, lines["fds"].split())
    assert now <= base, proc.stdout


def test_thousand_engines_created_and_shut_down_return_to_baseline():
    proc = run_python(
        """
        import os, time, distaff

        def threads():
            return len(os.listdir("/proc/self/task"))

        def fds():
            return len(os.listdir("/proc/self/fd"))

        distaff.Engine().shutdown()
        base = threads(), fds()
        for i in range(1000):
            e = distaff.Engine(workers=1 + i % 3)
            e.submit(sum, [1, 2])
            e.shutdown()
        # shutdown() joins every thread it started, but a joined thread can still be listed in
        # /proc/self/task for a moment: the kernel wakes pthread_join before it removes the task
        # (CI on 3.12, under load, counted 2 against 1 once). A leaked thread stays: the deadline
        # still fails the test.
        deadline = time.monotonic() + 30
        while threads() > base[0] and time.monotonic() < deadline:
            time.sleep(0.001)
        print("threads", base[0], threads(), flush=True)
        print("fds", base[1], fds(), flush=True)
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    for key in ("threads", "fds"):
        base, now = map(int, lines[key].split())
        assert now <= base, proc.stdout


# -- item 6: shutdown closes first, then waits; concurrent shutdowns --------------------------------------


def test_shutdown_returns_while_a_thread_keeps_submitting():
    proc = run_python(
        """
        import threading, time, distaff
        e = distaff.Engine()
        started = threading.Event()
        refused = []

        def feeder():
            while True:
                try:
                    e.submit(distaff.sleep, 0.01)  # overlapping: the engine is never idle
                except distaff.ShutdownError as exc:
                    refused.append(str(exc))
                    return
                started.set()
                time.sleep(0.001)

        t = threading.Thread(target=feeder)
        t.start()
        started.wait(30)
        t0 = time.monotonic()
        e.shutdown()
        took = time.monotonic() - t0
        t.join(30)
        print("took %.3f" % took, flush=True)
        print("refused", bool(refused), flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert float(lines["took"]) < 5, proc.stdout
    assert lines["refused"] == "True"


def test_a_daemon_thread_feeding_the_default_engine_does_not_keep_the_process_alive():
    proc = run_python(
        """
        import threading, distaff

        @distaff.task
        def tick(i):
            distaff.sleep(0.01)  # overlapping: the engine is never idle while fed

        started = threading.Event()

        def feeder():
            i = 0
            while True:
                try:
                    tick.submit(i)
                except distaff.ShutdownError:
                    pass  # the default engine is shutting down: refused, keep trying
                started.set()
                i += 1
                distaff.sleep(0.001)

        threading.Thread(target=feeder, daemon=True).start()
        started.wait(30)
        print("exiting", flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "exiting" in proc.stdout
    assert_no_crash(proc)


@pytest.mark.parametrize("how", ["submit", "detached"])
def test_a_self_rescheduling_task_does_not_keep_the_process_alive(how):
    proc = run_python(
        f"""
        import distaff

        @distaff.task
        def again(n):
            distaff.sleep(0.005)
            if n == 3:
                print("rescheduling", flush=True)
            {"again.submit(n + 1)" if how == "submit" else "again.options(detached=True).submit(n + 1)"}

        again.submit(0)
        again.submit(0).result()  # rescheduling is under way at exit
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert_no_crash(proc)


def test_a_task_that_reschedules_itself_by_returning_its_next_run_ends_at_exit():
    # Outsider trial finding 7: the tail-call form (`return poll.submit(n + 1)`) forwarded to a new
    # child forever, and the exit waited for good (before: killed at the deadline). A body that
    # returns a late child of its own has finished: the child is cancelled as a late child is when
    # its parent finishes first, and every run that followed it ends cancelled.
    proc = run_python(
        """
        import threading
        import distaff

        third = threading.Event()
        runs = []

        @distaff.task()
        def poll(n):
            runs.append(n)
            if n == 3:
                third.set()
            distaff.sleep(0.01)
            return poll.submit(n + 1)

        first = poll.submit(0)
        first.add_done_callback(lambda ex: print("first ended", ex.state, flush=True))
        third.wait()
        print("exit", flush=True)
        """,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["exit", "first ended cancelled"], proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr  # nothing logged as never retrieved


def test_shutdown_ends_a_forward_to_a_late_child_and_keeps_an_earlier_one():
    # engine.shutdown() from another thread: the run that forwards to a child it submitted during
    # the shutdown ends cancelled with the whole chain; a forward made before the shutdown began
    # (to a child that is not late) is still followed to its outcome.
    proc = run_python(
        """
        import threading
        import distaff

        eng = distaff.Engine(workers=2)
        go, closing, leaf_started = threading.Event(), threading.Event(), threading.Event()

        @eng.task()
        def leaf():
            leaf_started.set()
            go.wait()
            return "leaf"

        @eng.task()
        def forwards_early():
            return leaf.submit()  # before the shutdown: followed to the end

        @eng.task()
        def poll(n):
            if n == 0:
                closing.wait()
            distaff.sleep(0.005)
            return poll.submit(n + 1)

        early = forwards_early.submit()
        leaf_started.wait(20)  # submitted before the shutdown: not a late child
        chain = poll.submit(0)
        t = threading.Thread(target=eng.shutdown)
        t.start()
        while True:  # until the shutdown refuses outside submits: it is closing
            try:
                eng.submit(int)
            except distaff.ShutdownError:
                break
        closing.set()
        go.set()
        t.join(timeout=20)
        print(t.is_alive(), early.result(timeout=5), chain.state, flush=True)
        """,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "leaf", "cancelled"], proc.stdout + proc.stderr


def test_a_workflow_running_at_exit_can_still_submit_and_wait_for_its_steps():
    proc = run_python(
        """
        import distaff

        @distaff.task
        def step(i):
            distaff.sleep(0.02)
            return i

        @distaff.workflow
        def flow():
            distaff.sleep(0.1)  # the exit's shutdown begins meanwhile
            parts = [step.submit(i) for i in range(3)]
            print("steps", sum(p.result() for p in parts) + step(10), flush=True)
            with distaff.Engine() as inner:  # a body may still start an engine of its own
                print("inner", inner.submit(lambda: 7).result(), flush=True)

        flow.submit()
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "steps 13" in proc.stdout
    assert "inner 7" in proc.stdout


def test_a_daemon_thread_creating_engines_during_the_exit_neither_keeps_it_alive_nor_aborts():
    proc = run_python(
        """
        import threading, distaff
        started = threading.Event()

        def creator():
            while True:
                try:
                    e = distaff.Engine()
                    e.submit(distaff.sleep, 0.01)  # dropped busy: runs on until it is done
                except distaff.ShutdownError:
                    pass  # the interpreter is exiting: refused
                started.set()

        threading.Thread(target=creator, daemon=True).start()
        started.wait(30)
        print("exiting", flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert_no_crash(proc)


def test_concurrent_shutdowns_all_return():
    proc = run_python(
        """
        import threading, distaff
        for round in range(50):
            e = distaff.Engine(workers=1 + round % 3)
            for i in range(20):
                e.submit(distaff.sleep, 0.001)
            barrier = threading.Barrier(6)
            errors = []

            def stop():
                barrier.wait()
                try:
                    e.shutdown(wait=True)
                except BaseException as exc:
                    errors.append(exc)

            ts = [threading.Thread(target=stop) for _ in range(6)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            assert not any(t.is_alive() for t in ts), "a shutdown hung"
            assert not errors, errors
            assert e.stats()["threads"] == 0 and e.stats()["live"] == 0, e.stats()
        print("ok", flush=True)
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


# -- item 9: shutdown(wait=False) on the default engine, then exit ----------------------------------------


@pytest.mark.parametrize("body", ["python", "sleep"])
def test_exit_after_shutdown_without_wait_finishes_the_running_bodies_and_says_so(body):
    # Longer than the exit wait's quiet first second, after which the wait is announced.
    work = (
        "t0 = time.monotonic()\n            while time.monotonic() - t0 < 1.5: s += 1"
        if body == "python"
        else "distaff.sleep(1.5)"
    )
    proc = run_python(
        f"""
        import threading, time, distaff
        started = threading.Event()

        @distaff.task
        def job():
            started.set()
            s = 0
            {work}
            print("job finished", flush=True)

        job.submit()
        started.wait(30)
        distaff.shutdown(wait=False)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert_no_crash(proc)
    assert "job finished" in proc.stdout
    assert "waiting for 1 outstanding execution(s) before exit" in proc.stderr


# -- item 10: exceptions raised by signal handlers during the exit wait -----------------------------------


@pytest.mark.parametrize("body", ["python", "sleep"])
def test_sigterm_handler_raising_system_exit_during_the_exit_wait(body):
    work = (
        "while True:\n                n = (n + 1) % 1000"
        if body == "python"
        else "while True:\n                distaff.sleep(0.01)"
    )
    script = f"""
    import signal, sys, threading, distaff
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = threading.Event()

    @distaff.task
    def forever():
        n = 0
        started.set()
        try:
            {work}
        finally:
            print("body ended", flush=True)

    forever.submit()
    started.wait()  # the body runs when the exit wait begins (a queued one is cancelled unseen)
    """
    rc, out, err = _signalled(script, [(EXIT_WAIT, signal.SIGTERM)], timeout=30)
    assert rc == 143, (rc, err)
    assert_no_crash(err)
    assert "during the exit wait; cancelling outstanding executions" in err
    assert "body ended" in out, (out, err)


@pytest.mark.parametrize("call", ["long_job()", "long_job.submit().result()"], ids=["inline", "handed-off"])
def test_sigterm_handler_raising_system_exit_in_a_blocking_call_cancels_what_it_waited_for(call):
    # "ready" is printed inside the try: the main thread's f(x) runs the body right there, and the
    # handler's SystemExit lands wherever the body is when the signal arrives (under load, CI saw it
    # land before the try, when "ready" came first).
    script = """
    import signal, sys, distaff
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    @distaff.task
    def long_job():
        try:
            print("ready", flush=True)
            distaff.sleep(600)
        finally:
            print("job ended", flush=True)

    CALL
    """.replace("CALL", call)
    rc, out, err = _signalled(script, [("out:ready", signal.SIGTERM)], timeout=30)
    assert rc == 143, (rc, err)
    assert "job ended" in out
    assert EXIT_WAIT not in err  # cancelled with the call: nothing left for the exit to wait for
    assert_no_crash(err)


def test_a_second_sigterm_leaves_a_body_stuck_in_c_and_keeps_the_exit_status():
    script = """
    import signal, sys, time, distaff
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    @distaff.task
    def stuck():
        print("ready", flush=True)
        time.sleep(600)  # C code: cannot be interrupted

    stuck.submit()
    """
    rc, out, err = _signalled(
        script,
        [("out:ready", None), (EXIT_WAIT, signal.SIGTERM), ("cancelling outstanding executions", signal.SIGTERM)],
        timeout=30,
    )
    assert rc == 143, (rc, err)
    assert_no_crash(err)
    assert "exiting now; 1 execution(s) did not end" in err


# A signal handler that runs inside Python code distaff runs on the main thread for the program (a
# done-callback, the logging hook installed before the first interruption of a body) raised there,
# and that code's errors were logged or dropped: the second SIGTERM of the case above was lost in
# the logging hook about one run in eight on 3.12 (CI, session 16) and the exit waited for good. The
# exception is now raised at the main thread's next bytecode, or by the wait it is in. The cases
# below make the signal land inside a done-callback every time: the callback sends it and runs
# bytecode until the handler has run.
_SIGTERM_IN_A_CALLBACK = """
    import os, signal, sys, time, distaff
    handled = []
    def on_term(signum, frame):
        handled.append(signum)
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)

    def send_sigterm_from_here(ex):
        os.kill(os.getpid(), signal.SIGTERM)
        n = len(handled)
        deadline = time.monotonic() + 20
        while len(handled) == n and time.monotonic() < deadline:
            pass  # bytecode: the handler runs here, and raises here
"""


def test_a_sigterm_handlers_exit_raised_inside_a_done_callback_run_by_cancel_ends_the_program():
    script = _SIGTERM_IN_A_CALLBACK + """
    @distaff.task
    def parked():
        distaff.sleep(600)

    ex = parked.submit()
    ex.add_done_callback(send_sigterm_from_here)
    ex.cancel()  # runs the callback here, on the main thread
    for _ in range(1000):
        pass
    print("the program went on", flush=True)
    """
    proc = run_python(script, timeout=60)
    assert proc.returncode == 143, (proc.returncode, proc.stdout, proc.stderr)
    assert "the program went on" not in proc.stdout
    assert "exception calling callback" not in proc.stderr, proc.stderr
    assert_no_crash(proc)


def test_a_second_sigterm_raised_inside_a_done_callback_during_the_exit_wait_still_gives_up():
    # The first SIGTERM cancels the body stuck in C; the cancel runs the execution's done-callback
    # on the main thread, and the second SIGTERM's handler runs inside it.
    script = _SIGTERM_IN_A_CALLBACK + """
    @distaff.task
    def stuck():
        print("ready", flush=True)
        time.sleep(600)  # C code: cannot be interrupted

    stuck.submit().add_done_callback(send_sigterm_from_here)
    """
    rc, out, err = _signalled(script, [("out:ready", None), (EXIT_WAIT, signal.SIGTERM)], timeout=30)
    assert rc == 143, (rc, err)
    assert_no_crash(err)
    assert "exiting now; 1 execution(s) did not end" in err
    assert "exception calling callback" not in err, err


def test_a_sigterm_raised_inside_a_done_callback_of_the_cancel_after_a_ctrl_c_still_gives_up():
    # The program ends by a Ctrl-C (an uncaught KeyboardInterrupt): the outstanding work is
    # cancelled before Python joins the threads, and the cancel runs the callback, where the
    # SIGTERM's handler raises. That was dropped there, and the exit then waited for the stuck body.
    script = _SIGTERM_IN_A_CALLBACK + """
    import threading
    started = threading.Event()

    @distaff.task
    def stuck():
        started.set()
        time.sleep(600)  # C code: cannot be interrupted

    stuck.submit().add_done_callback(send_sigterm_from_here)
    started.wait()
    raise KeyboardInterrupt  # as a Ctrl-C here would
    """
    proc = run_python(script, timeout=30)
    assert proc.returncode == 143, (proc.returncode, proc.stderr)
    assert "exiting now; 1 execution(s) did not end" in proc.stderr
    assert_no_crash(proc)


def test_a_sigterm_handlers_exit_raised_inside_a_done_callback_delivered_on_the_asyncio_loop_ends_the_program():
    # Registered inside asyncio.run: distaff delivers the callback on that loop (in a batch of
    # deliveries), whose except BaseException reported the SystemExit to the loop's exception
    # handler and went on (an outsider's find, session 16): exit status 0.
    script = _SIGTERM_IN_A_CALLBACK + """
    import asyncio

    @distaff.task
    def quick():
        return 1

    async def main():
        ex = quick.submit()
        ex.add_done_callback(send_sigterm_from_here)
        await ex
        await asyncio.sleep(0.2)
        print("the program went on", flush=True)

    asyncio.run(main())
    print("after asyncio.run", flush=True)
    """
    proc = run_python(script, timeout=60)
    assert proc.returncode == 143, (proc.returncode, proc.stdout, proc.stderr)
    assert "went on" not in proc.stdout and "after asyncio.run" not in proc.stdout
    assert "delivery to the event loop failed" not in proc.stderr, proc.stderr
    assert_no_crash(proc)


def test_a_systemexit_from_a_loop_delivered_callback_ends_asyncio_run_and_the_rest_of_its_batch_is_delivered():
    # The deliveries after the one that raised used to be dropped with the batch: one of them could
    # be gather's own callback for a child, and asyncio.run's clean-up then waited for that gather
    # for good. Now they run when the loop runs again (as asyncio keeps its ready callbacks). The
    # loop is kept from running until every execution is done, so all 200 deliveries are one batch
    # (before: the SystemExit was swallowed and the program went on, status 0; with it raised but
    # the rest dropped: 1 delivered).
    proc = run_python(
        """
        import asyncio, sys, time, distaff

        gate = distaff.Event()

        @distaff.task
        def quick(i):
            gate.wait()
            return i

        got = []

        def cb(e):
            got.append(e.result())
            if len(got) == 1:
                sys.exit(3)

        async def main():
            exs = [quick.submit(i) for i in range(200)]
            for e in exs:
                e.add_done_callback(cb)  # none is done yet: each is delivered on this loop when it is
            gate.set()
            while not all(e.done() for e in exs):  # the loop does not run meanwhile, so their
                time.sleep(0.001)                  # deliveries wait for it in one batch
            await asyncio.sleep(0.5)
            print("the program went on", flush=True)

        try:
            asyncio.run(main())
        finally:
            print("delivered", len(got), flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
    assert "went on" not in proc.stdout
    assert "delivered 200" in proc.stdout, proc.stdout
    assert_no_crash(proc)


def test_one_ctrl_c_landing_in_a_done_callback_runs_the_programs_sigint_handler_once():
    # The Ctrl-C was delivered again as a new SIGINT, so the program's own handler ran twice for
    # one Ctrl-C (an outsider's find, session 16: a "second Ctrl-C forces exit" handler exited).
    proc = run_python(
        """
        import os, signal, time, distaff
        calls = []
        def on_int(signum, frame):
            calls.append(signum)
            raise KeyboardInterrupt
        signal.signal(signal.SIGINT, on_int)

        def send_sigint_from_here(ex):
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 20
            while not calls and time.monotonic() < deadline:
                pass

        @distaff.task
        def parked():
            distaff.sleep(600)

        ex = parked.submit()
        ex.add_done_callback(send_sigint_from_here)
        try:
            ex.cancel()
            for _ in range(1000):
                pass
            print("went on", flush=True)
        except KeyboardInterrupt:
            print("caught", flush=True)
        for _ in range(100000):
            pass
        print("handler calls:", len(calls), flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "caught" in proc.stdout and "went on" not in proc.stdout, proc.stdout
    assert "handler calls: 1" in proc.stdout, proc.stdout


# -- item 11: one Ctrl-C ends a program blocked in a call -------------------------------------------------


def test_ctrl_c_in_a_blocking_top_level_call_cancels_the_workflow_and_ends_the_program():
    script = """
    import distaff

    started = []

    @distaff.task
    def wait_a_lot(s):
        started.append(1)
        try:
            distaff.sleep(s)
        finally:
            print("step ended", flush=True)

    @distaff.workflow
    def pipeline(s):
        parts = [wait_a_lot.submit(s) for _ in range(3)]
        while len(started) < 3:  # every step is running (a queued one is cancelled unseen)
            distaff.sleep(0.001)
        print("ready", flush=True)
        return [p.result() for p in parts]

    pipeline(600)
    """
    rc, out, err = _signalled(script, [("out:ready", signal.SIGINT)], timeout=30)
    assert rc == -signal.SIGINT, (rc, err)
    assert "KeyboardInterrupt" in err
    assert out.count("step ended") == 3, out
    assert EXIT_WAIT not in err  # nothing was left running for the exit to wait for
    assert_no_crash(err)


def test_ctrl_c_in_an_unrelated_blocking_call_cancels_outstanding_work_at_exit():
    script = """
    import threading, distaff

    started = threading.Event()

    @distaff.task
    def background():
        started.set()
        try:
            distaff.sleep(600)
        finally:
            print("background ended", flush=True)

    background.submit()
    started.wait()
    print("ready", flush=True)
    threading.Event().wait()  # the main thread blocks in something that is not distaff
    """
    rc, out, err = _signalled(script, [("out:ready", signal.SIGINT)], timeout=30)
    assert rc == -signal.SIGINT, (rc, err)
    assert "the program was interrupted; cancelling outstanding executions" in err
    assert "background ended" in out
    assert_no_crash(err)


def test_a_result_wait_that_times_out_does_not_cancel():
    proc = run_python(
        """
        import distaff

        @distaff.task
        def slow():
            distaff.sleep(0.3)
            return "done"

        ex = slow.submit()
        try:
            ex.result(timeout=0.01)
        except TimeoutError:
            print("timed out", ex.state, flush=True)
        print(ex.result(timeout=30), flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["timed out running", "done"]


def test_bodies_deadlocked_on_a_lock_held_across_a_wait_end_on_ctrl_c():
    script = """
    import threading, distaff
    engine = distaff.Engine(workers=1, max_workers=1)
    lock = threading.Lock()

    @engine.task
    def critical(i):
        if i == 1:
            print("ready", flush=True)  # its worker blocks in lock.acquire next, for good
        with lock:  # a threading.Lock held across a fiber wait: the hazard in docs/limits.md
            distaff.sleep(0.05)

    exs = [critical.submit(i) for i in range(2)]
    for e in exs:
        e.result()
    """
    rc, out, err = _signalled(
        script,
        [("out:ready", signal.SIGINT), ("cancelling outstanding executions", signal.SIGINT)],
        timeout=30,
    )
    assert rc == -signal.SIGINT, (rc, err)
    assert "exiting now; " in err and "did not end" in err
    assert_no_crash(err)


# -- item 12: self-waits ----------------------------------------------------------------------------------


def test_wait_idle_from_a_body_of_the_same_engine_is_a_deadlock_error():
    proc = run_python(
        """
        import distaff
        e = distaff.Engine()
        x = e.submit(lambda: e.wait_idle())
        try:
            x.result(timeout=30)
        except distaff.DeadlockError as exc:
            print("DeadlockError:", exc, flush=True)
        y = e.submit(lambda: e.wait_idle(timeout=0.01))
        try:
            y.result(timeout=30)
        except distaff.DeadlockError:
            print("also with a timeout", flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "DeadlockError: an engine cannot wait until it is idle from one of its own tasks" in proc.stdout
    assert "also with a timeout" in proc.stdout


def test_module_shutdown_from_a_body_of_the_default_engine_is_refused_and_keeps_it():
    proc = run_python(
        """
        import distaff

        @distaff.task
        def rogue():
            distaff.shutdown()

        try:
            rogue()
        except RuntimeError as exc:
            print("refused:", exc, flush=True)
        print("default kept", distaff._engine._default is not None, flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "refused: an engine cannot be shut down from one of its own tasks" in proc.stdout
    assert "default kept True" in proc.stdout
