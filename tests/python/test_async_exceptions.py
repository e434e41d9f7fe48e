"""Asynchronous exceptions (cancel, timeout, signals) at a loop back-edge: the CPython quirk, shown to
behave the same in a task as on a plain thread.

Ordering is by events and gates; where a test must involve time (a delay, a deadline) its bounds
are generous and only one side is tight. docs/reliability.md names these tests.
"""

import ctypes
import sys
import threading
import time

import pytest

import distaff

from conftest import run_python, settle


# -- the CPython quirk: asynchronous exceptions at a loop back-edge ------------------------------------------

# cancel() and timeouts interrupt a body running bytecode with an asynchronous exception
# (PyThreadState_SetAsyncExc on the fiber's own thread state). CPython 3.11 and 3.12 deliver such an
# exception (and a signal handler's) at a loop's back-edge *after* jumping, and look the handler up from
# the instruction before the loop head (python/cpython#108214). When that instruction lies outside the
# enclosing `try` — a one-line `while True: x += 1` written as the first statement of the try body —
# the try's `except` and `finally` are skipped and the exception goes straight to the caller. Any
# instruction between `try:` and the loop head (the line NOP of a `while True:` on its own line, a
# statement before the loop) keeps it inside; a `with` block around the loop always runs its __exit__;
# a loop in a helper function is handled in the caller. 3.13 delivers it before jumping: no skip.
# The tests below show the same outcome on a plain thread (CPython alone) and in a distaff task.


class _Stop(Exception):
    pass


def _one_line_loop_first_in_try(log, started):
    started.set()
    x = 0
    try:
        while True: x += 1  # noqa: E701 - the layout is the point
    except BaseException:
        log.append("except")
        raise
    finally:
        log.append("finally")


def _loop_header_on_its_own_line(log, started):
    started.set()
    x = 0
    try:
        while True:
            x += 1
    except BaseException:
        log.append("except")
        raise
    finally:
        log.append("finally")


def _one_line_loop_after_a_statement(log, started):
    started.set()
    try:
        x = 0
        while True: x += 1  # noqa: E701
    finally:
        log.append("finally")


def _one_line_loop_in_a_with_block(log, started):
    class Cleanup:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            log.append("__exit__")

    started.set()
    x = 0
    with Cleanup():
        while True: x += 1  # noqa: E701


def _one_line_loop_in_a_helper(log, started):
    def spin():
        x = 0
        while True: x += 1  # noqa: E701

    started.set()
    try:
        spin()
    except BaseException:
        log.append("except")
        raise
    finally:
        log.append("finally")


_QUIRKY = sys.version_info[:2] in ((3, 11), (3, 12))
_PATTERNS = {
    # pattern: (what runs on 3.11/3.12, what runs on 3.13+); "outer" is the caller's except clause
    _one_line_loop_first_in_try: (["outer"], ["except", "finally", "outer"]),
    _loop_header_on_its_own_line: (["except", "finally", "outer"], ["except", "finally", "outer"]),
    _one_line_loop_after_a_statement: (["finally", "outer"], ["finally", "outer"]),
    _one_line_loop_in_a_with_block: (["__exit__", "outer"], ["__exit__", "outer"]),
    _one_line_loop_in_a_helper: (["except", "finally", "outer"], ["except", "finally", "outer"]),
}


def _on_plain_thread(pattern):
    log = []
    started = threading.Event()

    def target():
        try:
            pattern(log, started)
        except _Stop:
            log.append("outer")

    t = threading.Thread(target=target)
    t.start()
    assert started.wait(30)
    time.sleep(0.02)  # let it spin: the exception lands at a back-edge
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(_Stop))
    assert n == 1
    t.join(30)
    assert not t.is_alive()
    return log


def _in_a_task(engine, pattern):
    log = []
    started = threading.Event()

    @engine.task()
    def body():
        try:
            pattern(log, started)
        except distaff.CancelledError:
            log.append("outer")
            raise

    ex = body.submit()
    assert started.wait(30)
    time.sleep(0.02)
    assert ex.cancel()
    settle(engine)
    return log


@pytest.mark.parametrize("pattern", list(_PATTERNS), ids=lambda p: p.__name__.strip("_"))
def test_async_exception_at_a_loop_back_edge_on_a_plain_thread(pattern):
    """CPython's own behaviour, no distaff involved."""
    quirky, fixed = _PATTERNS[pattern]
    expected = quirky if _QUIRKY else fixed
    assert _on_plain_thread(pattern) == expected


@pytest.mark.parametrize("pattern", list(_PATTERNS), ids=lambda p: p.__name__.strip("_"))
def test_async_exception_at_a_loop_back_edge_in_a_task_matches_a_plain_thread(engine1, pattern):
    """cancel() of a task body behaves exactly like SetAsyncExc on a thread (3 runs each)."""
    for _ in range(3):
        assert _in_a_task(engine1, pattern) == _on_plain_thread(pattern)


def test_a_one_line_loop_that_waits_runs_its_handlers_when_cancelled(engine1):
    """The same one-line layout, but the loop suspends in a wait: the cancel lands while it is
    parked (the fiber holds the GIL while it runs bytecode), the wait raises, `finally` runs."""
    for _ in range(20):
        log = []
        started = threading.Event()

        @engine1.task()
        def body():
            started.set()
            try:
                while True: distaff.sleep(0.002)  # noqa: E701
            finally:
                log.append("finally")

        ex = body.submit()
        assert started.wait(30)
        time.sleep(0.005)
        assert ex.cancel()
        settle(engine1)
        assert log == ["finally"]


def test_signal_at_a_loop_back_edge_behaves_the_same_on_the_main_thread():
    """The quirk is CPython's: a KeyboardInterrupt from a signal handler skips the same handlers."""
    proc = run_python(
        """
        import sys, threading, _thread

        def spin():
            x = 0
            try:
                while True: x += 1
            finally:
                print("finally ran", flush=True)

        threading.Timer(0.05, _thread.interrupt_main).start()
        try:
            spin()
        except KeyboardInterrupt:
            print("caller caught KeyboardInterrupt", flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "caller caught KeyboardInterrupt" in proc.stdout
    assert ("finally ran" in proc.stdout) is (not _QUIRKY)
