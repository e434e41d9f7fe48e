"""The asyncio bridge: awaiting an Execution from any running event loop.

Completions arrive on worker threads. Each loop has an inbox; a completion appends to it and only
the first one of a batch calls ``loop.call_soon_threadsafe`` (one wake-up per batch, not one per
execution). Cancelling the awaiting asyncio task does not cancel the execution: the execution is
shared work, the awaiter is one interested party (see docs/asyncio.md).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref

from . import _core
from ._errors import CancelledError, DeadlockError

_inboxes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_get_running_loop = asyncio._get_running_loop  # C-level, no exception when there is no loop


class _Inbox:
    # Holds its loop weakly: the inbox is a value of the WeakKeyDictionary keyed by that loop, and a
    # strong reference here would keep every loop ever awaited on alive.
    __slots__ = ("loop_ref", "items", "scheduled", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop_ref = weakref.ref(loop)
        self.items: list = []
        self.scheduled = False

    def post(self, fut: asyncio.Future, execution) -> None:
        self.post_call(_deliver, (fut, execution))

    def post_call(self, fn, arg) -> None:
        # Runs on the completing thread with the GIL held. The GIL makes append and the flag
        # check each atomic; drain() clears the flag before swapping, so nothing is stranded.
        self.items.append((fn, arg))
        if not self.scheduled:
            self.scheduled = True
            loop = self.loop_ref()
            try:
                if loop is None:
                    raise RuntimeError("the event loop was garbage-collected")
                loop.call_soon_threadsafe(self.drain)
            except RuntimeError:  # the loop is closed: nobody is left to deliver to
                self.items.clear()

    def drain(self) -> None:
        self.scheduled = False
        items, self.items = self.items, []
        for fn, arg in items:
            try:
                fn(arg)
            except BaseException as exc:  # one bad delivery must not drop the rest of the batch
                asyncio.get_running_loop().call_exception_handler({"message": "distaff: delivery to the event loop failed", "exception": exc})


def _deliver(pair) -> None:
    fut, execution = pair
    if not fut.done():
        _copy_outcome(execution, fut)


def _copy_outcome(execution, fut: asyncio.Future) -> None:
    if execution.cancelled():
        # distaff.CancelledError, not asyncio's: the awaiting task itself was not cancelled.
        fut.set_exception(CancelledError(f"execution {execution.id} ({execution.name}) was cancelled"))
        return
    exc = execution.exception()
    if exc is not None:
        if isinstance(exc, StopIteration):
            # asyncio futures refuse StopIteration (it would end the awaiting coroutine silently).
            err = RuntimeError(f"execution {execution.id} ({execution.name}) raised StopIteration")
            err.__cause__ = exc
            exc = err
        fut.set_exception(exc)
    else:
        fut.set_result(execution.result())


def _inbox_for(loop: asyncio.AbstractEventLoop) -> _Inbox:
    inbox = _inboxes.get(loop)
    if inbox is None:
        inbox = _inboxes[loop] = _Inbox(loop)
    return inbox


def await_execution(execution):
    """``Execution.__await__``: a future on the running loop that the execution completes."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    if execution.done():
        _copy_outcome(execution, fut)
        return fut.__await__()
    inbox = _inbox_for(loop)

    def deliver(ex):
        inbox.post(fut, ex)

    execution.add_done_callback(deliver)
    return _awaiting(execution, fut, deliver)


def _awaiting(execution, fut, deliver):
    # An awaiter that gives up (its task cancelled: task.cancel(), an asyncio.wait_for timeout, a
    # TaskGroup sibling failing; or the coroutine closed) takes its callback back: polling
    # `wait_for(ex, tiny)` in a loop must not pile one callback per call on a long execution.
    try:
        return (yield from fut.__await__())
    finally:
        if not fut.done() or fut.cancelled():
            execution.remove_done_callback(deliver)


# -- async bodies bound to event loops ----------------------------------------------------------------
#
# Every unfinished async body is registered under the loop it is bound to: the submitter's running
# loop (from submit on), or the loop it was actually handed to (set when its fiber starts it). The
# registry answers two questions:
#   - may this thread, which runs loop L, block waiting for X? Not if X needs a body bound to L
#     (DeadlockError, see wait_on_loop_thread and check_engine_wait);
#   - which bodies can never finish because their loop is gone? asyncio has no notification for a loop
#     being closed, so a watcher thread polls (every _WATCH_PERIOD s, only while bodies are registered)
#     and cancels the bodies of loops that were closed or garbage-collected. Bodies of a loop that is
#     merely stopped stay (like the loop's own tasks, they resume if the loop runs again); shutdown
#     and the exit hook cancel them (cancel_stranded).

