"""``async def`` bodies: the event loop as a placement of the elsewhere mechanism (_elsewhere.py).

The coroutine runs on an event loop and settles its execution's promise, so no fiber stack is held
meanwhile (the submitter's running loop, else the engine's loop thread; docs/asyncio.md). Retries,
fallback, timeout and cancel apply through the mechanism, as for bodies shipped to executors. The
loop side of the bridge (bindings, the inbox, the future protocol) is _asyncio.py."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
import weakref
from typing import Any, Callable

from . import _asyncio as _asyncio_mod
from . import _aio, _core, _trace
from ._elsewhere import Elsewhere
from ._errors import _note_failure

_aio.refresh()  # asyncio is imported now (above): distaff's running-loop check must be its own
_monotonic_ns = _core.monotonic_ns
_inbox_for = _asyncio_mod._inbox_for
_running_loop = asyncio._get_running_loop
_async_current = _core._async_current
# The async body whose attempt runs in this context (its task, and the tasks it starts): who
# called loop.stop() on the engine's loop (_engine._watch_stops).
_current_body: "contextvars.ContextVar[_AsyncBody]" = contextvars.ContextVar("distaff_async_body")


def _awaiting_body() -> Any:
    """The async body (an _AsyncBody: ``.me`` its execution, ``.promise`` the promise that execution
    follows) whose own asyncio task runs now, else None. Tasks the body starts share its context
    but are not it: one of them may well await the body's execution."""
    body = _current_body.get(None)
    if body is None or body.me is None or body.promise is None or body.handle is None:
        return None
    return body if body.handle() is asyncio.current_task() else None


_asyncio_mod.awaiting_body = _awaiting_body


class _Holder:
    """The tasks of the async bodies running on one loop, kept alive by that loop.

    asyncio keeps only weak references to tasks: a pending task that nothing else references —
    awaiting a future only it can reach, as `StreamReaderProtocol` (which holds its reader weakly)
    and an ``executable=True`` body's pipe reads do — is garbage once the cyclic GC runs ("Task was
    destroyed but it is pending!"), and its execution never finished (an outsider's find: a GC
    during a command hung ``result()``). asyncio's answer is "keep a reference to the task"; here
    the loop keeps it, through a far-off timer of its own whose callback is this holder: a body's
    task lives as long as its loop does, and a loop dropped with bodies pending is still collected
    with them (their executions are cancelled then, docs/asyncio.md)."""

    __slots__ = ("tasks", "tasks_ref", "__weakref__")

    def __init__(self, loop: Any) -> None:
        # task -> its _HereBody (None for an _AsyncBody's): a lean body's task cancelled before its
        # first step is found here by _never_started. (_Tasks can be referenced weakly: tasks_ref.)
        self.tasks: dict = _Tasks()
        self.tasks_ref = weakref.ref(self.tasks)
        loop.call_later(_HOLD_SECONDS, self._again)

    def _again(self) -> None:  # ~11 days later, on the loop: held again
        asyncio.get_running_loop().call_later(_HOLD_SECONDS, self._again)


class _Tasks(dict):
    __slots__ = ("__weakref__",)


_HOLD_SECONDS = 1e6
# loop -> weak reference to its holder: the holder is the loop's (through its timer), and it
# references tasks that reference the loop, so a strong value here would keep every loop alive.
_holders: "weakref.WeakKeyDictionary[Any, weakref.ref]" = weakref.WeakKeyDictionary()


_last_hold: tuple = (None, None)  # (weak loop, weak holder) of the last _hold: most bodies share a loop


def _hold(loop: Any, task: Any, body: Any = None) -> Any:
    """The loop holds `task` until the body's done callback drops it; returns a weak reference to
    the set that holds it (the body keeps that, never the set: see _Holder)."""
    global _last_hold
    loop_ref, holder_ref = _last_hold
    holder = holder_ref() if loop_ref is not None and loop_ref() is loop else None
    if holder is None:
        ref = _holders.get(loop)
        holder = ref() if ref is not None else None
        if holder is None:
            holder = _Holder(loop)
            _holders[loop] = weakref.ref(holder)
        _last_hold = (weakref.ref(loop), weakref.ref(holder))
    holder.tasks[task] = body
    return holder.tasks_ref


