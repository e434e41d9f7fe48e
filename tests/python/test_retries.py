"""Retries and fallbacks (issue 4): attempts, backoff delays, retry_on filters, fallbacks, and
how they meet timeouts, cancellation and async bodies.

Ordering is by events and gates; where a test must involve time (a delay, a deadline) its bounds
are generous and only one side is tight. docs/reliability.md names these tests.
"""

import asyncio
import threading
import time

import pytest

import distaff
from distaff import RetryPolicy

from conftest import run_python, settle


def test_retries_until_success_record_each_attempt(engine):
    calls = []

    @engine.task(retries=3)
    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return "ok"

    ex = flaky.submit()
    assert ex.result(timeout=30) == "ok"
    d = ex.description
    assert len(calls) == 3
    assert d["attempts"] == 3
    assert d["attempt_errors"] == [
        {"attempt": 1, "error": "ConnectionError('try 1')", "type": "ConnectionError"},
        {"attempt": 2, "error": "ConnectionError('try 2')", "type": "ConnectionError"},
    ]


def test_retries_exhausted_raise_the_last_error(engine):
    calls = []

    @engine.task(retries=2)
    def always():
        calls.append(1)
        raise ValueError(f"attempt {len(calls)}")

    ex = always.submit()
    with pytest.raises(ValueError, match="attempt 3"):
        ex.result(timeout=30)
    assert len(calls) == 3  # 1 + retries
    assert ex.description["attempts"] == 3
    assert [e["attempt"] for e in ex.description["attempt_errors"]] == [1, 2, 3]


def test_no_retries_by_default(engine):
    calls = []

    @engine.task()
    def once():
        calls.append(1)
        raise ValueError("once")

    ex = once.submit()
    with pytest.raises(ValueError):
        ex.result(timeout=30)
    assert calls == [1]
    assert "attempts" not in ex.description  # no retry machinery on the plain path


