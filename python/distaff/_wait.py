"""Wait-sets: wait, as_completed, gather, join — over the C++ WaitSet (one registration per
member, one wake-up for the waiter, whether a fiber, a thread or an asyncio loop)."""

from __future__ import annotations

import time
from collections import namedtuple
from typing import Any, Iterable

from . import _aio, _core, _progress, _validate
from ._errors import CancelledError, DependencyError
from ._errors import TimeoutError as _DistaffTimeout

Execution = _core.Execution

FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"
_ALL = int(_core.WaitFor.ALL_COMPLETED)
_FIRST_EXCEPTION = int(_core.WaitFor.FIRST_EXCEPTION)
_FIRST_COMPLETED = int(_core.WaitFor.FIRST_COMPLETED)
_COMBINE_CANCELLED = _core.COMBINE_CANCELLED  # a finalizer's answer: the handle ends cancelled
_EXHAUSTED = _core.COMPLETION_EXHAUSTED  # completion_next: every member was returned
_MODES = {
    ALL_COMPLETED: _ALL,
    FIRST_COMPLETED: int(_core.WaitFor.FIRST_COMPLETED),
    FIRST_EXCEPTION: _FIRST_EXCEPTION,
}

DoneAndNotDone = namedtuple("DoneAndNotDone", "done not_done")

_aio.bind(globals(), "_running_loop")  # asyncio's _get_running_loop once imported
_wait_timeout = _validate.wait_timeout
_RAISE: Any = object()


class JoinError(DependencyError):
    """A member of ``join()`` failed; ``member`` names it and ``__cause__`` is its exception."""

    def __init__(self, message: str, member: str) -> None:
        super().__init__(message)
        self.member = member


def _members(execs: Iterable, what: str) -> tuple:
    """The distinct Executions of ``execs`` in first-seen order, and the same as a set.

    Loops over the members run in C (set, map): on 100k executions the Python loop of
    isinstance() calls and the ordered de-duplication through a dict cost ~0.15 µs per member
    (bench/ W1, ~10% of a no-op task end to end) and a dict of transient memory."""
    if isinstance(execs, Execution):
        raise TypeError(f"{what}() takes an iterable of Executions, not a single Execution")
    out = list(execs)
    members = set(out)
    if len(members) != len(out):  # duplicates: keep the first of each, in order
        out = list(dict.fromkeys(out))
    if len(set(map(type, out))) > 1 or (out and out[0].__class__ is not Execution):
        for e in out:
            if not isinstance(e, Execution):
                raise TypeError(f"{what}() takes Executions, got {type(e).__name__}")
    return out, members


def _executions(execs: Iterable, what: str) -> list:
    return _members(execs, what)[0]


def _mode(return_when: str) -> int:
    try:
        return _MODES[return_when]
    except (KeyError, TypeError):
        raise ValueError(f"return_when must be one of {', '.join(_MODES)}, not {return_when!r}") from None


def _split(execs: list) -> DoneAndNotDone:
    done = {e for e in execs if e.done()}
    return DoneAndNotDone(done, {e for e in execs if e not in done})


def wait(execs: Iterable, timeout: float | None = None, return_when: str = ALL_COMPLETED, *, progress: bool = False):
    """Waits for executions like ``concurrent.futures.wait``; returns ``(done, not_done)`` sets.

    Suspends a fiber, blocks a thread; inside a running asyncio loop it returns an awaitable
    instead (``done, pending = await distaff.wait(execs)``), never blocking the loop.
    ``progress=True``: a live display of how many are done on stderr while it waits
    (docs/observability.md, "Progress").
    """
    execs, members = _members(execs, "wait")
    mode = _mode(return_when)
    timeout = _wait_timeout(timeout)
    if progress is not False and _progress.wanted(progress, "wait"):
        if _running_loop() is not None:
            return _wait_async_progress(execs, timeout, mode)
        with _progress.track(execs, "wait") as shown:
            out = _wait_sync(execs, timeout, mode)
            shown.outcome = _wait_outcome(out, mode)
            return out
    if _running_loop() is not None:
        return _wait_async(execs, timeout, mode)
    satisfied, _ = _core.wait_set(execs, timeout, mode)
    if satisfied and mode == _ALL:  # ALL_COMPLETED reached: no per-member done() calls (bench/ W1)
        return DoneAndNotDone(members, set())
    return _split(execs)