def _bind_to_submitting_loop(binding: Any, loop: Any, ex: Any) -> None:
    # An async body submitted from a running loop is bound to that loop from now on: a blocking wait
    # on the loop's thread that needs it is a deadlock, and (unless it waits for dependencies, see
    # _AsyncBody) the loop closing cancels it. Released when the execution finishes.
    if not binding.started:  # (started: its hand-off ran already, on this thread, and bound it)
        binding.bind(loop, ex, not binding.gated, started=False)
    ex._add_done_callback(binding.release)


class _AsyncBody(Elsewhere):
    """Runs an ``async def`` body on an event loop and settles the execution from it.

    The loop is the submitter's running loop (so loop-bound clients work), else the engine's own
    loop thread. The fiber only hands the body to the loop and returns a promise (a forwarded
    Execution), so no fiber stack is held while the coroutine runs. Unlike a body shipped to an
    executor, it gets its arguments as they are (Executions too, unless ``wait=``/``resolve=``).

    Which loop, exactly (docs/asyncio.md): a body submitted from a running loop belongs to that loop.
    If the loop is closed before the body starts, the body is cancelled — except a body that waited
    for dependencies (``wait=``/``resolve=``), which runs on the engine's loop instead; so does a gated
    body whose loop is not running when it starts. Once handed to a loop, the loop closing (or
    ``asyncio.run`` returning) cancels it. Retries run on the same loop (the delay is an
    ``asyncio.sleep`` of the next attempt's task), and so does ``fallback=`` (awaited if it returns an
    awaitable).
    """

    __slots__ = ("loop", "gated", "binding", "kind", "target", "where", "held")

    def __init__(self, fn: Callable, loop: Any, engine: Any, name: str, gated: bool = False, kind: str = "task",
                 policy: Any = None) -> None:
        # Elsewhere's fields, set here: one call less on the submit path.
        self.fn = fn
        self.policy = policy
        self.name = name
        self.engine = engine
        self.timeout = None
        self.me = self.promise = self.handle = self.target = self.where = None
        self.stopped = False
        self.attempt = 1
        self.shipped_ns = 0
        self.slot = None
        # Weakly: a pending body must not keep a dropped loop alive (its collection cancels the body).
        self.loop = weakref.ref(loop) if loop is not None else None
        self.gated = gated
        self.kind = kind  # "task" or "workflow": the word in the note on the body's error
        self.binding = _asyncio_mod._Binding(engine, gated)
        self.held = None  # weakly, the set that holds the running task (_hold)

    # -- in the execution's fiber -----------------------------------------------------------------

    def _place(self, me: Any) -> bool:
        binding = self.binding
        if self.loop is not None:
            loop = self.loop()
            if loop is not None and not loop.is_closed() and (not self.gated or loop.is_running()):
                binding.bind(loop, me, True)
                self.target = loop
                return True
            if not self.gated:  # its loop is gone: the body ends as the loop's own tasks did
                binding.bind(None, me, True)
                _core.settle(self.promise, False, None)
                return False
        self._on_engine_loop(me)
        return True

    def _on_engine_loop(self, me: Any) -> None:
        loop = self.target = self.engine._event_loop()
        self.binding.bind(loop, me, True)
        if self.loop is None and me is not None:
            me._add_done_callback(self.binding.release)

    def _start(self) -> None:
        # The first attempt: handed to the loop from the fiber's thread. The body keeps no strong
        # reference to the loop afterwards (a dropped loop is collected and its bodies cancelled).
        loop, self.target = self.target, None
        if loop is _running_loop():
            # Submitted on the loop's own thread (the hand-off runs there: SubmitFlag.HERE): the
            # task is made now, in the submitter's context, as loop.create_task would make it.
            self._begin(0.0, _monotonic_ns())
            return
        # From a worker: through the loop's inbox (_asyncio.py), so bodies handed over together
        # start in one wake-up of the loop, not one call_soon_threadsafe (a self-pipe write) each.
        if _inbox_for(loop).post_call2(self._begin, 0.0, _monotonic_ns()):
            return
        # Closed just now.
        if loop is self.engine._loop:
            raise RuntimeError("Event loop is closed")
        if not self.gated:  # the submitting loop: the body ends as the loop's own tasks did
            self.binding.bind(None, self.me, True)
            self._cancelled()
            return
        self._on_engine_loop(self.me)  # a gated body runs on the engine's loop instead
        loop, self.target = self.target, None
        loop.call_soon_threadsafe(self._begin, 0.0, _monotonic_ns())

    # -- on the loop ------------------------------------------------------------------------------

    def _begin(self, delay: float, handed: int) -> None:
        # The coroutine is created here, not in the fiber: if the loop never runs this callback
        # (stopped, then closed), no coroutine is left un-awaited.
        fn = self.fn
        if self.stopped or fn is None:  # cancelled or timed out before the loop got to it
            return
        self.shipped_ns = handed
        loop = asyncio.get_running_loop()
        task = loop.create_task(_run(self, self.me, fn, self.args, self.kwargs, delay))
        # Weakly: the execution (through its done callback) must not keep the task, hence its loop,
        # alive (a dropped loop is collected and its bodies cancelled). The loop keeps it (_hold).
        self.handle = weakref.ref(task)
        self.held = _hold(loop, task)
        task.add_done_callback(self._done)
        if self.stopped:  # cancelled meanwhile, from another thread that did not see the task yet
            task.cancel()

    def _unhold(self, task: Any) -> None:
        held = self.held() if self.held is not None else None
        if held is not None:
            held.pop(task, None)

    def _done(self, task: Any) -> None:
        self._unhold(task)
        if task.cancelled():
            self._cancelled()
            return
        exc = task.exception()
        if exc is None:
            r = task.result()
            if type(r) is _Exit:
                self._failed(r.exc)
                return
            # A returned Execution is followed, like a sync body's (a cycle: DeadlockError).
            self._succeeded(r)
        else:
            self._failed(exc)

    def _again(self, delay: float) -> None:
        # On the loop (from _done): the next attempt's task sleeps first, so cancelling it, or the
        # loop closing, ends the wait as it would end the attempt.
        self._begin(delay, _monotonic_ns())

    def _fallback(self, exc: BaseException) -> None:
        # On the loop, in the body's place: fallback(*args, **kwargs, exc=exc), awaited if awaitable.
        loop = asyncio.get_running_loop()
        task = loop.create_task(_fall_back(self.me, self.policy.fallback, self.args, self.kwargs, exc, self.slot))
        self.handle = weakref.ref(task)
        self.held = _hold(loop, task)
        task.add_done_callback(self._fallback_done)
        if self.stopped:
            task.cancel()

    def _fallback_done(self, task: Any) -> None:
        self._unhold(task)
        if self.promise.done():
            return
        if task.cancelled() or self.stopped:
            self._settle(False, None)
            return
        exc = task.exception()
        if exc is None:
            r = task.result()
            if type(r) is _Exit:
                self._settle(False, r.exc)
            else:
                self._settle(True, r)
        else:
            self._settle(False, exc)

    def _loop_stopped(self) -> None:
        """This body (its task, or a task it started) called ``loop.stop()`` on the engine's loop,
        which runs on. As under ``asyncio.run`` the body fails with RuntimeError("Event loop stopped
        before Future completed."), unless it ended in the same turn of the loop (then its
        outcome stands, as asyncio.run's would); its task is cancelled."""
        ref = self.handle
        task = ref() if ref is not None else None
        if self.promise is None or self.promise.done() or (task is not None and task.done()):
            return
        self._failed(RuntimeError("Event loop stopped before Future completed."), False)
        if task is not None:
            task.cancel()

    # -- from any thread --------------------------------------------------------------------------

    def _stop(self) -> bool:
        ref = self.handle
        task = ref() if ref is not None else None
        if task is None or task.done():  # not started (it never will: stopped) or finished
            return False
        loop = task.get_loop()
        if loop is _running_loop():
            # On the loop's thread (a cancel right after a submit there): cancelled now, so a task
            # whose first step has not run yet never starts the body (as Task.cancel promises).
            task.cancel()
            return True
        try:
            loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:  # the loop is closed: the coroutine is gone with it
            return False
        return True  # settled by _done once the coroutine has unwound

    def _where(self) -> str:
        w = self.where
        if w is None:  # first asked on the loop's thread (the ship record)
            w = self.where = f"asyncio loop ({threading.current_thread().name})"
        return w

    def _settle(self, ok: bool, value: Any) -> None:
        if not ok and value is not None:
            me = self.me
            _note_failure(value, f"distaff: raised in {self.kind} '{self.name}' (execution {me.id if me else '?'})",
                          me.id if me else 0)
        self.target = None
        Elsewhere._settle(self, ok, value)


