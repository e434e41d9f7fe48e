"""Retries and fallbacks (docs/reliability.md): the policy a task is decorated with and the retry
driver that applies it around a sync body on its fiber. Bodies that run elsewhere — ``async def``
bodies on an event loop, bodies on executors — apply the same policy as their outcomes arrive
(_elsewhere.Elsewhere)."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

from . import _core, _sync
from . import _validate as _v

_Execution = _core.Execution


class RetryPolicy:
    """How a failed attempt is retried: ``retries`` more attempts, the n-th (from 0) after
    ``min(retry_delay * backoff**n, max_delay)`` seconds, times a random factor in [0.5, 1.5) with
    ``jitter``. Only exceptions matching ``retry_on`` are retried. When every attempt failed,
    ``fallback(*args, **kwargs, exc=error)`` (if given) provides the result: the call's own
    arguments, and the final error as the keyword argument ``exc``."""

    __slots__ = ("retries", "retry_delay", "backoff", "max_delay", "jitter", "retry_on", "fallback")

    @classmethod
    def make(cls, retries, retry_delay, backoff, max_delay, jitter, retry_on, fallback) -> "RetryPolicy | None":
        _v.count(retries, "retries")
        _v.flag(jitter, "jitter")
        retry_delay = _v.seconds(retry_delay, "retry_delay", _v.DELAY)
        backoff = _v.seconds(backoff, "backoff", _v.FACTOR)
        max_delay = _v.seconds(max_delay, "max_delay", _v.CAP)
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            raise TypeError("retry_on must be an exception class or a tuple of them")
        if fallback is not None and not callable(fallback):
            raise TypeError("fallback must be callable")
        if retries == 0 and fallback is None:
            return None
        p = cls()
        p.retries, p.retry_delay, p.backoff, p.max_delay = retries, float(retry_delay), float(backoff), max_delay
        p.jitter, p.retry_on, p.fallback = jitter, retry_on, fallback
        return p

    def delay(self, n: int) -> float:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"delay(n): n is the retry's number (an int from 0), not {type(n).__name__}")
        if n < 0:
            raise ValueError(f"delay(n): n is the retry's number, from 0 (got {n})")
        d = self.retry_delay
        if d and self.backoff != 1.0:
            try:
                d *= self.backoff**n
            except OverflowError:  # backoff=1e308: the delay is as long as a float gets
                d = math.inf
        cap = self.max_delay
        if cap is not None:
            d = min(d, cap)
        if self.jitter:
            import random  # on first use: with hashlib, 0.5 MiB of RSS at import (issue 15)

            d *= 0.5 + random.random()
            if cap is not None:  # still a cap (delays at it spread over [cap / 2, cap])
                d = min(d, cap)
        return d


def _record_attempt(me: Any, attempt: int, exc: BaseException) -> None:
    if me is None:
        return
    errors = me.description.get("attempt_errors", [])
    try:
        text = repr(exc)
    except Exception:  # an exception whose repr fails must not replace the body's error
        text = f"<{type(exc).__qualname__} (repr failed)>"
    errors = errors + [{"attempt": attempt, "error": text, "type": type(exc).__qualname__}]
    me._annotate("attempt_errors", errors)


# The retry driver of a body on its fiber: the decisions between attempts.
_RAISE = object()  # no more attempts: the caller re-raises (inside its except block: the traceback stays)
_FALLBACK = object()  # no more attempts: fallback(*args, **kwargs, exc=error) gives the result


class _Attempts:
    """One call's attempts: numbers them on the execution (``description["attempts"]``), records
    each failure (``attempt_errors``) and says what follows a failure: a delay before the next
    attempt, _FALLBACK or _RAISE."""

    __slots__ = ("policy", "me", "n")

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.me = _core.current_execution()
        self.n = 0

    def begin(self) -> None:
        self.n += 1
        if self.me is not None:
            self.me._annotate("attempts", self.n)

    def failed(self, exc: BaseException) -> Any:
        me, policy = self.me, self.policy
        if me is not None and me.done():  # cancelled or timed out: no more attempts
            return _RAISE
        _record_attempt(me, self.n, exc)
        if self.n > policy.retries:
            return _FALLBACK if policy.fallback is not None else _RAISE
        return policy.delay(self.n - 1)


def _retrying(fn: Callable, policy: RetryPolicy) -> Callable:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        attempts = _Attempts(policy)
        paused = None  # the concurrency slot released while waiting for a returned Execution
        while True:
            if paused is not None:  # the next attempt runs the body again: it takes a slot first
                paused.resume()
                paused = None
            attempts.begin()
            try:
                r = fn(*args, **kwargs)
                if r.__class__ is not _Execution and not isinstance(r, _Execution):
                    return r
                # Forwarding under a policy: the returned execution's outcome is this attempt's
                # (a failure is retried, then falls back, as if the body had called it). So the
                # fiber waits for it here; a concurrency slot is not held meanwhile.
                paused = _sync._held_slots.get(attempts.me.id) if attempts.me is not None else None
                if paused is not None:
                    paused.pause()
                try:
                    return r.result()
                except BaseException:
                    me = attempts.me
                    if r.done() and r.cancelled() and not (me is not None and me.done()):
                        return r  # it was cancelled: so is this execution, as a plain forward would be
                    raise
            except policy.retry_on as exc:
                step = attempts.failed(exc)
                if step is _RAISE:
                    raise
                if step is _FALLBACK:
                    if paused is not None:  # the fallback runs in the body's place: with a slot
                        paused.resume()
                        paused = None
                    return policy.fallback(*args, **kwargs, exc=exc)
            _core.sleep(step)  # suspends the fiber, not the thread

    return call