def _wait_sync(execs: list, timeout: float | None, mode: int) -> DoneAndNotDone:
    satisfied, _ = _core.wait_set(execs, timeout, mode)
    if satisfied and mode == _ALL:
        return DoneAndNotDone(set(execs), set())
    return _split(execs)


async def _wait_async_progress(execs: list, timeout: float | None, mode: int):
    with _progress.track(execs, "wait") as shown:
        out = await _wait_async(execs, timeout, mode)
        shown.outcome = _wait_outcome(out, mode)
        return out


def _wait_outcome(out: DoneAndNotDone, mode: int) -> str:
    if not out.not_done:
        return "done"
    if mode == 1 and out.done:
        return "first completed"
    if mode == 2 and any(not e.cancelled() and e.exception() is not None for e in out.done):
        return "first exception"
    return "timed out"


async def _wait_async(execs: list, timeout: float | None, mode: int):
    # One C++ wait-set whose condition posts to this loop once; a wait that times out or is
    # cancelled releases it, which removes its callback from every member still running (a waiter
    # that gives up costs no memory on the executions it waited for: docs/reliability.md).
    if execs:
        import asyncio

        from . import _asyncio as _asyncio_mod
        from ._asyncio import _inbox_for

        body = _asyncio_mod.awaiting_body() if _asyncio_mod.awaiting_body is not None else None
        edge = None
        if body is not None:  # an async body's wait that closes a cycle: DeadlockError (wait_sets.md)
            _core.check_waits(body.me, execs, mode)
            edge = _core.wait_edge(body.promise, execs, mode)  # in the wait graph while it waits
        loop = asyncio.get_running_loop()
        inbox = _inbox_for(loop)
        fut = loop.create_future()
        handle = _core.ready(execs, mode, lambda: inbox.post_call(_set_done, fut))
        try:
            await asyncio.wait((fut,), timeout=timeout)
        finally:
            edge = None  # noqa: F841 (dropping the token ends the edge)
            _core.release(handle)
            fut.cancel()
    return _split(execs)