class _HereBody(_asyncio_mod._Binding):
    """The hand-off of an ``async def`` body submitted on its loop's thread with nothing between the
    submit and its start (no ``wait=``, policy, timeout or concurrency limit, not the engine's own
    loop, no trace recording): the common case inside ``asyncio.run``.

    It runs inline, as the execution's body (SubmitFlag.HERE), makes the asyncio task and returns
    ``_core.PENDING``: the execution stays running, with no promise to follow, and the task's end
    settles it directly (``_done``). It is its own loop registration (a ``_Binding``), so one object
    per body carries the body, its registration and its callbacks (docs/internals/sync-calls.md,
    "Async bodies started here"). If the submit queued it after all (a worker's fiber, the inline
    nesting bound), it hands over to the general ``_AsyncBody`` when a worker calls it."""

    __slots__ = ("fn", "loop", "name", "kind", "me", "promise", "handle", "held", "fallback")

    policy = slot = None  # what _run reads: never a policy or a concurrency slot here
    attempt = 1
    shipped_ns = 0

    def __init__(self, fn: Callable, loop: Any, engine: Any, name: str, kind: str) -> None:
        # _Binding's fields, set here (one call less per submit).
        self.execution = self.entry = None
        self.engine = engine
        self.gated = self.sticky = self.started = self.finished = False
        self.fn = fn
        self.loop = loop  # strongly, until the hand-off (inline: now)
        self.name = name
        self.kind = kind
        self.me = self.promise = self.handle = self.held = self.fallback = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        loop = self.loop
        if loop is None or loop is not _running_loop():
            return self._queued()(*args, **kwargs)  # on a worker's fiber: the general hand-off
        self.loop = None
        me = self.me = self.promise = _current_execution()
        me._shield()  # a cancel from another thread now finishes it; the done callback stops the task
        task = loop.create_task(_run_here(self, me, self.fn, args, kwargs))
        self.handle = weakref.ref(task)  # weakly: the execution must not keep the loop alive
        self.held = _hold(loop, task, self)
        # Only for a task cancelled before its first step (its coroutine never runs): _run_here
        # takes the callback back as it starts and settles the execution itself as it ends.
        task.add_done_callback(_never_started)
        self.bind(loop, me, True)
        # The execution stays running until then. Finished first (cancel, timeout, shutdown — also
        # during this hand-off), it calls _external_stop.
        return _PENDING

    def _queued(self) -> "_AsyncBody":
        with _fallback_lock:
            fb = self.fallback
            if fb is None:
                fb = self.fallback = _AsyncBody(self.fn, self.loop, self.engine, self.name, False, self.kind)
                self.loop = None
        return fb

    def _queued_submit(self, ex: Any) -> None:
        # The submit queued it (not started here): bound to its loop from now on, as a body the
        # general path queues is (unless a worker's fiber got to it first and bound it itself).
        loop = self.loop
        fb = self._queued()
        if loop is not None:
            _bind_to_submitting_loop(fb.binding, loop, ex)

    def _finish(self, task: Any, ok: bool, value: Any) -> None:
        # On the loop, as the task ends (or ended before its first step): the execution's outcome,
        # unless it finished first.
        held = self.held() if self.held is not None else None
        if held is not None:
            held.pop(task, None)
        self.release()
        me = self.me
        if me is None or me.done():
            return
        if not ok and value is not None:
            _note_failure(value, f"distaff: raised in {self.kind} '{self.name}' (execution {me.id})", me.id)
        _settle(me, ok, value)  # a returned Execution is followed (a cycle: DeadlockError)

    def _external_stop(self, _ex: Any) -> None:
        # Any thread (the bindings call it): the execution finished before the task did — cancelled,
        # timed out or shut down: the task is cancelled on its loop.
        self.release()
        ref = self.handle
        task = ref() if ref is not None else None
        if task is None or task.done():
            return
        loop = task.get_loop()
        if loop is _running_loop():
            task.cancel()
            return
        try:
            loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:  # the loop is closed: the coroutine is gone with it
            pass

    def _ship_record(self) -> None:  # a trace that began after the submit: no ship record here
        pass


