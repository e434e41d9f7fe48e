"""The asyncio bridge: awaiting an Execution from any running event loop.

Completions arrive on worker threads. Each loop has an inbox; a completion appends to it and only
the first one of a batch calls ``loop.call_soon_threadsafe`` (one wake-up per batch, not one per
execution). A batch the loop never ran (it closed first) is dropped with the loop's callback
(_Batch). Cancelling the awaiting asyncio task cancels the execution, as for an asyncio future
(docs/asyncio.md).
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
import weakref

from . import _aio, _core, _quiet
from ._errors import CancelledError, DeadlockError

_inboxes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_aio.bind(globals(), "_get_running_loop")  # asyncio's C-level one once asyncio is imported (_aio.py)


_ONE = object()  # an inbox item with one argument
_IN_CONTEXT = object()  # an inbox item that is a fired _LoopCallback (fn unused): a.deliver()


class _Batch:
    """The deliveries of one wake-up. Owned by the loop's scheduled callback: if the loop closes
    before it runs (asyncio.run returning, loop.close()), the loop drops that callback and with it
    the batch and everything it holds — Executions, futures that hold the loop, their callbacks.
    The inbox keeps only a weak reference: a strong one formed a cycle through the module's
    WeakKeyDictionary (value -> future -> its loop, the key) that kept them all alive for good."""

    __slots__ = ("items", "drained", "__weakref__")

    def __init__(self) -> None:
        self.items: list = []
        self.drained = False

    def run(self) -> None:
        self.drained = True
        items, self.items = self.items, []
        # Flat: fn, a, b, fn, a, b, ... (no tuple per delivery: with thousands of completions
        # waiting for a busy loop, those tuples were garbage-collector work)
        it = iter(items)
        unrun = None
        try:
            for fn, a, b in zip(it, it, it):
                try:
                    if b is _ONE:
                        fn(a)
                    elif b is _IN_CONTEXT:
                        a.deliver()
                    else:
                        fn(a, b)
                except (SystemExit, KeyboardInterrupt):
                    # To the program, as asyncio's own callbacks do (a SIGTERM handler's exit). A
                    # signal that landed as deliver() began (its callback not run: it still holds
                    # its execution) leaves that callback to be delivered with the rest: one of
                    # gather's was lost so, and the gather never finished.
                    if b is _IN_CONTEXT and a.execution is not None:
                        unrun = [fn, a, b]
                    raise
                except BaseException as exc:  # one bad delivery must not drop the rest of the batch
                    _get_running_loop().call_exception_handler({"message": "distaff: delivery to the event loop failed", "exception": exc})
        except BaseException:
            # Left by a SystemExit or Ctrl-C (raised in a delivery, or by a signal handler between
            # two): the rest are delivered when the loop runs again, as asyncio keeps its ready
            # callbacks — asyncio.run's clean-up runs it, and a gather whose children's deliveries
            # were dropped here never finished (an outsider's find, session 16). Only on this path:
            # a batch that ran through costs nothing more.
            rest = (unrun or []) + list(it)  # zip takes each three from `it` in one step
            if rest:
                batch = _Batch()
                batch.drained = True  # (no inbox refers to it: nothing else joins it)
                batch.items = rest
                _get_running_loop().call_soon(batch.run)
            raise


class _Inbox:
    # Holds its loop weakly: the inbox is a value of the WeakKeyDictionary keyed by that loop, and a
    # strong reference here would keep every loop ever awaited on alive. Its pending batch is weak
    # too (see _Batch).
    __slots__ = ("loop_ref", "batch_ref", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop_ref = weakref.ref(loop)
        self.batch_ref = None

    def post(self, fut: asyncio.Future, execution) -> None:
        self.post_call2(_deliver, fut, execution)

    def post_call(self, fn, arg) -> None:
        """Delivers ``fn(arg)`` on the loop."""
        self.post_call2(fn, arg, _ONE)

    def post_call2(self, fn, a, b) -> bool:
        """Delivers ``fn(a, b)`` on the loop. Runs on the completing thread with the GIL held: the
        GIL makes the check of the pending batch and the append one step; a batch that started
        running (drained) takes no more, so nothing is stranded. False: the loop is closed (or
        gone), nothing was posted. A batch posted to a loop that closes before running it is
        dropped with the loop's callback, as ``call_soon_threadsafe``'s handle would be."""
        batch = self.batch_ref() if self.batch_ref is not None else None
        if batch is not None and not batch.drained:
            batch.items += (fn, a, b)
            return True
        batch = _Batch()
        batch.items += (fn, a, b)
        # Published before call_soon_threadsafe, which lets go of the GIL (its write to the loop's
        # self-pipe): a delivery from another thread meanwhile joins this batch instead of making
        # a second wake-up. `batch` (this frame) holds it until the loop's handle does.
        self.batch_ref = weakref.ref(batch)
        loop = self.loop_ref()
        try:
            if loop is None:
                raise RuntimeError("the event loop was garbage-collected")
            loop.call_soon_threadsafe(batch.run)
        except RuntimeError:  # the loop is closed: nobody is left to deliver to
            return False
        return True


def _deliver(fut, execution) -> None:
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


_last_inbox: "_Inbox | None" = None  # the last one asked for: most programs run one loop


def _inbox_for(loop: asyncio.AbstractEventLoop) -> _Inbox:
    global _last_inbox
    inbox = _last_inbox
    if inbox is not None and inbox.loop_ref() is loop:
        return inbox
    inbox = _inboxes.get(loop)
    if inbox is None:
        inbox = _inboxes[loop] = _Inbox(loop)
    _last_inbox = inbox
    return inbox


# Set by _async_body once async bodies exist: the execution of the async body whose own task runs
# now (not a task it started), or None.
awaiting_body = None


def await_execution(execution):
    """``Execution.__await__``: a future on the running loop that the execution completes."""
    loop = _get_running_loop()
    if loop is None:
        _aio.refresh()
        loop = _get_running_loop()
        if loop is None:
            raise RuntimeError(
                f"no running asyncio event loop: awaiting execution {execution.id} ({execution.name}) needs "
                "one (asyncio or uvloop). Under trio, wait in a thread: "
                "`await trio.to_thread.run_sync(execution.result)`"
            )
    fut = loop.create_future()
    if execution.done():
        _copy_outcome(execution, fut)
        return fut.__await__()
    edge = None
    if awaiting_body is not None:
        body = awaiting_body()
        if body is not None:
            # An async body awaiting itself, or what waits on it: DeadlockError. While it awaits, it
            # waits on the execution in the wait graph (its promise does: the body's execution
            # follows that), so what waits on the body later closes a cycle too.
            _core.check_wait(body.me, execution)
            edge = _core.wait_edge(body.promise, execution)
    inbox = _inbox_for(loop)

    def deliver(ex):
        inbox.post(fut, ex)

    _raw_add_done_callback(execution, deliver)
    return _awaiting(execution, fut, deliver, edge)


def _awaiting(execution, fut, deliver, edge=None):
    # An awaiter that gives up takes its callback back: polling `wait_for(shield(ex), tiny)` in a
    # loop must not pile one callback per call on a long execution. An awaiting task that is
    # cancelled (task.cancel(), an asyncio.wait_for or asyncio.timeout expiring, a TaskGroup sibling
    # failing) cancels the execution, as it cancels any asyncio future it awaits: the same on every
    # Python version, where wait_for either cancels the task or calls ex.cancel() (docs/asyncio.md).
    # A coroutine merely closed (never resumed) leaves the execution alone.
    try:
        return (yield from fut.__await__())
    finally:
        edge = None  # (dropping the token ends the body's edge in the wait graph)
        if not fut.done() or fut.cancelled():
            execution.remove_done_callback(deliver)
        if fut.cancelled() and not execution.done():
            _cancel(execution, getattr(fut, "_cancel_message", None))


# -- the asyncio future protocol -----------------------------------------------------------------------
#
# An Execution is an asyncio future (asyncio.isfuture() is true), so every asyncio API that takes
# futures takes it as it is — wait, wait_for, shield, gather, as_completed, ensure_future,
# wrap_future — without wrapping it in a Task. Unlike an asyncio.Future it belongs to no loop:
#   - get_loop() is the caller's running loop (asyncio only asks from the loop's thread);
#   - add_done_callback(fn, context=) on a thread running a loop delivers fn(execution) on that loop,
#     in that context, through the loop's inbox (one call_soon_threadsafe per batch), never before
#     add_done_callback returns — asyncio's contract. Elsewhere (plain threads, fibers) fn runs on
#     the completing thread, as concurrent.futures does. So one Execution serves several loops,
#     threads and fibers at once;
#   - cancel(msg=) cancels the execution; result()/exception() of a cancelled one raise
#     distaff.CancelledError, which is also an asyncio.CancelledError (and a
#     concurrent.futures.CancelledError): both protocols see a cancelled future.
# distaff's own code registers its completion callbacks with _raw_add_done_callback (the completing
# thread, whatever thread registers).

_Execution = _core.Execution
_raw_add_done_callback = _Execution.add_done_callback
_raw_cancel = _Execution.cancel
_cancel_messages: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_copy_context = contextvars.copy_context


class _LoopCallback:
    """``fn`` registered on a loop thread: run as ``context.run(fn, execution)`` on that loop. Equal
    to ``fn``, so ``remove_done_callback(fn)`` finds it."""

    __slots__ = ("fn", "context", "inbox", "execution")

    def __init__(self, fn, context, inbox) -> None:
        self.fn = fn
        self.context = context
        self.inbox = inbox

    def __call__(self, execution) -> None:
        # Posted as itself (an execution fires each callback once): no bound context.run and no
        # tuple per delivery while it waits for the loop.
        self.execution = execution
        self.inbox.post_call2(None, self, _IN_CONTEXT)

    def deliver(self) -> None:
        """On the loop: ``fn(execution)`` in the callback's context. (self.execution is None once
        this has begun: _Batch.run tells so whether a signal stopped it before ``fn`` ran.)"""
        execution, self.execution = self.execution, None
        self.context.run(self.fn, execution)

    def __eq__(self, other):
        return self is other or self.fn == other

    __hash__ = None


class _ContextCallback:
    """``fn`` registered with ``context=`` off any loop: run in that context on the completing thread."""

    __slots__ = ("fn", "context")

    def __init__(self, fn, context) -> None:
        self.fn = fn
        self.context = context

    def __call__(self, execution) -> None:
        self.context.copy().run(self.fn, execution)

    def __eq__(self, other):
        return self is other or self.fn == other

    __hash__ = None


def _add_done_callback(self, fn, *, context=None):
    """Calls fn(execution) once it is finished. On a thread running an asyncio event loop (a coroutine,
an async task body) fn runs on that loop, soon after the execution finishes (via the loop, even if
it already has), in ``context`` (default: a copy of the current context) — the asyncio future
protocol. Elsewhere fn runs on the thread that finishes the execution (now, if it already is
finished), as with concurrent.futures."""
    if not callable(fn):
        raise TypeError(f"add_done_callback() needs a callable, not {type(fn).__name__}")
    if context is not None and not isinstance(context, contextvars.Context):
        raise TypeError(f"add_done_callback() context must be a contextvars.Context, not {type(context).__name__}")
    loop = _get_running_loop()
    if loop is None:
        if context is None:
            return _raw_add_done_callback(self, fn)
        return _raw_add_done_callback(self, _ContextCallback(fn, context))
    if context is None:
        context = _copy_context()
    if self.done():
        loop.call_soon(fn, self, context=context)
        return None
    return _raw_add_done_callback(self, _LoopCallback(fn, context, _inbox_for(loop)))


def _get_loop(self):
    """The running event loop of the calling thread: an Execution belongs to no loop, and asyncio asks
