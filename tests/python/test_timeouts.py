"""Execution timeouts (issue 4): where a timed-out body is (suspended, running Python, stuck in C,
async) and what the caller sees.

Ordering is by events and gates; where a test must involve time (a delay, a deadline) its bounds
are generous and only one side is tight. docs/reliability.md names these tests.
"""

import asyncio
import threading
import time

import pytest

import distaff

from conftest import CallbackLog, fiber_wait, settle


def test_timeout_error_is_a_builtin_timeout_error():
    assert issubclass(distaff.TimeoutError, TimeoutError)
    assert issubclass(distaff.TimeoutError, distaff.Error)


def test_timeout_wakes_a_body_parked_in_sleep_at_once(engine):
    woke = []

    @engine.task(timeout=0.1)
    def sleeper():
        try:
            distaff.sleep(60)
        except distaff.TimeoutError as e:
            woke.append(e)
            raise
        finally:
            woke.append("finally")

    t0 = time.monotonic()
    ex = sleeper.submit()
    with pytest.raises(distaff.TimeoutError, match="deadline"):
        ex.result(timeout=30)
    elapsed = time.monotonic() - t0
    settle(engine)
    assert 0.09 <= elapsed < 10  # the deadline, not the 60 s sleep
    assert isinstance(woke[0], distaff.TimeoutError) and woke[1] == "finally"
    assert ex.state == "failed" and ex.description["timeout"] == 0.1


def test_timeout_wakes_a_body_parked_in_result_and_cancels_its_child(engine, new_gate):
    gate = new_gate()
    child_ex = []
    woke = []

    @engine.task()
    def child():
        fiber_wait(gate, timeout=60)
        return "child"

    @engine.task(timeout=0.1)
    def parent():
        c = child.submit()
        child_ex.append(c)
        try:
            return c.result()
        except (distaff.TimeoutError, distaff.CancelledError) as e:
            # Its own TimeoutError (test_timeout_while_parked_in_result_raises_timeout_error_in_the_body
            # checks the type; here: that it is woken at once at all).
            woke.append(e)
            raise

    t0 = time.monotonic()
    with pytest.raises(distaff.TimeoutError):
        parent.submit().result(timeout=30)
    (c,) = child_ex
    with pytest.raises(distaff.CancelledError):
        c.result(timeout=30)
    settle(engine)
    assert time.monotonic() - t0 < 10  # woken at the deadline, not when the 60 s gate times out
    assert len(woke) == 1


def test_timeout_while_parked_in_result_raises_timeout_error_in_the_body(engine1):
    """A body parked on a child when its own deadline passes sees its own distaff.TimeoutError, not
    the CancelledError of the child that the timeout cancels at the same moment (30 rounds)."""

    gate = threading.Event()
    seen = []

    @engine1.task()
    def child():
        fiber_wait(gate, timeout=60)

    @engine1.task(timeout=0.02)
    def parent():
        try:
            child.submit().result()
        except BaseException as e:
            seen.append(type(e))
            raise

    try:
        for _ in range(30):
            with pytest.raises(distaff.TimeoutError):
                parent()
    finally:
        gate.set()
    settle(engine1)
    assert seen == [distaff.TimeoutError] * 30


def test_timeout_interrupts_a_busy_python_loop(engine1):
    """A body running bytecode gets distaff.TimeoutError at a bytecode boundary; the worker is freed."""
    seen = []

    @engine1.task(timeout=0.1)
    def spin():
        x = 0
        try:
            while True:
                x = abs(x + 1)  # a call in the loop: see test_async_exception_at_a_loop_back_edge_*
        except distaff.TimeoutError:
            seen.append("interrupted")
            raise

    @engine1.task()
    def after():
        return "worker free"

    with pytest.raises(distaff.TimeoutError):
        spin.submit().result(timeout=30)
    assert after.submit().result(timeout=30) == "worker free"
    assert seen == ["interrupted"]


def test_timeout_of_a_body_stuck_in_c_marks_it_failed_and_discards_its_result(engine, new_gate):
    """threading.Event.wait is C code holding the worker: the execution fails at the deadline; when
    the C call returns, the pending TimeoutError is raised at the body's next bytecode."""
    gate = new_gate()
    entered = threading.Event()
    after_c_call = []
    log = CallbackLog()

    @engine.task(timeout=0.1)
    def stuck():
        entered.set()
        gate.wait(60)  # C code: no bytecode boundary until it returns
        after_c_call.append("ran on")
        return "late result"

    ex = log.watch(stuck.submit())
    assert entered.wait(30)
    with pytest.raises(distaff.TimeoutError):
        ex.result(timeout=30)
    assert ex.done() and ex.state == "failed" and not gate.is_set()  # failed while still stuck
    assert engine.stats()["fibers"] >= 1  # ... and the body does still hold its fiber
    gate.set()
    settle(engine)
    with pytest.raises(distaff.TimeoutError):
        ex.result()
    assert after_c_call == []  # the queued async TimeoutError fired right after the C call
    log.wait_for(1)
    assert log.calls == {ex.id: ["failed"]}