def _never_started(task: Any) -> None:
    # A lean body's task that ended without running a step (cancelled first: asyncio.run returning,
    # the loop's tasks cancelled by their owner): its execution ends cancelled.
    ref = _holders.get(task.get_loop())
    holder = ref() if ref is not None else None
    body = holder.tasks.get(task) if holder is not None else None
    if body is not None:
        body._finish(task, False, None)


async def _run_here(body: _HereBody, me: Any, fn: Any, args: Any, kwargs: Any) -> Any:
    """A lean async body as an asyncio task on its loop: it settles its execution as it ends."""
    _async_current.set(me)  # this task's context: current_execution(), the parent of its submits
    _current_body.set(body)
    task = body.handle()
    task.remove_done_callback(_never_started)
    if me.done():
        # Cancelled (from another thread, or with its parent) after the task was made: the cancel
        # of the task is on its way, behind this first step. The body does not start.
        body._finish(task, False, None)
        return None
    try:
        r = await fn(*args, **kwargs)
    except _CancelledError:
        body._finish(task, False, None)
        raise
    except GeneratorExit:
        # The coroutine is closed without finishing: its task was dropped with its loop (collected,
        # never closed). The loop registry cancels the execution once it sees the loop gone.
        raise
    except BaseException as e:  # noqa: BLE001 - the execution fails with it (KeyboardInterrupt too)
        # Not re-raised: the outcome is the execution's (a KeyboardInterrupt or SystemExit would
        # end the loop's run, and an error left in the task would be logged as never retrieved).
        body._finish(task, False, e)
        return None
    body._finish(task, True, r)
    return None