_WATCH_PERIOD = 0.05
_lock = threading.Lock()
_entries: list = []  # _LoopEntry, one per loop with registered bodies
_watcher: "threading.Thread | None" = None


class _LoopEntry:
    __slots__ = ("ref", "bodies")

    def __init__(self, loop) -> None:
        self.ref = weakref.ref(loop)
        self.bodies: dict = {}  # id(_Binding) -> _Binding


class _Binding:
    """One async body's registration. ``sticky``: the body belongs to its loop — it was handed to it,
    or it was submitted there ready to run — so the loop closing cancels it."""

    __slots__ = ("execution", "engine", "gated", "entry", "sticky", "started", "finished", "__weakref__")

    def __init__(self, engine, gated: bool) -> None:
        self.execution = None
        self.engine = engine
        self.gated = gated
        self.entry = None
        self.sticky = False
        self.started = False  # its fiber chose the loop: the submit-time binding no longer applies
        self.finished = False

    def bind(self, loop, execution, sticky: bool, started: bool = True) -> None:
        """Registers (or moves) this body under ``loop`` (None: under no loop)."""
        global _watcher
        start = False
        with _lock:
            if self.finished or (self.started and not started):
                return
            if execution is not None:
                self.execution = execution
            self.started = self.started or started
            self.sticky = self.sticky or sticky
            entry = self.entry
            if entry is not None and entry.ref() is loop:
                return
            if entry is not None:
                entry.bodies.pop(id(self), None)
                if not entry.bodies and entry in _entries:
                    _entries.remove(entry)
                self.entry = None
            if loop is None:
                return
            for e in _entries:
                if e.ref() is loop:
                    entry = e
                    break
            else:
                entry = _LoopEntry(loop)
                _entries.append(entry)
            entry.bodies[id(self)] = self
            self.entry = entry
            if _watcher is None:
                start = True
                _watcher = threading.Thread(target=_watch, name="distaff-loop-watch", daemon=True)
        if start:
            try:
                _watcher.start()
            except RuntimeError:  # interpreter shutdown: the exit hook cancels what is left
                with _lock:
                    _watcher = None

    def release(self, _execution=None) -> None:
        """The execution finished: forget it (its done-callback)."""
        with _lock:
            self.finished = True
            entry, self.entry = self.entry, None
            if entry is not None:
                entry.bodies.pop(id(self), None)
                if not entry.bodies and entry in _entries:
                    _entries.remove(entry)


def _live_bodies(loop) -> list:
    with _lock:
        for e in _entries:
            if e.ref() is loop:
                return [b for b in e.bodies.values() if b.execution is not None]
    return []


def _cancel(bindings) -> None:
    for b in bindings:
        ex = b.execution
        if ex is not None and not ex.done():
            ex.cancel()  # its done-callback cancels the coroutine on the loop, if the loop still runs


def _after_fork_in_child() -> None:
    # The watcher thread does not exist in the child, and the lock may have been held at fork. The
    # parent's bodies can never finish here (their executions say so when waited for).
    global _lock, _entries, _watcher
    _lock = threading.Lock()
    _entries = []
    _watcher = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _gone(entry) -> bool:
    loop = entry.ref()  # a local of this short call only: the watcher must not keep a loop alive
    return loop is None or loop.is_closed()


def _watch() -> None:
    global _watcher
    while True:
        with _lock:
            if not _entries:
                _watcher = None
                return
            dead = [b for e in _entries if _gone(e) for b in e.bodies.values() if b.sticky]
        _cancel(dead)
        del dead
        time.sleep(_WATCH_PERIOD)


def cancel_stranded(engine) -> int:
    """Cancels the engine's async bodies that can never finish: bound to a loop that is closed,
    garbage-collected or not running (nothing runs a stopped loop while its engine is shut down or
    the process exits). Returns how many."""
    victims = []
    with _lock:
        for e in _entries:
            loop = e.ref()
            if loop is None or loop.is_closed() or not loop.is_running():
                victims.extend(b for b in e.bodies.values() if b.sticky and b.engine is engine)
    _cancel(victims)
    return len(victims)