from the thread of the loop it is working for. RuntimeError outside a running loop."""
    loop = _get_running_loop()
    if loop is None:
        raise RuntimeError(
            f"execution {self.id} ({self.name}) belongs to no event loop: get_loop() answers only in a "
            "thread running one (then it is that loop). To run a loop until an Execution finishes, "
            "await it in a coroutine: loop.run_until_complete(coro) or asyncio.run(coro)"
        )
    return loop


def _cancel(self, msg=None):
    """Cancels the execution and its children (not detached ones). A running body is interrupted at its
next wait or bytecode. True if it is (now) cancelled. ``msg`` is the message of the CancelledError
that asyncio APIs (gather, wait_for) raise for it."""
    if msg is not None and not self.done():
        _cancel_messages[self] = msg
    return _raw_cancel(self)


def _cancel_message(self):
    return _cancel_messages.get(self) if self.cancelled() else None


def _make_cancelled_error(self):
    # asyncio.gather calls this on a cancelled member.
    msg = _cancel_messages.get(self)
    return CancelledError(msg if msg is not None else f"execution {self.id} ({self.name}) was cancelled")


def _future_blocking(self):
    return None if _get_running_loop() is None else False


def _install_future_protocol() -> None:
    E = _Execution
    # asyncio.isfuture(ex) looks at this: False (an asyncio future, never yielded itself) in a thread
    # running a loop, where asyncio's APIs run; None (a plain awaitable) elsewhere, where there is no
    # loop for get_loop() to name — so loop.run_until_complete(ex) wraps it in a Task, as it always did.
    E._asyncio_future_blocking = property(_future_blocking)
    E.add_done_callback = _add_done_callback
    E._add_done_callback = _raw_add_done_callback
    E.get_loop = _get_loop
    E.cancel = _cancel
    E._cancel_message = property(_cancel_message)
    E._make_cancelled_error = _make_cancelled_error
    _add_done_callback.__name__ = _add_done_callback.__qualname__ = "add_done_callback"
    _get_loop.__name__ = _get_loop.__qualname__ = "get_loop"
    _cancel.__name__ = _cancel.__qualname__ = "cancel"


_install_future_protocol()


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
# Re-entrant, and a section never waits for itself: Python runs signal handlers between the
# bytecodes of a `with` block, and asyncio's SIGINT handler cancels the main task, whose cancelled
# executions release their bindings on this same thread. With a plain Lock one Ctrl-C under
# asyncio.run deadlocked the main thread (an outsider's find, session 23). A release that arrives
# while this thread is inside a section is deferred to the outermost section's end; a bind that
# arrives so (a handler submitting an async task) runs nested, which at worst leaves a body
# untracked by the registry (no loop-close cancel for it), never a hang.
_lock = threading.RLock()
_depth = 0  # sections running now, nested (only the thread holding _lock can see it non-zero)
_deferred: list = []  # _Bindings whose release arrived during a section of their own thread


class _Section:
    """``with _section:`` — the registry's lock held; the releases deferred meanwhile run as the
    outermost section ends."""

    __slots__ = ()

    def __enter__(self) -> None:
        global _depth
        _lock.acquire()
        _depth += 1

    def __exit__(self, *exc) -> None:
        global _depth
        try:
            if _depth == 1:
                while _deferred:
                    _deferred.pop()._release_locked()
        finally:
            _depth -= 1
            _lock.release()


_section = _Section()
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
        with _section:
            if self._bind_locked(loop, execution, sticky, started) and _watcher is None:
                start = True
                _watcher = threading.Thread(target=_watch, name="distaff-loop-watch", daemon=True)
        if start:
            try:
                _watcher.start()
            except RuntimeError:  # interpreter shutdown: the exit hook cancels what is left
                with _section:
                    _watcher = None

    def _bind_locked(self, loop, execution, sticky: bool, started: bool) -> bool:
        # True: registered under a loop just now.
        if self.finished or (self.started and not started):
            return False
        if execution is not None:
            self.execution = execution
        self.started = self.started or started
        self.sticky = self.sticky or sticky
        entry = self.entry
        if entry is not None and entry.ref() is loop:
            return False
        if entry is not None:
            entry.bodies.pop(id(self), None)
            if not entry.bodies and entry in _entries:
                _entries.remove(entry)
            self.entry = None
        if loop is None:
            return False
        for e in _entries:
            if e.ref() is loop:
                entry = e
                break
        else:
            entry = _LoopEntry(loop)
            _entries.append(entry)
        entry.bodies[id(self)] = self
        self.entry = entry
        return True

    def release(self, _execution=None) -> None:
        """The execution finished: forget it (its done-callback)."""
        with _section:
            if _depth > 1:  # re-entered from a signal handler inside a section of this thread
                _deferred.append(self)
                return
            self._release_locked()

    def _release_locked(self) -> None:
        self.finished = True
        entry, self.entry = self.entry, None
        if entry is not None:
            entry.bodies.pop(id(self), None)
            if not entry.bodies and entry in _entries:
                _entries.remove(entry)


def _live_bodies(loop) -> list:
    with _section:
        for e in _entries:
            if e.ref() is loop:
                return [b for b in e.bodies.values() if b.execution is not None]
    return []


def _cancel_bodies(bindings) -> None:
    for b in bindings:
        ex = b.execution
        if ex is not None and not ex.done():
            _raw_cancel(ex)  # its done-callback cancels the coroutine on the loop, if the loop still runs


def _after_fork_in_child() -> None:
    # The watcher thread does not exist in the child, and the lock may have been held at fork. The
    # parent's bodies can never finish here (their executions say so when waited for).
    global _lock, _entries, _watcher, _depth, _deferred
    _lock = threading.RLock()
    _depth = 0
    _deferred = []
    _entries = []
    _watcher = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _gone(entry) -> bool:
    loop = entry.ref()  # a local of this short call only: the watcher must not keep a loop alive
    return loop is None or loop.is_closed()


def _watch() -> None:
    global _watcher
    while True:
        with _section:
            if not _entries:
                _watcher = None
                return
            dead = [b for e in _entries if _gone(e) for b in e.bodies.values() if b.sticky]
        _cancel_bodies(dead)
        del dead
        with _quiet.idle():  # Ctrl-C is the main thread's (a lost one under asyncio.run: outsider, s11)
            time.sleep(_WATCH_PERIOD)


def cancel_stranded(engine) -> int:
    """Cancels the engine's async bodies that can never finish: bound to a loop that is closed,
    garbage-collected or not running (nothing runs a stopped loop while its engine is shut down or
    the process exits). Returns how many."""
    victims = []
    with _section:
        for e in _entries:
            loop = e.ref()
            if loop is None or loop.is_closed() or not loop.is_running():
                victims.extend(b for b in e.bodies.values() if b.sticky and b.engine is engine)
    _cancel_bodies(victims)
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
        _core.wait_set([], timeout, _core.WaitFor.ALL_COMPLETED)  # validates the timeout exactly as the plain wait does
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
        period = _WATCH_PERIOD if left is None else min(left, _WATCH_PERIOD)
        done, _ = _core.wait_set([execution], period, _core.WaitFor.ALL_COMPLETED)
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
    import asyncio

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