def test_retry_policy_delay_follows_backoff_and_max_delay():
    p = RetryPolicy.make(5, 0.5, 2.0, 3.0, False, (Exception,), None)
    assert [p.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    flat = RetryPolicy.make(3, 0.25, 1.0, None, False, (Exception,), None)
    assert [flat.delay(n) for n in range(3)] == [0.25, 0.25, 0.25]
    with pytest.raises(ValueError):  # an outsider's find: delay(-1) was 1.0
        p.delay(-1)
    for bad in (0.5, "1", None, True):
        with pytest.raises(TypeError):
            p.delay(bad)


def test_retry_policy_jitter_scales_the_delay_by_half_to_one_and_a_half(monkeypatch):
    p = RetryPolicy.make(3, 1.0, 2.0, None, True, (Exception,), None)
    monkeypatch.setattr("random.random", lambda: 0.0)
    assert [p.delay(n) for n in range(3)] == [0.5, 1.0, 2.0]
    monkeypatch.setattr("random.random", lambda: 0.999)
    assert [p.delay(n) for n in range(3)] == pytest.approx([1.499, 2.998, 5.996])


def test_retry_policy_max_delay_caps_the_jittered_delay(monkeypatch):
    # concepts.md: no delay exceeds max_delay, jitter included
    p = RetryPolicy.make(3, 0.01, 2.0, 0.02, True, (Exception,), None)
    monkeypatch.setattr("random.random", lambda: 0.999)
    assert [p.delay(n) for n in range(4)] == pytest.approx([0.01499, 0.02, 0.02, 0.02])
    monkeypatch.setattr("random.random", lambda: 0.0)
    assert [p.delay(n) for n in range(4)] == pytest.approx([0.005, 0.01, 0.01, 0.01])  # still spread


def test_retry_sleeps_are_the_policy_delays(engine, monkeypatch):
    """The fiber sleeps exactly policy.delay(n) between attempts (recorded by patching the sleep)."""
    slept = []
    real_sleep = distaff._core.sleep

    def recording_sleep(seconds):
        slept.append(seconds)
        real_sleep(0)

    monkeypatch.setattr(distaff._core, "sleep", recording_sleep)

    @engine.task(retries=4, retry_delay=0.5, backoff=3.0, max_delay=2.0)
    def always():
        raise OSError("down")

    with pytest.raises(OSError):
        always.submit().result(timeout=30)
    assert slept == [0.5, 1.5, 2.0, 2.0]


def test_retry_delays_are_observed_between_attempt_timestamps(engine):
    """Real time, generous bounds: each gap is at least ~the delay and far below a second."""
    stamps = []

    @engine.task(retries=3, retry_delay=0.04, backoff=2.0, max_delay=0.1)
    def always():
        stamps.append(time.monotonic())
        raise OSError("down")

    with pytest.raises(OSError):
        always.submit().result(timeout=30)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert len(gaps) == 3
    for gap, expected in zip(gaps, [0.04, 0.08, 0.1]):
        assert expected * 0.9 <= gap < expected + 2.0, gaps


def test_retry_on_filters_which_errors_are_retried(engine):
    calls = []

    @engine.task(retries=5, retry_on=KeyError)
    def picky(kinds):
        kind = kinds[len(calls)]
        calls.append(kind)
        raise kind("boom")

    with pytest.raises(ValueError):  # not retryable: the first attempt is the last
        picky([ValueError])
    assert calls == [ValueError]

    calls.clear()
    ex = picky.submit([KeyError, KeyError, TypeError])
    with pytest.raises(TypeError):
        ex.result(timeout=30)
    assert calls == [KeyError, KeyError, TypeError]
    assert ex.description["attempts"] == 3

    calls.clear()

    @engine.task(retries=2, retry_on=(KeyError, ValueError))
    def tuple_form():
        calls.append(1)
        raise (KeyError if len(calls) == 1 else ValueError)("x")

    with pytest.raises(ValueError):
        tuple_form()
    assert len(calls) == 3


def test_fallback_receives_arguments_and_final_exception(engine):
    seen = []

    def fallback(a, b, exc, *, c):
        seen.append((a, b, c, exc))
        return f"fallback:{a}:{b}:{c}"

    attempts = []

    @engine.task(retries=2, fallback=fallback)
    def fails(a, b, *, c):
        attempts.append(1)
        raise RuntimeError(f"attempt {len(attempts)}")

    assert fails(1, "two", c=3.0) == "fallback:1:two:3.0"
    (a, b, c, exc), = seen
    assert (a, b, c) == (1, "two", 3.0)
    assert isinstance(exc, RuntimeError) and str(exc) == "attempt 3"  # the final one


def test_fallback_gets_exc_as_a_keyword(engine):
    # Issue 10: exc is passed by keyword, so a keyword-only exc works and positional order is free.
    def kw_only(x, *, exc):
        return ("kw", x, type(exc).__name__)

    def var_kw(x, **kw):
        return ("var", x, type(kw["exc"]).__name__)

    @engine.task(fallback=kw_only)
    def a(x):
        raise KeyError(x)

    @engine.task(fallback=var_kw)
    def b(x):
        raise KeyError(x)

    @engine.task(fallback=lambda x, *, exc: ("async", x, type(exc).__name__))
    async def c(x):
        raise KeyError(x)

    assert a(1) == ("kw", 1, "KeyError")
    assert b(2) == ("var", 2, "KeyError")
    assert c.submit(3).result(timeout=30) == ("async", 3, "KeyError")


def test_fallback_that_cannot_take_exc_is_refused_at_decoration(engine):
    with pytest.raises(TypeError, match="must accept the keyword argument exc="):
        engine.task(fallback=lambda x: x)(lambda x: x)
    with pytest.raises(TypeError, match="must accept the keyword argument exc="):

        def positional_only(x, exc, /):
            return x

        engine.task(fallback=positional_only)(lambda x: x)
    with pytest.raises(ValueError, match="clashes with the parameter 'exc'"):

        @engine.task(fallback=lambda exc: None)
        def has_exc(exc):
            return exc


def test_fallback_without_retries_and_not_on_success(engine):
    @engine.task(fallback=lambda x, exc: ("fb", x, type(exc).__name__))
    def once(x):
        if x < 0:
            raise ArithmeticError
        return x

    assert once(5) == 5
    assert once(-1) == ("fb", -1, "ArithmeticError")


def test_fallback_is_not_called_for_errors_outside_retry_on(engine):
    called = []

    @engine.task(retries=1, retry_on=KeyError, fallback=lambda exc: called.append(exc))
    def wrong_kind():
        raise ValueError("not retryable")

    with pytest.raises(ValueError, match="not retryable"):
        wrong_kind()
    assert called == []


def test_a_failing_fallback_fails_the_execution_with_its_error(engine):
    def fallback(exc):
        raise LookupError("fallback failed too")

    @engine.task(retries=1, fallback=fallback)
    def fails():
        raise RuntimeError("body failed")

    with pytest.raises(LookupError, match="fallback failed too") as info:
        fails()
    assert isinstance(info.value.__context__, RuntimeError)


def test_retry_delay_does_not_hold_the_worker(engine1):
    """With one worker, a task queued during attempt 1 runs during the retry delay."""
    other_ran = threading.Event()
    seen = []

    @engine1.task()
    def other():
        other_ran.set()

    @engine1.task(retries=1, retry_delay=0.2)
    def flaky():
        if not seen:
            seen.append("attempt 1")
            other.submit()  # queued behind us: the only worker is running this fiber
            raise ConnectionError("first attempt fails")
        # Attempt 2: `other` can only have run if the delay gave the worker away.
        seen.append("attempt 2")
        return other_ran.is_set()

    assert flaky.submit().result(timeout=30) is True
    assert seen == ["attempt 1", "attempt 2"]


def test_cancel_during_a_retry_delay_stops_retrying(engine):
    attempts = []
    failed_once = threading.Event()

    @engine.task(retries=5, retry_delay=60)
    def flaky():
        attempts.append(1)
        failed_once.set()
        raise ConnectionError("down")

    ex = flaky.submit()
    assert failed_once.wait(30)
    assert ex.cancel() is True
    with pytest.raises(distaff.CancelledError):
        ex.result(timeout=30)
    settle(engine)
    assert attempts == [1]


def test_timeout_spans_all_attempts_and_skips_the_fallback(engine):
    """timeout= bounds the whole execution (attempts and delays), not each attempt."""
    attempts = []
    fallback_calls = []

    @engine.task(timeout=0.3, retries=100, retry_delay=0.05, fallback=lambda exc: fallback_calls.append(exc))
    def always():
        attempts.append(1)
        raise OSError("down")

    ex = always.submit()
    with pytest.raises(distaff.TimeoutError):
        ex.result(timeout=30)
    settle(engine)
    assert 1 <= len(attempts) < 101 and fallback_calls == []


def test_async_task_retries_and_fallback(engine):
    calls = []

    async def fallback(x, exc):  # a coroutine function is awaited
        await asyncio.sleep(0)
        return ("fallback", x, str(exc))

    @engine.task(retries=2, retry_delay=0.01, fallback=fallback)
    async def flaky(x):
        calls.append(x)
        await asyncio.sleep(0)
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        raise ConnectionError("final")

    assert flaky.submit(7).result(timeout=30) == ("fallback", 7, "final")
    assert calls == [7, 7, 7]


def test_async_task_attempts_are_visible_in_the_description(engine):
    calls = []

    @engine.task(retries=2)
    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return "ok"

    ex = flaky.submit()
    assert ex.result(timeout=30) == "ok"
    assert ex.description.get("attempts") == 3
    assert len(ex.description.get("attempt_errors", [])) == 2


# -- a body that returns an Execution (forwarding): the policy applies to the forwarded outcome ----


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_retries_and_fallback_apply_to_a_forwarded_failure(engine, is_async):
    # Outsider finding: `return failing.submit()` skipped retries= and fallback= (ValueError after
    # one attempt), where `return failing()` gave the fallback. The forwarded execution's failure is
    # now this attempt's: the body runs again, then the fallback answers. Failed before the fix.
    runs = []

    @engine.task
    def failing(tag):
        runs.append(tag)
        raise ValueError(f"v{len(runs)}")

    if is_async:
        @engine.workflow(retries=2, fallback=lambda *, exc: ("fallback", str(exc)))
        async def w():
            return failing.submit(len(runs))
    else:
        @engine.workflow(retries=2, fallback=lambda *, exc: ("fallback", str(exc)))
        def w():
            return failing.submit(len(runs))

    ex = w.submit()
    assert ex.result(timeout=30) == ("fallback", "v3")
    assert runs == [0, 1, 2], "the body ran once per attempt, each forwarding to a fresh call"
    d = ex.description
    assert d["attempts"] == 3
    assert [e["error"] for e in d["attempt_errors"]] == ["ValueError('v1')", "ValueError('v2')", "ValueError('v3')"]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_forwarded_failure_is_retried_until_it_succeeds_or_raises_the_last_error(engine, is_async):
    runs = []

    @engine.task(name="flaky")
    def flaky(ok_on):
        runs.append(1)
        if len(runs) < ok_on:
            raise ConnectionError(f"try {len(runs)}")
        return len(runs)

    if is_async:
        @engine.task(retries=2, name="fwd")
        async def fwd(ok_on):
            return flaky.submit(ok_on)
    else:
        @engine.task(retries=2, name="fwd")
        def fwd(ok_on):
            return flaky.submit(ok_on)

    assert fwd.submit(2).result(timeout=30) == 2
    runs.clear()
    ex = fwd.submit(10)
    with pytest.raises(ConnectionError, match="try 3"):
        ex.result(timeout=30)
    assert ex.description["attempts"] == 3 and len(runs) == 3
    notes = ex.exception().__notes__
    assert any("'flaky'" in n for n in notes) and any(f"'fwd' (execution {ex.id})" in n for n in notes), notes


def test_a_cancelled_forward_under_a_retry_policy_cancels_without_retrying(engine, new_gate):
    gate, started = new_gate(), threading.Event()
    box = {}

    @engine.task
    def leaf():
        from conftest import fiber_wait

        fiber_wait(gate)
        return 1

    @engine.task(retries=3, fallback=lambda *, exc: "fallback")
    def fwd():
        box["leaf"] = leaf.submit()
        started.set()
        return box["leaf"]

    ex = fwd.submit()
    assert started.wait(30)
    assert box["leaf"].cancel()
    with pytest.raises(distaff.CancelledError):
        ex.result(timeout=30)
    assert ex.cancelled() and ex.description["attempts"] == 1


def test_a_forwarding_execution_adds_its_note_to_the_error(engine):
    # concepts.md promises a note for each task or workflow an error passed through; a workflow that
    # returned the failing Execution added none (outsider finding; failed before the fix).
    @engine.task(name="fails")
    def fails():
        raise KeyError("k")

    @engine.workflow(name="fwd")
    def fwd():
        return fails.submit()

    @engine.workflow(name="fwd2")
    def fwd2():
        return fwd.submit()

    ex = fwd2.submit()
    err = ex.exception(timeout=30)
    assert isinstance(err, KeyError)
    notes = [n for n in err.__notes__ if n.startswith("distaff:")]
    assert len(notes) == 3, notes
    assert "task 'fails'" in notes[0] and "workflow 'fwd'" in notes[1] and f"workflow 'fwd2' (execution {ex.id})" in notes[2]
    with pytest.raises(KeyError) as info:
        fwd()
    assert [n.split(" (")[0] for n in info.value.__notes__] == [
        "distaff: raised in task 'fails'", "distaff: raised in workflow 'fwd'"]


def test_an_async_body_that_forwards_adds_its_note_and_an_executor_body_noted_once(engine):
    @engine.task(name="fails")
    def fails():
        raise KeyError("k")

    @engine.workflow(name="afwd")
    async def afwd():
        return fails.submit()

    @engine.task(name="araises")
    async def araises():
        raise KeyError("own")

    ex = afwd.submit()
    err = ex.exception(timeout=30)
    notes = [n.split(" (")[0] for n in err.__notes__]
    assert notes == ["distaff: raised in task 'fails'", "distaff: raised in workflow 'afwd'"], err.__notes__
    own = araises.submit().exception(timeout=30)
    assert [n.split(" (")[0] for n in own.__notes__] == ["distaff: raised in task 'araises'"], own.__notes__


def test_an_async_body_under_retries_returning_a_cycle_gets_deadlock_error():
    # With a policy an async body awaits the Execution it returned; one that waits on this very
    # execution would never finish. The cycle is refused as a plain forward refuses it.
    code = r"""
    import distaff

    @distaff.task(wait=True)
    def dep(a):
        return a.result()

    @distaff.task(retries=1, fallback=lambda *, exc: type(exc).__name__)
    async def acyc():
        return dep.submit(distaff.current_execution())

    print(acyc.submit().result(timeout=30))
    """
    r = run_python(code, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "DeadlockError", (r.stdout, r.stderr)