def test_timeout_of_an_async_body_cancels_its_coroutine(engine):
    """An async def body's coroutine is cancelled on its loop at the deadline (its finally runs)."""
    cleanup = threading.Event()

    @engine.task(timeout=0.1)
    async def slow():
        try:
            await asyncio.sleep(60)
        finally:
            cleanup.set()

    with pytest.raises(distaff.TimeoutError):
        slow.submit().result(timeout=30)
    assert cleanup.wait(30)


def test_per_call_timeout_override(engine):
    @engine.task()
    def no_timeout(t):
        distaff.sleep(t)
        return "slept"

    @engine.task(timeout=0.05)
    def short_timeout(t):
        distaff.sleep(t)
        return "slept"

    with pytest.raises(distaff.TimeoutError):
        no_timeout.options(timeout=0.05).submit(30).result(timeout=30)
    assert short_timeout.options(timeout=None).submit(0.2).result(timeout=30) == "slept"
    assert short_timeout.options(timeout=10).submit(0.2).result(timeout=30) == "slept"
    with pytest.raises(distaff.TimeoutError):
        short_timeout.submit(30).result(timeout=30)
    # options() returns a copy: the task itself keeps its own timeout.
    assert no_timeout.submit(0).result(timeout=30) == "slept"
    assert short_timeout.timeout == 0.05 and no_timeout.timeout is None


def test_timeout_counts_from_the_start_not_the_submit(engine1, new_gate):
    """A queued execution's deadline is armed when its body starts."""
    gate = new_gate()

    @engine1.task()
    def blocker():
        gate.wait(60)

    @engine1.task(timeout=0.2)
    def quick():
        return "ok"

    b = blocker.submit()
    q = quick.submit()  # queued behind blocker on the only worker
    time.sleep(0.4)  # longer than quick's timeout: it must not count while queued
    gate.set()
    b.result(timeout=30)
    assert q.result(timeout=30) == "ok"


def test_result_wait_timeout_is_not_the_execution_timeout(engine, new_gate):
    """ex.result(timeout=) raises the builtin TimeoutError and leaves the execution running."""
    gate = new_gate()

    @engine.task()
    def slow():
        fiber_wait(gate, timeout=60)
        return 1

    ex = slow.submit()
    with pytest.raises(TimeoutError) as info:
        ex.result(timeout=0.05)
    assert not isinstance(info.value, distaff.TimeoutError)
    assert not ex.done()
    gate.set()
    assert ex.result(timeout=30) == 1


@pytest.mark.parametrize("wait", ["Event.wait", "Lock.acquire", "Semaphore.acquire", "as_completed"])
def test_every_wait_of_a_timed_out_body_raises_its_timeout_error_not_a_false(wait):
    """Outsider finding: after a body's timeout= fired, Event.wait(t) and acquire(timeout=t)
    returned False at once (the timed-out body, finished while it unwinds, was taken for a
    done-callback whose waits only their own timeout ends), so `while not ev.wait(1): pass` spun at
    100% CPU for good. Each later wait raises (concepts.md): the body's distaff.TimeoutError in
    clean-up (a handler of it), distaff.Interrupted once the body left the handler and ran on
    (session 12: a loop that swallowed the TimeoutError of each wait never ended)."""
    from conftest import run_python

    proc = run_python(
        f"""
import time
import distaff

ev, lock, sem = distaff.Event(), distaff.Lock(), distaff.Semaphore(0)
lock.acquire()
other = distaff.Engine().submit(ev.wait)   # as_completed's member: unfinished until the end
polls = []

def wait_once():
    kind = {wait!r}
    if kind == "Event.wait":
        return ev.wait(1.0)
    if kind == "Lock.acquire":
        return lock.acquire(timeout=1.0)
    if kind == "Semaphore.acquire":
        return sem.acquire(timeout=1.0)
    for _ in distaff.as_completed([other], timeout=1.0):
        return True

@distaff.task(timeout=0.2)
def poller():
    try:
        distaff.sleep(30)  # the timeout fires here; the body swallows it and polls on
    except distaff.TimeoutError:
        try:
            wait_once()    # clean-up: its waits raise the execution's own error
        except BaseException as e:
            print("in the handler the wait raised:", type(e).__name__, flush=True)
    while True:
        try:
            if wait_once():
                return "woken"
        except BaseException as e:
            print("after the handler the wait raised:", type(e).__name__, flush=True)
            raise
        polls.append(None)
        if len(polls) > 1000:
            return "spun"

ex = poller.submit()
t0 = time.monotonic()
try:
    print("returned", ex.result())
except distaff.TimeoutError:
    pass
assert ex.done() and type(ex.exception()) is distaff.TimeoutError, ex
deadline = time.monotonic() + 20
while distaff.default_engine().stats()["fibers"] and time.monotonic() < deadline:
    time.sleep(0.01)
print("fibers", distaff.default_engine().stats()["fibers"], "polls", len(polls))
ev.set(); other.result()
""",
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "fibers 0 polls 0" in proc.stdout, (proc.stdout, proc.stderr)
    assert "in the handler the wait raised: TimeoutError" in proc.stdout, (proc.stdout, proc.stderr)
    assert "after the handler the wait raised: Interrupted" in proc.stdout, (proc.stdout, proc.stderr)
