"""The asyncio bridge: awaiting an Execution from any running event loop.

Completions arrive on worker threads. Each loop has an inbox; a completion appends to it and only
the first one of a batch calls ``loop.call_soon_threadsafe`` (one wake-up per batch, not one per
execution). Cancelling the awaiting asyncio task does not cancel the execution: the execution is
shared work, the awaiter is one interested party (see docs/asyncio.md).
"""

from __future__ import annotations

import asyncio
import weakref

from ._errors import CancelledError

_inboxes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Inbox:
    __slots__ = ("loop", "items", "scheduled", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
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
            try:
                self.loop.call_soon_threadsafe(self.drain)
            except RuntimeError:  # the loop is closed: nobody is left to deliver to
                self.items.clear()

    def drain(self) -> None:
        self.scheduled = False
        items, self.items = self.items, []
        for fn, arg in items:
            try:
                fn(arg)
            except BaseException as exc:  # one bad delivery must not drop the rest of the batch
                self.loop.call_exception_handler({"message": "distaff: delivery to the event loop failed", "exception": exc})


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
    else:
        inbox = _inbox_for(loop)
        execution.add_done_callback(lambda ex: inbox.post(fut, ex))
    return fut.__await__()