_CancelledError = asyncio.CancelledError
_fallback_lock = threading.Lock()
_PENDING = _core.PENDING
_settle = _core.settle
_current_execution = _core.current_execution


async def _run(body: _AsyncBody, me: Any, fn: Any, args: Any, kwargs: Any, delay: float) -> Any:
    """One attempt of an async body, as an asyncio task on its loop."""
    if me is not None:
        # This task's context only: distaff.current_execution() in the body, and the parent (for
        # the graph and for cancellation of the tree) of what the body submits.
        _async_current.set(me)
    _current_body.set(body)
    if me is not None and me.done():
        return None  # cancelled before this first step (the task's cancel is on its way): not started
    if delay:
        await asyncio.sleep(delay)
        body.shipped_ns = _monotonic_ns()
    slot = body.slot
    if slot is not None and slot.released and not (me is not None and me.done()):
        await slot.resume_async()  # a retry after a forwarded failure: the body takes a slot again
    if body.attempt > 1 and me is not None:  # a retry starts: the current attempt's number
        me._annotate("attempts", body.attempt)
    if _trace._hubs:
        body._ship_record()
    try:
        r = await fn(*args, **kwargs)
        if body.policy is not None and isinstance(r, _core.Execution):
            # Forwarding under a policy: the returned execution's outcome is this attempt's (a
            # failure is retried, then falls back). Awaited here, without a concurrency slot
            # meanwhile; a cancelled one cancels this task, so the execution ends cancelled as a
            # plain forward does.
            if me is not None:
                _core.check_wait(me, r)  # a cycle (it waits on this one): DeadlockError, not a hang
            if slot is not None:
                slot.pause()
            return await r
    except (KeyboardInterrupt, SystemExit) as e:
        return _Exit(e)
    return r


class _Exit:
    """A KeyboardInterrupt or SystemExit an async body raised, carried out of its task as a value.
    asyncio re-raises those two out of the loop's run: on the engine's loop thread that ended the
    thread, and the execution never finished (its caller hung). The execution fails with it instead,
    as a sync body's does; ``result()`` and ``await`` re-raise it, so it still ends the program that
    does not catch it."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def _fall_back(me: Any, fallback: Callable, args: Any, kwargs: Any, exc: BaseException, slot: Any = None) -> Any:
    if me is not None:
        _async_current.set(me)
    if slot is not None and slot.released and not (me is not None and me.done()):
        await slot.resume_async()  # after a forwarded failure: the fallback runs with a slot, as a body
    try:
        r = fallback(*args, **kwargs, exc=exc)
        return (await r) if inspect.isawaitable(r) else r
    except (KeyboardInterrupt, SystemExit) as e:
        return _Exit(e)
