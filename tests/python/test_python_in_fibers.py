"""The rules for running Python inside fibers (docs/internals/scheduler.md, "The rules, the code, the proof"): one test per rule."""

import asyncio
import contextvars
import ctypes
import sys
import threading

import pytest

import distaff

from conftest import run_python


def test_rule1_exception_state_is_per_fiber(engine):
    # A body that suspends inside an `except` block must find its own exception afterwards, even
    # though other fibers raised and handled their own meanwhile on the same thread.
    @engine.task()
    def other(i):
        try:
            raise KeyError(i)
        except KeyError:
            distaff.sleep(0)
            return sys.exc_info()[1].args[0]

    @engine.task()
    def handler():
        try:
            raise ValueError("mine")
        except ValueError:
            results = [other(i) for i in range(5)]
            return repr(sys.exc_info()[1]), results

    assert handler() == ("ValueError('mine')", [0, 1, 2, 3, 4])


def test_rule1_threading_local_is_per_fiber(engine):
    local = threading.local()

    @engine.task()
    def set_and_check(i):
        local.value = i
        distaff.sleep(0.001)  # others run and set their own value meanwhile
        return local.value

    exs = [set_and_check.submit(i) for i in range(50)]
    assert [e.result() for e in exs] == list(range(50))


def test_rule1_contextvars_are_copied_from_the_submitter_and_isolated(engine):
    var = contextvars.ContextVar("var", default="unset")

    @engine.task()
    def read_then_set(i):
        before = var.get()
        var.set(f"fiber{i}")
        distaff.sleep(0.001)
        return before, var.get()

    var.set("submitter")
    exs = [read_then_set.submit(i) for i in range(20)]
    assert [e.result() for e in exs] == [("submitter", f"fiber{i}") for i in range(20)]
    assert var.get() == "submitter"


def test_rule1_contextvars_from_an_empty_submitter_context_are_isolated_too(engine):
    """A submitter with no context variables set gets no context copy (a fast path): each body
    still starts empty and what it sets stays in its own fiber, across suspensions and across
    pooled thread states reused by later bodies."""
    var = contextvars.ContextVar("var", default="unset")

    @engine.task()
    def read_then_set(i):
        before = var.get()
        var.set(f"fiber{i}")
        distaff.sleep(0.001)  # other bodies run meanwhile on this worker
        return before, var.get()

    def submit_all():
        assert len(contextvars.copy_context()) == 0
        return [read_then_set.submit(i) for i in range(20)]

    for _ in range(3):  # later rounds run on reused thread states
        exs = contextvars.Context().run(submit_all)
        assert [e.result() for e in exs] == [("unset", f"fiber{i}") for i in range(20)]


