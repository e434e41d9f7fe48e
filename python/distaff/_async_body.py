"""``async def`` bodies: the coroutine runs on an event loop and settles its execution's promise,
so no fiber stack is held meanwhile (the submitter's running loop, else the engine's loop thread;
docs/asyncio.md). The loop side of the bridge (bindings, the inbox, the future protocol) is
_asyncio.py."""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, Callable

from . import _asyncio as _asyncio_mod
from . import _core, _trace
from ._errors import _note_failure


def _bind_to_submitting_loop(binding: Any, loop: Any, ex: Any) -> None:
    # An async body submitted from a running loop is bound to that loop from now on: a blocking wait
    # on the loop's thread that needs it is a deadlock, and (unless it waits for dependencies, see
    # _AsyncBody) the loop closing cancels it. Released when the execution finishes.
    binding.bind(loop, ex, not binding.gated, started=False)
    ex._add_done_callback(binding.release)


class _AsyncBody:
    """Runs an ``async def`` body on an event loop and completes the execution from it.

    The loop is the submitter's running loop (so loop-bound clients work), else the engine's own
    loop thread. The fiber only starts the coroutine and returns a promise (a forwarded Execution),
    so no fiber stack is held while the coroutine runs.

    Which loop, exactly (docs/asyncio.md): a body submitted from a running loop belongs to that loop.
    If the loop is closed before the body starts, the body is cancelled — except a body that waited
    for dependencies (``wait=``/``resolve=``), which runs on the engine's loop instead; so does a gated
    body whose loop is not running when it starts. Once handed to a loop, the loop closing (or
    ``asyncio.run`` returning) cancels it.
    """

    __slots__ = ("fn", "loop", "engine", "name", "gated", "binding", "kind")

    def __init__(self, fn: Callable, loop: Any, engine: Any, name: str, gated: bool = False, kind: str = "task") -> None:
        self.fn = fn
        # Weakly: a pending body must not keep a dropped loop alive (its collection cancels the body).
        self.loop = weakref.ref(loop) if loop is not None else None
        self.engine = engine
        self.name = name
        self.gated = gated
        self.kind = kind  # "task" or "workflow": the word in the note on the body's error
        self.binding = _asyncio_mod._Binding(engine, gated)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        me = _core.current_execution()
        binding = self.binding
        promise = _core.promise(self.name)
        loop = None
        if self.loop is not None:
            loop = self.loop()
            if loop is None or loop.is_closed() or (self.gated and not loop.is_running()):
                loop = None
                if not self.gated:  # its loop is gone: the body ends as the loop's own tasks did
                    binding.bind(None, me, True)
                    _core.settle(promise, False, None)
                    return promise
        note = f"distaff: raised in {self.kind} '{self.name}' (execution {me.id if me else '?'})"
        engine = self.engine
        shipped = _core.monotonic_ns()  # handed to the loop: a trace's interval on the loop starts here

        def traced(outcome: Any) -> None:
            # On the loop's thread, while something records the engine: the interval the body spent
            # on this loop (docs/observability.md), on a track named after the loop's thread.
            log = _trace.elsewhere_log(engine)
            if log is not None and me is not None:
                where = f"asyncio loop ({threading.current_thread().name})"
                if outcome is None:
                    log.append(("ship", shipped, me.id, where, 1))
                else:
                    log.append(("return", _core.monotonic_ns(), me.id, where, 1, outcome, shipped))

        def settle(fut: Any) -> None:
            if fut.cancelled():
                if _trace._hubs:
                    traced("cancelled")
                _core.settle(promise, False, None)
                return
            exc = fut.exception()
            if _trace._hubs:
                traced("succeeded" if exc is None else "failed")
            if exc is None:
                # A returned Execution is followed, like a sync body's (a cycle: DeadlockError).
                _core.settle(promise, True, fut.result())
            else:
                _note_failure(exc, note, me.id if me else 0)
                _core.settle(promise, False, exc)

        def start() -> None:
            # On the loop. The coroutine is created here, not in the fiber: if the loop never runs
            # this callback (stopped, then closed), no coroutine is left un-awaited.
            if me is not None and me.done():  # cancelled or timed out before the loop got to it
                _core.settle(promise, False, None)
                return
            if _trace._hubs:
                traced(None)
            task = asyncio.get_running_loop().create_task(_cancellable(me, self.fn, args, kwargs))
            task.add_done_callback(settle)

        if loop is not None:
            binding.bind(loop, me, True)
            try:
                loop.call_soon_threadsafe(start)
                return promise
            except RuntimeError:  # closed just now
                if not self.gated:
                    binding.bind(None, me, True)
                    _core.settle(promise, False, None)
                    return promise
        loop = self.engine._event_loop()
        binding.bind(loop, me, True)
        if self.loop is None and me is not None:
            me._add_done_callback(binding.release)
        loop.call_soon_threadsafe(start)
        return promise


async def _cancellable(me: Any, fn: Any, args: Any, kwargs: Any) -> Any:
    """Runs an async body so that cancelling (or timing out) its execution cancels the coroutine.

    The link is made here, on the loop, not in the fiber that starts the coroutine: a cancel can
    raise an asynchronous exception in that fiber at any bytecode, which could otherwise leave the
    coroutine running unlinked."""
    if me is not None:
        # This task's context only: distaff.current_execution() in the body, and the parent (for
        # the graph and for cancellation of the tree) of what the body submits.
        _core._async_current.set(me)
        # Weakly: the execution must not keep the task, hence its loop, alive (a dropped loop is
        # collected and its bodies cancelled).
        task_ref = weakref.ref(asyncio.current_task())

        def cancel(_ex: Any) -> None:
            task = task_ref()
            if task is None or task.done():  # finished normally: nothing to cancel, no wake-up needed
                return
            try:
                task.get_loop().call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed: the coroutine is gone with it
                pass

        me._add_done_callback(cancel)
    return await fn(*args, **kwargs)