def _set_done(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class _AsCompleted:
    """Iterates executions in completion order: ``for`` in sync code, ``async for`` in a loop."""

    def __init__(self, execs: list, timeout: float | None, progress: bool = False) -> None:
        self._execs = execs
        self._progress = progress
        timeout = _wait_timeout(timeout)
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def __iter__(self):
        return self

    def __next__(self):
        # An iterator, like concurrent.futures.as_completed: next(it) works, and a partly consumed
        # one resumes where it stopped.
        it = self.__dict__.get("_it")
        if it is None:
            it = self._it = self._sync_iter()
        return next(it)

    def _sync_iter(self):
        # The generators take what they need, not self: an iterator dropped mid-way (a `break`)
        # is then freed at once, and its `finally` (the progress display's end) runs at once too.
        if self._progress:
            return _sync_iter_progress(self._execs, self._deadline)
        return _sync_iter(self._execs, self._deadline)

    def __aiter__(self):
        if self._progress:
            return _aiter_progress(self._execs, self._deadline)
        return _aiter(self._execs, self._deadline)


async def _aiter_progress(execs: list, deadline: float | None):
    with _progress.track(execs, "as_completed", end_when_done=True):
        async for e in _aiter(execs, deadline):
            yield e


async def _aiter(execs: list, deadline: float | None):
    # One C++ wait-set, one notify callable: each completion wakes the loop through the batched
    # inbox (no per-member Python callbacks); the iterator drains in completion order.
    import asyncio

    from ._asyncio import _inbox_for

    from . import _asyncio as _asyncio_mod

    body = _asyncio_mod.awaiting_body() if _asyncio_mod.awaiting_body is not None else None
    if body is not None and execs:  # an async body iterating over executions that all wait on it
        _core.check_waits(body.me, execs, _FIRST_COMPLETED)
    loop = asyncio.get_running_loop()
    inbox = _inbox_for(loop)
    wakeup = asyncio.Event()
    handle = _core.completion(execs, lambda: inbox.post_call(_set_event, wakeup))
    try:
        for n in range(len(execs)):
            while True:
                wakeup.clear()
                try:
                    idx = _core.completion_next(handle, 0)
                    break
                except TimeoutError:
                    pass
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    await asyncio.wait_for(wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    raise TimeoutError(f"{len(execs) - n} (of {len(execs)}) executions unfinished") from None
            yield execs[idx]
    finally:
        # Timed out, cancelled, closed after a `break`: the callbacks leave the members still
        # running now (a traceback may keep this frame, and the handle, alive for long).
        _core.release(handle)


def _sync_iter_progress(execs: list, deadline: float | None):
    with _progress.track(execs, "as_completed", end_when_done=True):
        yield from _sync_iter(execs, deadline)


def _sync_iter(execs: list, deadline: float | None):
    if _running_loop() is not None:  # a blocking iteration on a loop thread: refused if it needs the loop
        from ._asyncio import check_members_wait

        check_members_wait(execs, "iterating as_completed(...) with a plain for", "use `async for`")
    me = _core.current_execution()
    if me is not None and execs:  # a body iterating over executions that all wait on it (or itself)
        _core.check_waits(me, execs, _FIRST_COMPLETED)
    handle = _core.completion(execs)
    returned = 0
    try:
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                idx = _core.completion_next(handle, remaining)
            except _DistaffTimeout:
                raise  # the body's own timeout= fired while it waited here
            except TimeoutError:
                raise TimeoutError(f"{len(execs) - returned} (of {len(execs)}) executions unfinished") from None
            if idx == _EXHAUSTED:
                return
            returned += 1
            yield execs[idx]
    finally:
        _core.release(handle)  # as in _aiter: nothing stays registered on unfinished members


def _set_event(event: asyncio.Event) -> None:
    event.set()


def as_completed(execs: Iterable, timeout: float | None = None, *, progress: bool = False) -> _AsCompleted:
    """Yields executions as they finish (``for`` or ``async for``). TimeoutError when ``timeout``
    seconds after the call some are still unfinished. ``progress=True``: a live display of how
    many have finished while the iteration runs (docs/observability.md, "Progress")."""
    execs = _executions(execs, "as_completed")
    return _AsCompleted(execs, timeout, progress is not False and _progress.wanted(progress, "as_completed"))


def gather(*execs: Execution, return_exceptions: bool = False, progress: bool = False) -> Execution:
    """An Execution whose result is the list of the members' results, in argument order.

    Awaitable and with ``.result()`` like any Execution (and usable as a dependency). Without
    ``return_exceptions`` it fails as soon as a member fails, with that member's exception;
    with it, failed members contribute their exception instead of a value. ``progress=True``: a
    live display of how many members are done until the handle finishes (docs/observability.md).
    """
    show = progress is not False and _progress.wanted(progress, "gather")
    members = list(execs)
    for e in members:
        if not isinstance(e, Execution):
            raise TypeError(f"gather() takes Executions, got {type(e).__name__}")

    def finish(ms: list) -> Any:
        if return_exceptions:
            return [_outcome_or_exception(m) for m in ms]
        for m in ms:
            if m.done() and not m.cancelled() and m.exception() is not None:
                raise m.exception()
        # Every member is done. One that was cancelled ends the gather cancelled (asyncio.gather's
        # rule, as _link_cancellation applies it while others still run): the wait-set's callback
        # runs before that one when the cancelled member was the last to finish.
        if any(m.cancelled() for m in ms):
            return _COMBINE_CANCELLED
        return [m.result() for m in ms]

    handle = _core.combine(members, _ALL if return_exceptions else _FIRST_EXCEPTION, finish, "gather")
    _link_cancellation(handle, members, member_cancels=not return_exceptions)
    if show:
        _progress.track_handle(handle, members, "gather")
    return handle


def _link_cancellation(handle: Execution, members: list, member_cancels: bool) -> None:
    """asyncio.gather's rules for a combining handle: cancelling the handle cancels its unfinished
    members; with `member_cancels`, a cancelled member ends the handle cancelled at once — without
    cancelling the other members. (The wait-set alone would wait for them, since cancellation is
    not an exception for FIRST_EXCEPTION, and then fail.)"""
    by_member: list = []

    def handle_done(h: Execution) -> None:
        if h.cancelled() and not by_member:
            for m in members:
                if not m.done():
                    m.cancel()

    handle._add_done_callback(handle_done)
    if member_cancels:

        def member_done(m: Execution) -> None:
            if m.cancelled() and not handle.done():
                by_member.append(m)
                handle.cancel()

        for m in members:
            m._add_done_callback(member_done)


def _outcome_or_exception(m: Execution) -> Any:
    if m.cancelled():
        return CancelledError(f"execution {m.id} ({m.name}) was cancelled")
    exc = m.exception()
    return exc if exc is not None else m.result()


def join(*, missing: Any = _RAISE, progress: bool = False, **named: Execution) -> Execution:
    """An Execution whose result is a dict of the named members' results (WebPipe's ``join``).

    ``join(users=e1, posts=e2).result() == {"users": ..., "posts": ...}``. A failed member makes
    the join fail with :class:`JoinError` naming it. A cancelled or skipped member (one whose
    ``wait=`` dependency failed) raises too, unless ``missing=`` is given: then it maps to that value.
    ``progress=True``: a live display of how many members are done until the join finishes
    (``missing`` and ``progress`` are join's own options, not member names).
    """
    show = progress is not False and _progress.wanted(progress, "join")
    if not named:
        raise TypeError("join() needs at least one named Execution: join(users=ex1, posts=ex2)")
    for name, e in named.items():
        if not isinstance(e, Execution):
            raise TypeError(f"join() member {name!r} must be an Execution, got {type(e).__name__}")
    names = list(named)

    def skipped(m: Execution) -> bool:
        return m.cancelled() or isinstance(m.exception(), DependencyError)

    def finish(ms: list) -> dict:
        # Runs when every member is done, or (FIRST_EXCEPTION) as soon as one failed: then only
        # finished members may be inspected — exception() on a pending one would block.
        for name, m in zip(names, ms):
            if not m.done() or m.cancelled():
                continue
            exc = m.exception()
            if exc is not None and not (missing is not _RAISE and isinstance(exc, DependencyError)):
                if isinstance(exc, DependencyError):
                    raise JoinError(f"join member {name!r} (execution {m.id}) was skipped: {exc}", name) from exc
                raise JoinError(f"join member {name!r} (execution {m.id}) failed: {exc!r}", name) from exc
        out = {}
        for name, m in zip(names, ms):
            if skipped(m):
                if missing is _RAISE:
                    raise JoinError(f"join member {name!r} (execution {m.id}) was cancelled", name)
                out[name] = missing
            else:
                out[name] = m.result()
        return out

    # With missing=..., a skipped member must not end the join early: wait for every member.
    members = list(named.values())
    handle = _core.combine(members, _ALL if missing is not _RAISE else _FIRST_EXCEPTION, finish, "join")
    _link_cancellation(handle, members, member_cancels=False)
    if show:
        _progress.track_handle(handle, members, "join")
    return handle