def _loop_deadlock(what: str, fix: str) -> DeadlockError:
    return DeadlockError(
        f"{what} on the thread running this asyncio event loop would block the loop, and what it waits "
        f"for needs that loop to run (an async task body bound to it): it would never finish. {fix}"
    )


def check_engine_wait(engine, what: str) -> None:
    """Before a blocking engine-wide wait (shutdown, ``with Engine()`` exit, wait_idle): DeadlockError
    if this thread runs a loop that one of the engine's unfinished async bodies is bound to."""
    loop = _get_running_loop()
    if loop is None:
        return
    for b in _live_bodies(loop):
        if b.engine is engine and not b.execution.done():
            raise _loop_deadlock(
                what,
                "In a coroutine use `async with Engine(...)` or `await engine.ashutdown()`, which wait "
                "without blocking the loop.",
            )


def check_self_wait(engine, what: str) -> None:
    """``await engine.ashutdown()`` from one of the engine's own async bodies would wait for itself."""
    me = _core.current_execution()
    loop = _get_running_loop()
    if me is None or loop is None:
        return
    for b in _live_bodies(loop):
        if b.execution is me and b.engine is engine:
            raise DeadlockError(
                f"{what} inside execution {me.id} ({me.name}), a task of this engine, would wait for "
                "itself: shut the engine down from outside its tasks"
            )


def wait_on_loop_thread(execution, timeout):
    """The loop-wait hook of ``Execution.result()``/``exception()`` on a thread (not a fiber).

    Returns None when no event loop runs in this thread (the plain blocking wait follows). Otherwise
    blocking is allowed — it freezes the loop, as any blocking call does — unless the execution
    needs this loop to finish: it is an async body bound to the loop, or waits (through dependencies,
    forwards, waits of running bodies) on one. Then DeadlockError at once. The check is repeated
    while waiting (a body may start waiting on a loop-bound body later), so the wait runs in slices.
    """
    loop = _get_running_loop()
    if loop is None:
        return None
    if timeout is not None:
        _core.wait_set([], timeout, 0)  # validates the timeout exactly as the plain wait does
        deadline = time.monotonic() + timeout
    else:
        deadline = None
    while True:
        bound = [b.execution for b in _live_bodies(loop)]
        if bound and (_core._reaches_any(execution, bound) or _gathers_any(execution, bound)):
            raise _loop_deadlock(
                f"waiting for execution {execution.id} ({execution.name})",
                "Use `await execution` (or `await asyncio.wait_for(execution, timeout)`) instead of "
                ".result()/.exception().",
            )
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError(f"execution {execution.id} ({execution.name}) did not finish within the timeout")
        done, _ = _core.wait_set([execution], _WATCH_PERIOD if left is None else min(left, _WATCH_PERIOD), 0)
        if done:
            return True


def check_members_wait(execs, what: str, fix: str) -> None:
    """DeadlockError if blocking this loop thread until ``execs`` finish needs this loop."""
    loop = _get_running_loop()
    bound = [b.execution for b in _live_bodies(loop)] if loop is not None else ()
    if bound and any(not ex.done() and (_core._reaches_any(ex, bound) or _gathers_any(ex, bound)) for ex in execs):
        raise _loop_deadlock(what, f"In a coroutine {fix}.")


def _gathers_any(execution, bound) -> bool:
    # gather/join/combine executions are not in the wait graph _reaches_any walks: their members,
    # one level down, are checked by id.
    deps = execution.description.get("dependencies")
    if not deps:
        return False
    ids = {b.id for b in bound}
    return any(d in ids for d in deps)


async def wait_idle(engine) -> None:
    """Waits until the engine has no unfinished execution, without blocking the running loop.

    A helper thread does the blocking wait, in short slices so that it stops when the awaiting task is
    cancelled."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    stop = threading.Event()

    def settle() -> None:
        if not fut.done():
            fut.set_result(None)

    def run() -> None:
        while not stop.is_set():
            if _core.wait_idle(engine._capsule, 0.1):
                try:
                    loop.call_soon_threadsafe(settle)
                except RuntimeError:  # the loop closed meanwhile: nobody is waiting any more
                    pass
                return

    threading.Thread(target=run, name="distaff-ashutdown", daemon=True).start()
    try:
        await fut
    finally:
        stop.set()