def test_rule1_recursion_depth_is_per_fiber(engine):
    @engine.task()
    def deep(n):
        def rec(k):
            return 0 if k == 0 else 1 + rec(k - 1)

        distaff.sleep(0)
        return rec(n)

    limit = sys.getrecursionlimit()
    exs = [deep.submit(limit // 2) for _ in range(10)]
    assert all(e.result() == limit // 2 for e in exs)


def test_runaway_recursion_in_a_body_is_a_recursion_error(engine):
    @engine.task()
    def runaway():
        def rec(k):
            return rec(k + 1) + 1

        return rec(0)

    with pytest.raises(RecursionError):
        runaway()


def test_runaway_recursion_through_c_is_a_clean_error_not_a_crash():
    # Recursion through C (__repr__) uses the C stack, which is the fiber's. Must not SIGSEGV.
    proc = run_python(
        """
        import distaff
        class R:
            def __repr__(self):
                return repr(R())
        @distaff.task()
        def f():
            return repr(R())
        try:
            f()
        except RecursionError:
            print("RecursionError")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "RecursionError" in proc.stdout


def test_rule3_c_callbacks_after_a_switch_use_the_right_thread_state(engine):
    # ctypes releases the GIL around the foreign call and its callbacks re-enter Python through
    # PyGILState_Ensure. On 3.11 a stale PyGILState slot made them run under the worker's (or
    # another fiber's) thread state: wrong contextvars, wrong exception state, or a deadlock.
    libc = ctypes.CDLL(None)
    CMP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
    var = contextvars.ContextVar("who", default="nobody")

    @engine.task()
    def sort_with_callback(i, values):
        var.set(f"fiber{i}")
        distaff.sleep(0.001)  # other fibers run on this thread meanwhile
        seen = set()

        def cmp(a, b):
            seen.add(var.get())
            return a[0] - b[0]

        arr = (ctypes.c_int * len(values))(*values)
        libc.qsort(arr, len(values), ctypes.sizeof(ctypes.c_int), CMP(cmp))
        return list(arr), seen

    exs = [sort_with_callback.submit(i, [5, 3, 9, 1, i]) for i in range(20)]
    for i, e in enumerate(exs):
        values, seen = e.result(timeout=60)
        assert values == sorted([5, 3, 9, 1, i])
        assert seen == {f"fiber{i}"}


def test_rule5_asyncio_in_bodies_with_reused_thread_states(engine):
    # asyncio caches the running loop keyed by the thread state's id; pooled states get fresh ids,
    # or a later body would see a dead loop (SIGSEGV on 3.12.1).
    @engine.task()
    def run_loop(i):
        async def main():
            await asyncio.sleep(0)
            return i

        assert asyncio._get_running_loop() is None
        r = asyncio.run(main())
        distaff.sleep(0)
        assert asyncio._get_running_loop() is None
        return r

    for _ in range(3):
        exs = [run_loop.submit(i) for i in range(30)]
        assert [e.result() for e in exs] == list(range(30))


def test_rule7_exit_with_work_running_neither_hangs_nor_crashes():
    proc = run_python(
        """
        import distaff, threading
        @distaff.task()
        def slow(i):
            distaff.sleep(1.2)  # past the exit wait's quiet first second: the wait is announced
            print("done", i, flush=True)
        for i in range(3):
            slow.submit(i)
        print("exiting", flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("done") == 3
    assert "waiting for" in proc.stderr


def test_rule7_engines_created_in_threads_and_dropped_shut_down_cleanly():
    proc = run_python(
        """
        import distaff, threading, gc
        def make():
            e = distaff.Engine(workers=2)
            e.submit(sum, [1, 2]).result()
        t = threading.Thread(target=make); t.start(); t.join()
        gc.collect()
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_rule8_tracers_follow_work_into_fibers():
    traced = []

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "traced_body":
            traced.append(threading.get_ident())
        return None

    with distaff.Engine() as eng:

        @eng.task()
        def traced_body():
            return 1

        sys.settrace(tracer)
        try:
            ex = traced_body.submit()
        finally:
            sys.settrace(None)
        ex.result()
    assert traced, "the body ran without the submitter's tracer"


def test_rule9_get_ident_names_the_worker_not_the_task():
    with distaff.Engine(workers=1) as eng:
        idents = eng.submit(lambda: [threading.get_ident() for _ in range(1)]).result()
        again = eng.submit(threading.get_ident).result()
        assert idents[0] == again != threading.get_ident()


def test_rule2_fibers_never_migrate_between_workers():
    with distaff.Engine(workers=2) as eng:

        @eng.task()
        def hop():
            seen = {threading.get_ident()}
            for _ in range(20):
                distaff.sleep(0.001)
                seen.add(threading.get_ident())
            return len(seen)

        assert all(e.result() == 1 for e in [hop.submit() for _ in range(20)])


def test_fork_child_gets_a_clear_error_or_a_new_engine():
    proc = run_python(
        """
        import os, distaff
        eng = distaff.Engine()
        @distaff.task()
        def f(x): return x + 1
        print(f(1), eng.submit(abs, -2).result(), flush=True)
        pid = os.fork()
        if pid == 0:
            try:
                eng.submit(abs, -3)
            except distaff.ShutdownError as e:
                print("child: clear error:", "fork" in str(e), flush=True)
            print("child: default engine works:", f(41), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("parent still works:", f(2), flush=True)
        """,
        timeout=60,
        args=("-W", "ignore::DeprecationWarning"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "child: clear error: True" in proc.stdout
    assert "child: default engine works: 42" in proc.stdout
    assert "parent still works: 3" in proc.stdout
