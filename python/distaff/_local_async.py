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
import concurrent.futures
import threading
import weakref
from typing import Any, Callable

from . import _remote

_local = threading.local()
_Task = asyncio.Task
_current_task = asyncio.current_task
# Every thread's loop, closed at exit: one left to the garbage collector during interpreter
# finalization fails to unregister its self-pipe ("Invalid file descriptor: -1").
_loops: "weakref.WeakSet[asyncio.AbstractEventLoop]" = weakref.WeakSet()


@atexit.register
def _close_loops() -> None:
    for loop in list(_loops):
        if not loop.is_running() and not loop.is_closed():
            loop.close()


class _Tracking:
    """A thread's record of which body started which task (the tasks a body leaves running are
    cancelled when it returns): ``owner`` maps a body's task and every task started under it to
    the body's task, ``started`` a body's task to the tasks started under it. The loop's task
    factory fills it in from the task running when a task is made. Nothing is recorded for a body
    that starts no task (the common case: no per-body allocation)."""

    __slots__ = ("owner", "started", "stopped_by")

    def __init__(self) -> None:
        self.owner: dict = {}
        self.started: dict = {}
        self.stopped_by: list = []  # the bodies' tasks whose code called loop.stop()


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
        tracking = _local.tracking = _Tracking()
        owner, started = tracking.owner, tracking.started

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
            task = _Task(coro, loop=loop, **kwargs)
            body = owner.get(_current_task(loop))
            if body is not None:
                owner[task] = body
                tasks = started.get(body)
                if tasks is None:
                    started[body] = [task]
                else:
                    tasks.append(task)
            return task

        loop.set_task_factory(factory)
        real_stop = loop.stop

        def stop() -> None:
            # Which body (its task, or one it started) stopped the loop: run_batch fails it.
            tracking.stopped_by.append(owner.get(_current_task(loop)))
            real_stop()

        try:
            loop.stop = stop  # type: ignore[method-assign]
        except AttributeError:  # a C-implemented loop: a stop there is not attributed to a body
            pass
        _loops.add(loop)
    return loop


_STOPPED = "Event loop stopped before Future completed."


def _run_until(loop: asyncio.AbstractEventLoop, fut: Any, batch: "Batch", tracking: _Tracking,
               report: Callable[[Any, Any], None]) -> None:
    """loop.run_until_complete(fut), through a body calling loop.stop(): as under asyncio.run,
    that body fails with RuntimeError("Event loop stopped before Future completed.") — unless it
    ended in the same turn of the loop (its outcome stands) — and its task is cancelled; the
    loop runs on for the others (before, the batch returned with their executions never ending)."""
    while True:
        try:
            loop.run_until_complete(fut)
            return
        except RuntimeError as exc:
            if fut.done() or str(exc) != _STOPPED:
                raise
        stopped, tracking.stopped_by[:] = list(tracking.stopped_by), []
        for task in dict.fromkeys(stopped):
            if task is None or task.done():
                continue
            try:
                job = batch.jobs[batch.tasks.index(task)]
            except ValueError:  # a task of an earlier batch left on this loop
                task.cancel()
                continue
            report(job, _remote.local_outcome(False, RuntimeError(_STOPPED)))
            task.cancel()


class Batch:
    """The handle of one executor call: its jobs and, once they started, their tasks. ``cancel``
    comes from any thread. ``done(batch, error)`` is called once, when run_batch returns or when
    the call ends without running it."""

    __slots__ = ("jobs", "done", "fut", "loop", "tasks", "ended", "t0", "ahead_of_it", "lock", "open")

    def __init__(self, jobs: list, done: Callable[["Batch", Any], None]) -> None:
        self.jobs = jobs
        self.done = done
        self.fut: Any = None  # the executor's future of the call
        self.loop: Any = None
        self.tasks: list = [None] * len(jobs)
        self.ended = False
        # While the call waits in the executor's queue, more jobs may join it (join()); closed
        # when a thread starts running it or the call ends without running.
        self.lock = threading.Lock()
        self.open = True

    def join(self, job: Any) -> bool:
        """Adds ``job`` to this batch if no thread has started it yet (any thread), as shipped
        with it. False: the batch is running or over; the job is untouched."""
        with self.lock:
            if not self.open:
                return False
            job.handle = self
            job.shipped()
            self.jobs.append(job)
            self.tasks.append(None)
        return True

    def close(self) -> None:
        with self.lock:
            self.open = False

    def end(self, error: Any) -> None:
        # Never concurrently: run_batch's end and the call's done callback run one after the
        # other on the executor's thread; a call that never ran ends only through the callback.
        if not self.ended:
            self.ended = True
            self.done(self, error)

    def call_ended(self, fut: Any) -> None:
        """Done callback of the executor's future."""
        # The future holds this callback and so this batch: let go of it, or the pair is a
        # reference cycle that keeps the batch's jobs, their asyncio tasks, the tasks' coroutines
        # and contexts alive until the cyclic garbage collector finds them (with thousands of tiny
        # bodies in flight that garbage was most of the collector's work).
        self.fut = None
        self.close()
        if self.ended:
            return
        try:
            fut.result(0)
            error = None
        except concurrent.futures.CancelledError:
            error = concurrent.futures.CancelledError()
        except BaseException as exc:  # noqa: BLE001 - the executor's own error
            error = exc
        self.end(error)

    def cancel(self, job: Any) -> None:
        """Stops ``job`` (already marked stopped): not started yet, it never starts (run_batch
        looks before it starts a body and after); running, its task is cancelled at its next
        await. Publishing a task and then reading ``job.stopped`` (on the executor's thread)
        against setting ``stopped`` and then reading the task (here): one of the two sees the
        other."""
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


