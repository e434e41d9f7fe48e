"""``async def`` bodies on an in-process executor (``executor=ThreadPoolExecutor(...)``).

Each executor thread runs them on an event loop of its own, made the first time that thread runs
one and reused after (``asyncio.run`` per body made and closed a loop each time: ~10x the cost of
a tiny body). Per body it keeps what ``asyncio.run`` gives: the body runs as a task of that loop,
and tasks it started and left running are cancelled when it returns. Cancelling the execution
(``cancel()``, ``timeout=``, a cancelled parent, a shutdown that cancels running work) cancels the
body's task at its next ``await`` (a body blocked in a synchronous call finishes that call first).

One executor call carries a :class:`Batch`: one body, or — once bodies are seen to be tiny and a
backlog waits (executors._Futures) — several, which then run concurrently on that thread's loop,
each reporting its outcome as it ends. docs/executors.md describes it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import threading
import weakref
from typing import Any, Callable

from . import _remote

_local = threading.local()
# Every thread's loop, closed at exit: one left to the garbage collector during interpreter
# finalization fails to unregister its self-pipe ("Invalid file descriptor: -1").
_loops: "weakref.WeakSet[asyncio.AbstractEventLoop]" = weakref.WeakSet()
# The tasks a body starts, listed by the task factory of the thread's loop: each body's task runs
# in a context of its own where this names the body's list (its child tasks inherit the context).
_owner: contextvars.ContextVar = contextvars.ContextVar("distaff_local_async_owner", default=None)


@atexit.register
def _close_loops() -> None:
    for loop in list(_loops):
        if not loop.is_running() and not loop.is_closed():
            loop.close()


def _factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
    task = asyncio.Task(coro, loop=loop, **kwargs)
    started = _owner.get()
    if started is not None:
        started.append(task)
    return task


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
        loop.set_task_factory(_factory)
        _loops.add(loop)
    return loop


class Batch:
    """The handle of one executor call: its jobs and, once they started, their tasks. ``cancel``
    comes from any thread."""

    __slots__ = ("jobs", "fut", "loop", "tasks")

    def __init__(self, jobs: list) -> None:
        self.jobs = jobs
        self.fut: Any = None  # the executor's future of the call
        self.loop: Any = None
        self.tasks: list = [None] * len(jobs)

    def cancel(self, job: Any) -> None:
        """Stops ``job`` (already marked stopped): not started yet, it never starts; running, its
        task is cancelled at its next await. Publishing a task and then reading ``job.stopped`` (on
        the executor's thread) against setting ``stopped`` and then reading the task (here): one of
        the two sees the other."""
        try:
            i = self.jobs.index(job)
        except ValueError:
            return
        task, loop = self.tasks[i], self.loop
        if task is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # that thread's loop is closed: the body is over
                pass
        elif self.fut is not None and len(self.jobs) == 1:
            self.fut.cancel()  # still queued in the executor: it never runs


def run_batch(batch: Batch, report: Callable[[Any, Any], None]) -> None:
    """On an executor thread: runs the batch's bodies on this thread's loop, concurrently, and
    calls ``report(job, outcome)`` for each as it ends (outcome packed as _remote.run_local packs
    it; None for a job stopped before it started)."""
    loop = _thread_loop()
    jobs = batch.jobs
    left = [len(jobs)]
    all_done = loop.create_future()
    started_lists: list = []

    def finished(job: Any, started: list, task: asyncio.Task) -> None:
        # The body returned: what it left running is cancelled (asyncio.run's rule), then its outcome.
        for t in started:
            if t is not task and not t.done():
                t.cancel()
        if task.cancelled():
            outcome = None if job.stopped else _remote.local_outcome(False, asyncio.CancelledError())
        else:
            exc = task.exception()
            outcome = _remote.local_outcome(True, task.result()) if exc is None else _remote.local_outcome(False, exc)
        try:
            report(job, outcome)
        finally:
            left[0] -= 1
            if left[0] == 0 and not all_done.done():
                all_done.set_result(None)

    batch.loop = loop
    for i, job in enumerate(jobs):
        if job.stopped:
            report(job, None)
            left[0] -= 1
            continue
        started: list = []
        ctx = contextvars.copy_context()
        ctx.run(_owner.set, started)
        try:
            coro = job.fn(*job.args, **job.kwargs)
            task = loop.create_task(coro, context=ctx)
        except BaseException as exc:  # noqa: BLE001 - the call itself raised: that body's outcome
            report(job, _remote.local_outcome(False, exc))
            left[0] -= 1
            continue
        started_lists.append(started)
        task.add_done_callback(lambda t, job=job, started=started: finished(job, started, t))
        batch.tasks[i] = task
        if job.stopped:  # stopped meanwhile: cancel() may not have seen the task
            task.cancel()
    if left[0] > 0:
        loop.run_until_complete(all_done)
    leftovers = [t for started in started_lists for t in started if not t.done()]
    if leftovers:
        loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