async def _body(job: Any, tracking: _Tracking, report: Callable[[Any, Any], None], left: list, batch: Batch,
                i: int) -> None:
    """One body, as the task of the thread's loop: its outcome reported as it ends, what it left
    running cancelled (asyncio.run's rule) and waited for by run_batch. Its own task is let go of
    as it ends (not held until the whole batch is over): a batch of hundreds of tiny bodies kept
    every task, coroutine and context alive for the garbage collector to scan and promote."""
    me = _current_task()
    try:
        try:
            if job.stopped:  # stopped after run_batch looked: reported as stopped, below
                raise asyncio.CancelledError
            value = await job.fn(*job.args, **job.kwargs)
        finally:
            started = tracking.started.get(me)
            if started is not None:
                for t in started:
                    if not t.done():
                        t.cancel()
    except asyncio.CancelledError as exc:
        # Stopped through its execution (reported as such), or cancelled by the body itself.
        outcome = None if job.stopped else _remote.local_outcome(False, exc)
    except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the execution
        outcome = _remote.local_outcome(False, exc)
    else:
        outcome = _remote.local_outcome(True, value)
    try:
        report(job, outcome)
    finally:
        batch.tasks[i] = None
        tracking.owner.pop(me, None)  # (tasks it started stay mapped to it until the batch ends)
        left[0] -= 1
        if left[0] == 0:
            left[1].set_result(None)


def run_batch(batch: Batch, report: Callable[[Any, Any], None]) -> None:
    """On an executor thread: runs the batch's bodies on this thread's loop, concurrently, and
    calls ``report(job, outcome)`` for each as it ends (outcome packed as _remote.run_local packs
    it; None for a job stopped before it started or while it ran)."""
    batch.close()  # the jobs that joined it so far are its jobs
    loop = _thread_loop()
    tracking = _local.tracking
    owner = tracking.owner
    batch.loop = loop
    left = [0, loop.create_future()]
    for i, job in enumerate(batch.jobs):
        if job.stopped:
            report(job, None)
            continue
        # asyncio.Task directly: the bodies themselves need not go through the task factory.
        task = _Task(_body(job, tracking, report, left, batch, i), loop=loop)
        owner[task] = task
        left[0] += 1
        batch.tasks[i] = task
        # A job stopped from here on is seen by its body as it starts (or its task is cancelled
        # at its next await by Batch.cancel). Not task.cancel() here: a task cancelled before its
        # first step never runs its coroutine's code, whose finally counts it done (run_batch
        # then waited for it for ever).
    task = None  # (this frame holds no body's task: each is let go of as it ends)
    if not left[0]:
        batch.end(None)
        return
    try:
        _run_until(loop, left[1], batch, tracking, report)
        # What the bodies started and left running (cancelled as each body ended; started
        # holds only this batch's bodies: a thread runs one batch at a time)
        leftovers = [t for started in tracking.started.values() for t in started if not t.done()]
        if leftovers:
            _run_until(loop, asyncio.gather(*leftovers, return_exceptions=True), batch, tracking, report)
    finally:
        # A thread runs one batch at a time: everything recorded is this batch's (done now, or
        # abandoned with a loop that stopped).
        owner.clear()
        tracking.started.clear()
        tracking.stopped_by.clear()
        batch.end(None)
