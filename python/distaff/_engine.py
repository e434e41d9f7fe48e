"""Engine: one scheduler (worker threads running fibers) and its lifecycle."""

from __future__ import annotations

import atexit
import concurrent.futures
import contextvars
import gc
import importlib
import itertools
import logging
import math
import os
import sys
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Iterator

from . import _aio, _asyncio, _core, _elsewhere, _execlog, _trace, _validate
from ._errors import ShutdownError
from . import _task as _task_mod
from ._task import _HERE, _MISSING, Task, _decorator, is_async_callable

logger = logging.getLogger("distaff")

_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()
_default: "Engine | None" = None
_default_lock = threading.Lock()
_exiting = False  # the exit hook has begun

# use_engine(): the engine module-level tasks submit to in this context. _routing turns true at the
# first use_engine() and stays so (a body started from inside the block may submit after the block
# ended: its context still routes), so programs that never route pay one global load per submit.
_routed: contextvars.ContextVar = contextvars.ContextVar("distaff_use_engine", default=None)
_routing = False



def _cancel_level(cancel_pending: bool, cancel_running: bool) -> "_core.ShutdownCancel":
    if cancel_running:
        return _core.ShutdownCancel.RUNNING
    return _core.ShutdownCancel.PENDING if cancel_pending else _core.ShutdownCancel.NONE

class Engine(concurrent.futures.Executor):
    """A workflow engine: worker threads that run every execution as a fiber.

    Also a ``concurrent.futures.Executor``: ``submit``, ``map`` and ``shutdown(wait,
    cancel_futures=)`` keep the stdlib meanings, so ``loop.run_in_executor(engine, fn, *args)`` and
    libraries that take an Executor can use it.

    Args:
        workers: OS threads running fibers. Default 1: for bodies that hold the GIL a second worker
            only adds GIL hand-offs (docs/performance.md); use more for bodies that release it.
        max_workers: elastic growth. While every worker is stuck in a blocking call (``time.sleep``,
            a blocking socket, C code that released the GIL) and work is queued, more worker threads
            are started, up to this many in all; they retire after 2 s idle. Default
            ``max(32, workers)``; ``max_workers=workers`` turns growth off.
        stack_size: size of each fiber's stack in bytes, 64 KiB to 1 GiB. Default 8 MiB, a thread's:
            a body can run what a thread runs. Only the pages a body touches cost memory, and every
            stack has a guard page below it while its fiber runs (docs/limits.md).
        history: how many finished executions the engine remembers for ``graph()`` and
            ``executions()`` (0 disables): the newest ones, a few hundred bytes each (no results,
            no exception objects); ``clear_history()`` forgets them.
        executors: names for ``@task(executor=...)``: ``{"gpu": dask_client, ...}`` (docs/executors.md).
            The engine does not shut these down. ``"processes"`` is reserved (ValueError).
        processes: worker processes of the engine's own ``"processes"`` pool, started on first use
            and shut down with the engine, or once the engine is dropped and collected with none
            of its executions outstanding (default: the number of usable cores).
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        max_workers: int | None = None,
        stack_size: int | None = None,
        history: int = 100_000,
        executors: dict | None = None,
        processes: int | None = None,
    ) -> None:
        if workers is None:
            workers = 1
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"workers must be an int, not {type(workers).__name__}")
        if not 1 <= workers <= 1024:
            raise ValueError(f"workers must be between 1 and 1024, got {workers}")
        if max_workers is None:
            max_workers = max(32, workers)
        if isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(f"max_workers must be an int, not {type(max_workers).__name__}")
        if not workers <= max_workers <= 1024:
            raise ValueError(f"max_workers must be between workers ({workers}) and 1024, got {max_workers}")
        if stack_size is None:
            stack_size = _core.STACK_SIZE_DEFAULT
        _validate.count(stack_size, "stack_size", _core.STACK_SIZE_MIN)
        if stack_size > _core.STACK_SIZE_MAX:
            raise ValueError(f"stack_size must be at most 1 GiB ({_core.STACK_SIZE_MAX} bytes), not {stack_size}")
        _validate.count(history, "history")
        if history > 1 << 40:
            raise ValueError(f"history must be at most 2**40 executions, got {history}")
        self._executors = _elsewhere.Executors(executors, processes)
        # A dropped engine (never shut down) lets go of the pools it owns: its jobs hold it while
        # they are queued or running (Job.engine), so once it is collected none is outstanding.
        weakref.finalize(self, self._executors.dropped, os.getpid()).atexit = False
        _aio.refresh()  # (asyncio loaded past distaff's import hook: see docs/internals/imports.md)
        self._core = _core.EngineCore(workers, max_workers, stack_size, history)
        self._capsule = self._core.capsule()
        self._pid = os.getpid()
        self._closed = False
        self._joined = False  # workers joined (shutdown with wait=True)
        self.workers = workers
        self.max_workers = max_workers
        # The active workflow id: one ContextVar per engine, so engines never see each other's
        # scopes; it follows contextvars across threads, fibers and asyncio tasks.
        self._scope: contextvars.ContextVar = contextvars.ContextVar(f"distaff_scope_{id(self):x}", default=None)
        self._workflows: dict[str, dict] = {}  # workflow id -> {execution id: weakref.ref(execution)}
        self._prune_at = 4096  # _tracked at which dead references are next pruned
        self._workflows_lock = threading.Lock()
        self._tracked = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_end: Callable[[], None] | None = None
        self._loop_lock = threading.Lock()
        _engines.add(self)
        _execlog.engine_started(self)  # DEBUG records on "distaff.executions" when that logger is on

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<distaff.Engine workers={self.workers} {state}>"

    # -- decorators and submission -------------------------------------------------------------

    def task(self, fn: Any = _MISSING, /, **options: Any) -> Any:
        """Like ``distaff.task`` (same options) but bound to this engine."""
        return _decorator("task", fn, self, **options)

    def workflow(self, fn: Any = _MISSING, /, **options: Any) -> Any:
        """Like ``distaff.workflow`` (same options) but bound to this engine."""
        return _decorator("workflow", fn, self, **options)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> _core.Execution:
        """Runs ``fn(*args, **kwargs)`` as an execution of this engine and returns its Execution.

        A plain callable runs as is (no decoration, no signature check; the ``Executor.submit``
        contract). A decorated task (``engine.submit(my_task, x)``) runs on this engine instead of
        its own, with its options and its argument check. Raises ShutdownError (a RuntimeError,
        as ``Executor.submit`` after shutdown) once the engine is shut down."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, not {type(fn).__name__}")
        if isinstance(fn, Task):
            # A decorated task submitted to this engine explicitly: same checks, this engine.
            clone = object.__new__(Task)
            clone.__dict__.update(fn.__dict__)
            clone._engine = self
            clone.submit = clone._make_submit()
            return clone.submit(*args, **kwargs)
        name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        if is_async_callable(fn):  # an async callable runs as an async body, as task() runs it
            return self._submit_async(fn, name, args, kwargs)
        return self._submit(fn, name, 0, False, args, kwargs, None)

    def _submit_async(self, fn, name, args, kwargs) -> _core.Execution:
        # As Task._submit_general submits an async body: on the submitter's running loop (bound to
        # it) or else the engine's loop thread; docs/asyncio.md.
        mod = _task_mod._async_body or _task_mod._load_async_body()  # imported once, not per call
        bind_loop = _aio.running_loop()
        if bind_loop is not None and bind_loop is not self._loop and not mod._trace._hubs:
            # On its loop's thread with nothing between submit and start: the lean hand-off.
            here = mod._HereBody(fn, bind_loop, self, name, "task")
            ex = self._submit(here, name, _HERE, False, args, kwargs, None)
            if here.me is not ex:
                here._queued_submit(ex)  # queued after all (e.g. the inline nesting bound)
            return ex
        body = mod._AsyncBody(fn, bind_loop, self, name, False, "task", None)
        # On its loop's thread the hand-off runs here, at once (as Task._submit_general's does).
        ex = self._submit(body, name, _HERE if bind_loop is not None else 0, False, args, kwargs, None)
        if bind_loop is not None:
            mod._bind_to_submitting_loop(body.binding, bind_loop, ex)
        return ex

    def map(
        self, fn: Callable, *iterables: Iterable, timeout: float | None = None, chunksize: int = 1
    ) -> Iterator:
        """``concurrent.futures.Executor.map``: ``fn`` over the items of ``iterables`` in parallel.

        Every call is submitted now; the returned iterator yields the results in order, as each
        becomes available. An exception raised by a call is raised when the iterator reaches it.
        With ``timeout`` (seconds, counted from this call) reaching an item not done by then raises
        TimeoutError. Closing the iterator early (or an exception from it) cancels the calls not
        yet reached. ``chunksize`` > 1 runs that many consecutive calls in one execution (fewer
        executions for many tiny calls).
        """
        if not callable(fn):
            raise TypeError(f"map() needs a callable, not {type(fn).__name__}")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout):
                raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"chunksize must be an int, not {type(chunksize).__name__}")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables)
        fs: list = []
        try:
            if chunksize == 1:
                for args in calls:
                    fs.append(self.submit(fn, *args))
            else:
                name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
                if isinstance(fn, Task) or not is_async_callable(fn):
                    while chunk := list(itertools.islice(calls, chunksize)):
                        fs.append(self._submit(_call_chunk, name, 0, False, (fn, chunk), None, None))
                else:  # an async callable: each chunk is one async body awaiting its calls in turn
                    while chunk := list(itertools.islice(calls, chunksize)):
                        fs.append(self._submit_async(_acall_chunk, name, (fn, chunk), None))
        except BaseException:
            for f in fs:
                f.cancel()
            raise
        return _map_results(fs, end, chunksize > 1)

    def _submit(self, fn, name, kind, wait, args, kwargs, workflow_id) -> _core.Execution:
        if workflow_id is None:
            workflow_id = self._scope.get()
            if workflow_id is None:
                return _core.submit(self._capsule, fn, name, kind, wait, args, kwargs or None, None)
        token = self._scope.set(workflow_id)
        try:
            ex = _core.submit(self._capsule, fn, name, kind, wait, args, kwargs or None, workflow_id)
        finally:
            self._scope.reset(token)
        self._track(workflow_id, ex)
        return ex

    def _track(self, workflow_id: str, ex: _core.Execution) -> None:
        # Weak references *without* a callback (not a WeakSet): a callback is Python code run
        # wherever the last reference goes, typically right after result() returns, and a Ctrl-C
        # pending there is raised inside the callback, where Python prints and drops it ("Exception
        # ignored in ... _remove"): a loop calling a workflow could not be interrupted (an
        # outsider's find). Dead references are pruned as the registry grows instead.
        with self._workflows_lock:
            members = self._workflows.get(workflow_id)
            if members is None:
                members = self._workflows[workflow_id] = {}
            members[ex.id] = weakref.ref(ex)
            self._tracked += 1
            if self._tracked >= self._prune_at:
                live = 0
                for k in list(self._workflows):
                    v = self._workflows[k]
                    for i in [i for i, r in v.items() if r() is None]:
                        del v[i]
                    if v:
                        live += len(v)
                    else:
                        del self._workflows[k]  # forget workflows whose executions are all gone
                self._tracked = live
                self._prune_at = 2 * live + 4096

    # -- workflow scopes ------------------------------------------------------------------------------

    def workflow_scope(self, workflow_id: str | None = None, *, cancel_on_error: bool = False) -> "WorkflowScope":
        """Tags every execution submitted inside the block (and, transitively, what those submit)
        with a workflow id. A context manager and an async context manager; yields the id.

        Args:
            workflow_id: the id; default ``wf-`` + 8 hex digits.
            cancel_on_error: an exception leaving the block cancels what is still running in it.
        """
        return WorkflowScope(self, workflow_id, cancel_on_error)

    def _live_executions(self, workflow_id: str | None = None) -> list:
        """The live Execution objects tagged with ``workflow_id`` (all tagged ones if None)."""
        with self._workflows_lock:
            if workflow_id is None:
                refs = [r for v in self._workflows.values() for r in v.values()]
            else:
                refs = list(self._workflows.get(workflow_id, {}).values())
        out = [e for e in (r() for r in refs) if e is not None]
        return sorted(out, key=lambda e: e.id)

    def cancel_workflow(self, workflow_id: str) -> int:
        """Cancels every unfinished execution tagged with ``workflow_id``; returns how many."""
        n = 0
        # Newest first: dependents (always newer than their dependencies) are cancelled before a
        # running dependency is, so they end cancelled rather than failed by DependencyError.
        for e in reversed(self._live_executions(workflow_id)):
            if not e.done() and e.cancel():
                n += 1
        return n

    # -- the engine's own event loop (async bodies submitted from outside a running loop) ----------

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        import asyncio

        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()
                stoppers = _watch_stops(loop)
                real_stop = loop.stop if not stoppers else stoppers[0]
                ending: list = []

                def end() -> None:  # the engine stops its loop (_stop_event_loop)
                    ending.append(True)
                    real_stop()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    # A body that calls loop.stop() (as a script under asyncio.run might) must not
                    # wedge the loop every async body of the engine shares: that body fails as under
                    # asyncio.run, the loop runs on (docs/reliability.md).
                    while True:
                        loop.run_forever()
                        if ending:
                            return
                        _loop_stopped_by_a_body(stoppers)

                t = threading.Thread(target=run, name="distaff-event-loop", daemon=True)
                t.start()
                started.wait()
                self._loop_thread = t
                self._loop_end = end
                self._loop = loop
            return self._loop

    def _stop_event_loop(self) -> None:
        with self._loop_lock:
            loop, t, end = self._loop, self._loop_thread, self._loop_end
            self._loop = self._loop_thread = self._loop_end = None
        if loop is not None and t is not None:
            # The engine's executions are finished, but a cancelled body's coroutine may still be
            # unwinding (its cancel is a callback on this loop), and a body may have left tasks of
            # its own. As asyncio.run does, cancel what is left and let it end before the loop
            # stops: a task still pending when the loop closes is never collected, and its frame
            # keeps the executions it refers to alive (seen under load: 1 shutdown in 20).
            import asyncio

            async def finish_tasks() -> None:
                tasks = [x for x in asyncio.all_tasks() if x is not asyncio.current_task()]
                for x in tasks:
                    if not x.cancelling():  # one being cancelled already is left to unwind
                        x.cancel()
                if tasks:  # bounded: a task that ignores its cancellation does not hang shutdown
                    await asyncio.wait(tasks, timeout=_LOOP_FINISH_S)

            try:
                done = asyncio.run_coroutine_threadsafe(finish_tasks(), loop)
                done.add_done_callback(lambda _: loop.call_soon_threadsafe(end))
            except RuntimeError:  # the loop is closed already: its thread has ended
                pass
            t.join()
            loop.close()

    # -- lifecycle ----------------------------------------------------------------------------------

    def shutdown(
        self,
        wait: bool = True,
        *,
        cancel_futures: bool = False,
        cancel_pending: bool = False,
        cancel_running: bool = False,
    ) -> None:
        """Stops accepting work, then (with ``wait``) waits for the outstanding work and joins
        the workers.

        From now on ``submit`` raises ShutdownError, except from this engine's own running bodies
        (a workflow finishing its steps); children they submit now are cancelled if their parent
        finishes first. Idempotent, safe from several threads at once and from a body of another
        engine (the wait suspends that body's fiber); from one of this engine's own bodies it raises
        RuntimeError.

        Args:
            wait: wait for every outstanding execution (queued, waiting and running) to finish, then
                join the workers. Ctrl-C interrupts the wait; the engine stays closed and its work
                runs on (the exit waits for it). Without ``wait`` the work finishes all the same.
            cancel_futures: ``Executor.shutdown``'s name for ``cancel_pending``.
            cancel_pending: first cancel what has not started yet.
            cancel_running: also cancel the executions whose bodies are running now, like
                ``Execution.cancel()``: a body parked in a wait is woken with CancelledError, one
                running Python gets CancelledError at its next bytecode, one stuck in C code is
                marked cancelled and waited for. Implies ``cancel_pending``.
        """
        cancel_pending = _validate.flag(cancel_pending, "cancel_pending") | _validate.flag(cancel_futures, "cancel_futures")
        if self._capsule is None:  # inherited across fork(): its workers do not exist here
            self._closed = True
            return
        if wait:
            _asyncio.cancel_stranded(self)  # bodies of a closed or stopped loop can never finish
            _asyncio.check_engine_wait(self, "Engine.shutdown(wait=True)")
        cancel = _cancel_level(cancel_pending, cancel_running)
        try:
            _core.shutdown(self._capsule, wait, cancel)
        finally:
            # Closed even when the wait was interrupted (the engine stops accepting work first);
            # not when the call was refused (from one of its own bodies).
            self._closed = self._closed or self._core.stats()["closed"]
        # Owned executors stop once their work is done (at once when wait: the engine has drained).
        self._executors.close(wait, self.wait_idle)
        if wait:
            self._joined = True
            self._stop_event_loop()
            _trace.engine_stopped(self)  # execution logging, OpenTelemetry: what is left

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Waits until every execution submitted so far has finished. True if it did in time.

        From one of this engine's own bodies it raises DeadlockError: that body's execution is
        outstanding until it returns, so the engine can never become idle while it waits."""
        _asyncio.check_engine_wait(self, "Engine.wait_idle()")
        return _core.wait_idle(self._capsule, timeout)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown(wait=True)

    # -- lifecycle inside a coroutine ---------------------------------------------------------------

    async def ashutdown(self, wait: bool = True, *, cancel_pending: bool = False, cancel_running: bool = False) -> None:
        """``shutdown()`` for coroutines: ``await engine.ashutdown()``. Same arguments.

        Stops accepting work at once (and cancels what the arguments ask), then waits for the
        outstanding executions without blocking the running event loop, so async bodies bound to
        this loop keep running meanwhile. Cancelling the awaiting task stops the wait; the engine
        stays closed (the exit hook waits for what is left).
        """
        if self._capsule is None:
            self._closed = True
            return
        if wait:
            _asyncio.check_self_wait(self, "await Engine.ashutdown()")
        _asyncio.cancel_stranded(self)
        cancel = _cancel_level(cancel_pending, cancel_running)
        _core.shutdown(self._capsule, False, cancel)  # closes and cancels; does not wait
        self._closed = True
        if wait:
            await _asyncio.wait_idle(self)
            self.shutdown(wait=True)  # idle: joins the workers and the engine's loop thread
        else:
            self._executors.close(False, self.wait_idle)  # owned pools stop once the engine is idle

    async def __aenter__(self) -> "Engine":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.ashutdown()

    # -- introspection ------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters: live (unfinished), queued, fibers (started, unfinished), submitted, finished
        (ever; counted as the state turns final, before done-callbacks run — live drops only after
        them), workers (configured), threads (worker threads now, elastic ones included), grown
        (elastic threads started so far), closed."""
        return self._core.stats()

    def graph(self, workflow_id: str | None = None) -> dict:
        """What ran: ``{"nodes": [...], "edges": [...]}`` over the finished executions remembered
        (the engine's history: the last ``history`` ones, see ``Engine(history=)``).

        Each node is a description dict, with ``workflow_id`` (or None) and, for a failed
        execution, ``error``: ``"ValueError: message"``. Edges are ``{"source", "target", "kind"}``
        with kind ``"parent"`` (source's body submitted target) or ``"dependency"`` (target got
        source as an argument). ``workflow_id`` keeps only the nodes tagged with it (and the edges
        between them and to them).
        """
        _validate.workflow_id(workflow_id)
        nodes = []
        edges = []
        for node in self._history(workflow_id):
            nodes.append(node)
            id_ = node["id"]
            if node["parent_id"]:
                edges.append({"source": node["parent_id"], "target": id_, "kind": "parent"})
            for d in node["dependencies"]:
                edges.append({"source": d, "target": id_, "kind": "dependency"})
        return {"nodes": nodes, "edges": edges}

    def _history(self, workflow_id: str | None = None) -> list:
        out = []
        for (id_, name, kind, parent, deps, state, sub, start, fin, wid, error) in self._core.history(workflow_id):
            node = {
                "id": id_,
                "name": name,
                "kind": kind,
                "parent_id": parent or None,
                "dependencies": list(deps),
                "state": state,
                "workflow_id": wid,
                "submitted": sub / 1e9 if sub else None,
                "started": start / 1e9 if start else None,
                "finished": fin / 1e9 if fin else None,
            }
            if error is not None:
                node["error"] = error
            out.append(node)
        return out

    def executions(self, workflow_id: str | None = None) -> list:
        """Every execution tagged with ``workflow_id`` (every tagged one if None) that this engine
        still knows of, sorted by id: the live Execution objects (all unfinished ones, and finished
        ones something still references), and an :class:`ExecutionRecord` for each finished one in
        the engine's history whose Execution object is gone. ``Engine(history=)`` bounds how many
        finished executions are remembered."""
        _validate.workflow_id(workflow_id)
        live = self._live_executions(workflow_id)
        seen = {e.id for e in live}
        out = list(live)
        if workflow_id is None:
            rows = [n for n in self._history() if n["workflow_id"] is not None]
        else:
            rows = self._history(workflow_id)
        out.extend(ExecutionRecord(n) for n in rows if n["id"] not in seen)
        return sorted(out, key=lambda e: e.id)

    def trace(self, path: "str | os.PathLike[str]") -> "Any":
        """Records everything this engine does inside the block and writes ``path`` when it exits,
        also by an exception or Ctrl-C. The suffix picks the format: ``.json`` (Chrome Trace Event
        Format, for Perfetto and chrome://tracing), ``.jsonl`` (one event per line) or ``.html`` (a
        self-contained report). A context manager and an async context manager; yields the trace,
        whose ``events`` hold the event dicts after the block (docs/observability.md)."""
        from . import _trace

        return _trace.Trace(path, self)

    def clear_history(self) -> None:
        self._core.clear_history()


def _watch_stops(loop: asyncio.AbstractEventLoop) -> list:
    """Makes ``loop.stop()`` record which async body called it (the body whose context the call
    runs in: its task or a task it started). Returns ``[real_stop, body or None, ...]``: the loop's
    own stop method, then one entry per stop; an empty list for a loop whose stop cannot be replaced
    (a C-implemented loop: a stop there is not attributed)."""
    from ._async_body import _current_body

    real_stop = loop.stop
    stoppers: list = [real_stop]

    def stop() -> None:
        stoppers.append(_current_body.get(None))
        real_stop()

    try:
        loop.stop = stop  # type: ignore[method-assign]
    except AttributeError:
        return []
    return stoppers


def _loop_stopped_by_a_body(stoppers: list) -> None:
    """On the engine's loop thread, after run_forever() returned though the engine did not stop the
    loop: the bodies that stopped it fail with asyncio.run's error for that, and the loop runs on."""
    bodies = stoppers[1:]
    del stoppers[1:]
    found = False
    for body in dict.fromkeys(bodies):  # once each, in order
        if body is not None:
            found = True
            body._loop_stopped()
    if not found:
        logger.warning("distaff: something stopped the engine's event loop (loop.stop()); it runs on")


class ExecutionRecord:
    """A finished execution from the engine's history whose Execution object no longer exists
    (listed by ``engine.executions()``). Read-only: its result is gone with the object; ``error``
    keeps a failure's ``"Type: message"``."""

    __slots__ = ("description",)

    def __init__(self, description: dict) -> None:
        self.description = description

    id = property(lambda self: self.description["id"])
    name = property(lambda self: self.description["name"])
    kind = property(lambda self: self.description["kind"])
    state = property(lambda self: self.description["state"])
    workflow_id = property(lambda self: self.description["workflow_id"])
    parent_id = property(lambda self: self.description["parent_id"])
    error = property(lambda self: self.description.get("error"))

    def done(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return self.state == "cancelled"

    def cancel(self) -> bool:
        return False

    def __repr__(self) -> str:
        extra = f" error={self.error!r}" if self.error else ""
        return f"<distaff.ExecutionRecord {self.id} {self.name!r} {self.state}{extra}>"


class WorkflowScope:
    """``with engine.workflow_scope() as wid:`` — see :meth:`Engine.workflow_scope`."""

    def __init__(self, engine: Engine, workflow_id: str | None, cancel_on_error: bool) -> None:
        _validate.workflow_id(workflow_id)
        from ._scopes import _new_workflow_id

        self.engine = engine
        self.workflow_id = workflow_id or _new_workflow_id()
        self.cancel_on_error = cancel_on_error
        self._tokens: list = []

    def __enter__(self) -> str:
        self._tokens.append(self.engine._scope.set(self.workflow_id))
        return self.workflow_id

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.engine._scope.reset(self._tokens.pop())
        if exc_type is not None and self.cancel_on_error:
            self.cancel()

    async def __aenter__(self) -> str:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)

    def cancel(self) -> int:
        """Cancels every unfinished execution in this scope; returns how many."""
        return self.engine.cancel_workflow(self.workflow_id)

    def executions(self) -> list:
        return self.engine.executions(self.workflow_id)


def workflow_scope(workflow_id: str | None = None, *, cancel_on_error: bool = False) -> WorkflowScope:
    """``default_engine().workflow_scope(...)``."""
    return default_engine().workflow_scope(workflow_id, cancel_on_error=cancel_on_error)


def default_engine() -> Engine:
    """The engine the module-level ``@task``/``@workflow`` use: the one of the innermost
    ``use_engine()`` block of this context if any, else the default engine, created on first use."""
    global _default
    if _routing:
        eng = _routed.get()
        if eng is not None:
            return eng
    eng = _default
    if eng is not None and not eng._closed:
        return eng
    with _default_lock:
        if _default is None or _default._closed:
            if _exiting:  # the exit is shutting the default engine down: no new one replaces it
                raise ShutdownError("the interpreter is exiting: the default engine is shut down")
            _default = Engine()
            if not _routing:  # tasks' C submit (Submitter) goes straight to it from now on
                _core._publish_default(_default._capsule, _default._scope)
        return _default


class use_engine:  # noqa: N801 - used like a function: ``with distaff.use_engine(engine):``
    """Routes module-level ``@task``/``@workflow`` submissions to ``engine`` inside the block.

    A context variable: it holds for the code of the block and for everything started from it that
    copies the context — the bodies of the executions submitted there (so nested calls go to
    ``engine`` too, on any worker), asyncio tasks created there, ``contextvars.copy_context().run``.
    A plain ``threading.Thread`` starts with an empty context (Python's rule): run its function in
    ``copy_context().run`` to carry the routing along. Tasks bound to an engine (``engine.task``)
    keep their engine. Nests; a context manager and an async context manager; yields ``engine``.
    """

    def __init__(self, engine: Engine) -> None:
        if not isinstance(engine, Engine):
            raise TypeError(f"use_engine() needs a distaff.Engine, not {type(engine).__name__}")
        self.engine = engine
        self._tokens: list = []

    def __enter__(self) -> Engine:
        global _routing
        if not _routing:
            _routing = True
            _core._default_routed()  # the default engine now depends on the context
        self._tokens.append(_routed.set(self.engine))
        return self.engine

    def __exit__(self, *exc_info: Any) -> None:
        _routed.reset(self._tokens.pop())

    async def __aenter__(self) -> Engine:
        return self.__enter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        self.__exit__(*exc_info)


def _call_chunk(fn: Callable, chunk: list) -> list:
    return [fn(*args) for args in chunk]


async def _acall_chunk(fn: Callable, chunk: list) -> list:
    return [await fn(*args) for args in chunk]


async def _await_it(coro: Any) -> Any:
    return await coro


def await_returned(coro: Any, capsule: Any) -> Any:
    """The bindings' hook for a body (a plain callable, not ``async def``) that returned a coroutine
    object: in its fiber, the coroutine is handed to the engine's loop as an async body would be
    (docs/concepts.md), and the promise it returns is what the execution follows — its result is the
    coroutine's, a cancel or timeout of the execution cancels the coroutine."""
    try:
        engine = next((e for e in list(_engines) if e._capsule is capsule), None)
        if engine is None:  # (every execution's engine is alive while its body runs)
            raise RuntimeError("the engine of this execution is gone; its coroutine cannot run")
        from ._async_body import _AsyncBody

        me = _core.current_execution()
        return _AsyncBody(_await_it, None, engine, me.name if me is not None else "coroutine")(coro)
    except BaseException:
        coro.close()  # never run: no "coroutine was never awaited" warning on top of the error
        raise


def _map_results(fs: list, end: float | None, chunked: bool) -> Iterator:
    # A generator separate from map(): map() submits everything at once, as the stdlib does.
    # Popping drops each Execution (and its result) as soon as it was yielded.
    fs.reverse()
    try:
        while fs:
            f = fs[-1]
            r = f.result() if end is None else f.result(max(0.0, end - time.monotonic()))
            fs.pop()
            if chunked:
                yield from r
            else:
                yield r
    finally:
        for f in fs:
            f.cancel()


def shutdown(
    wait: bool = True, *, cancel_futures: bool = False, cancel_pending: bool = False, cancel_running: bool = False
) -> None:
    """Shuts down the default engine (a later task call starts a new one); see Engine.shutdown."""
    global _default
    with _default_lock:
        eng = _default
        if eng is not None and eng._capsule is not None and _core.on_own_worker(eng._capsule):
            raise RuntimeError("an engine cannot be shut down from one of its own tasks")
        _default = None
        _core._publish_default(None, None)
    if eng is not None:
        eng.shutdown(wait, cancel_futures=cancel_futures, cancel_pending=cancel_pending, cancel_running=cancel_running)


def _program_interrupted() -> bool:
    """True when the program is ending because a KeyboardInterrupt reached the top level (the
    interpreter stored it as sys.last_exc / sys.last_value before running the exit hooks)."""
    exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(exc, KeyboardInterrupt)


class _ExitWait:
    """The state of the exit hook's wait: Ctrl-C and exceptions raised by signal handlers.

    Rule 7 (docs/internals/scheduler.md, "The rules"): every engine is stopped before interpreter finalisation, so no worker
    touches the GIL afterwards. So no exception may escape the hook while a body still runs
    (measured: an abort). The first interruption — a Ctrl-C, an exception a user's signal handler
    raises (a SIGTERM handler calling sys.exit), or a program that is ending *because* of a Ctrl-C —
    cancels everything outstanding, running bodies as Execution.cancel() does, and waits for the
    bodies to end. The next one gives up on bodies that cannot end (stuck in a blocking call): the
    process exits at once, without finalising the interpreter, which is what keeps that safe.
    """

    def __init__(self) -> None:
        self.hits = 0  # SIGINTs received while the hook runs
        self.handled = 0  # of which acted upon
        self.armed = False  # a SIGINT raises KeyboardInterrupt (only inside the engine wait)
        self.cancelling = False
        self.exit_exc: BaseException | None = None  # what a signal handler raised: the exit status
        self.early = False  # a Ctrl-C may interrupt the join of the threads at exit (see on_early_sigint)
        self.announced = False  # "cancelling outstanding executions" was said
        self.waiting_said = False  # "waiting for N outstanding execution(s)" was said

    def on_sigint(self, signum: int, frame: Any) -> None:
        self.hits += 1
        if self.cancelling:
            # The next Ctrl-C after the one that cancelled: exit now, wherever the main thread is.
            # The cancel runs the cancelled executions' done-callbacks here, on the main thread:
            # raising into one of those would wait for the callback to let it through (distaff
            # defers it to the main thread's next line, errors.cpp), and before that the process
            # was kept for the callback's whole run (outsider, session 11: a callback that sleeps).
            self.handled = self.hits
            self.armed = False
            self.abandon()
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt

    def on_early_sigint(self, signum: int, frame: Any) -> None:
        """The SIGINT handler from _cancel_before_thread_joins until the exit hook takes over.

        A Ctrl-C interrupts Python's join of the non-daemon threads (threading._shutdown), as it
        would without distaff. Anywhere else — another exit hook, or the first lines of
        _shutdown_at_exit before it installs its own handler — it is only counted: an exception
        there would escape the exit hook before it stops the engines (a second Ctrl-C landing at
        its first line did that once in CI, and the process died without giving up on the stuck
        bodies). The exit hook's wait treats a counted one as the second Ctrl-C."""
        self.hits += 1
        if self.early and _in_thread_joins(frame):
            raise KeyboardInterrupt

    def interrupted(self, exc: BaseException) -> None:
        """An interruption arrived (exc: KeyboardInterrupt, or what a signal handler raised)."""
        self.handled = self.hits
        if not isinstance(exc, KeyboardInterrupt) and self.exit_exc is None:
            self.exit_exc = exc
        if self.cancelling:
            self.abandon()
        self.cancelling = True
        try:
            if isinstance(exc, KeyboardInterrupt):
                logger.warning("distaff: interrupted; cancelling outstanding executions")
            else:
                logger.warning("distaff: %r during the exit wait; cancelling outstanding executions", exc)
        except BaseException as again:  # noqa: B036 — a further signal while logging: that one abandons
            self.interrupted(again)

    def exit_status(self) -> int:
        exc = self.exit_exc
        if isinstance(exc, SystemExit):
            if exc.code is None:
                return 0
            if isinstance(exc.code, int):
                return exc.code & 0xFF
            print(exc.code, file=sys.stderr)
            return 1
        import traceback

        traceback.print_exception(exc)
        return 1

    def abandon(self) -> None:
        """Exits now, leaving the bodies that did not end: without finalising the interpreter (a
        body that returned from its blocking call would take the GIL of a finalising one)."""
        left = 0
        try:
            left = sum(max(_core.engine_live(c)) for c in _core._open_engines())
        except BaseException:  # a further signal: exit all the same
            pass
        try:
            logger.warning("distaff: exiting now; %d execution(s) did not end", left)
        except BaseException:
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        if self.exit_exc is not None:
            os._exit(self.exit_status())
        import signal

        try:  # die of SIGINT, as CPython does after an unhandled KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        finally:
            os._exit(128 + signal.SIGINT)


def _in_thread_joins(frame: Any) -> bool:
    """True when `frame` runs in threading._shutdown (the join of the non-daemon threads at exit),
    directly or through a call it makes."""
    code = getattr(getattr(threading, "_shutdown", None), "__code__", None)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


_EXIT_QUIET_S = 1.0
_LOOP_FINISH_S = 5.0  # how long an engine's event loop waits for its cancelled tasks when it stops  # the exit wait is announced only once it lasted this long


def _stop_engine_at_exit(capsule: Any, w: _ExitWait) -> None:
    # Short work left at the end of a script (the usual case) finishes silently; a wait that lasts
    # over a second says what the program is waiting for.
    announce = _core.engine_live(capsule)[0] > 0
    while True:
        try:
            w.armed = True
            if w.hits > w.handled:  # a Ctrl-C arrived while the wait was not armed
                w.armed = False
                raise KeyboardInterrupt
            if announce and not w.cancelling:
                announce = False
                _core.shutdown(capsule, False, _core.ShutdownCancel.NONE)  # closes first, as the full shutdown below does
                if not _core.wait_idle(capsule, _EXIT_QUIET_S) and not w.waiting_said:
                    # Every engine's, said once (outsider, session 12: with several engines it gave
                    # the first one's count only, and again for each engine).
                    live = sum(_core.engine_live(c)[0] for c in _core._open_engines())
                    if live:
                        w.waiting_said = True
                        logger.warning("distaff: waiting for %d outstanding execution(s) before exit", live)
            cancel = _cancel_level(False, w.cancelling)
            _core.shutdown(capsule, True, cancel)
            w.armed = False
            return
        except BaseException as e:  # noqa: B036 — Ctrl-C, or whatever a signal handler raised
            w.armed = False
            w.interrupted(e)


# Set by _cancel_before_thread_joins after a Ctrl-C: the exit wait's state (it has counted the
# Ctrl-Cs since) and the SIGINT handler to restore; _shutdown_at_exit carries on with both.
_early_exit: "tuple[_ExitWait, Any] | None" = None


def _cancel_before_thread_joins() -> None:
    """Runs when the main thread is done, before Python joins the non-daemon threads (and so before
    the atexit hooks). After a Ctrl-C that ended the program, outstanding work is cancelled here
    already: a non-daemon thread waiting for an execution would otherwise be joined — forever —
    before _shutdown_at_exit could cancel it. Without an interruption it does nothing: the threads
    finish their waits as usual.

    From here on the exit wait counts Ctrl-Cs: a second one still interrupts Python's join of the
    threads (as it would without distaff), and the exit hook then treats it as the second Ctrl-C of
    its wait (it gives up on bodies stuck in blocking calls and exits)."""
    if _early_exit is None:
        if not _program_interrupted():
            _watch_the_joins()
            return
        if not _cancel_early("distaff: the program was interrupted; cancelling outstanding executions"):
            return
    w = _early_exit[0]
    if not w.cancelling:
        return
    # From here a Ctrl-C interrupts the join of the threads that follows. One that arrived while
    # the engines were being cancelled (here, or by _wait_before_executors_stop and the pools'
    # exit hooks after it) was only counted: it interrupts the join now.
    w.early = True
    if w.hits > w.handled:
        raise KeyboardInterrupt


def _cancel_early(message: str, exc: BaseException | None = None) -> bool:
    """Cancels the outstanding work of every engine before Python joins the threads (a Ctrl-C
    ended the program, or interrupted _wait_before_executors_stop); from here on the exit wait's
    state counts Ctrl-Cs (_early_exit). False if it could not take SIGINT over (not the main
    thread)."""
    global _early_exit, _exiting
    import signal

    # Work a thread submits from now on is refused (ShutdownError): the default engine is not
    # re-created, a new Engine() fails outside a body, and the engines below are closed.
    _exiting = True
    _core._refuse_new_engines(1)

    w = _ExitWait()
    w.cancelling = True
    if exc is not None and not isinstance(exc, KeyboardInterrupt):
        w.exit_exc = exc  # what a signal handler raised: the exit status
    try:
        previous = signal.signal(signal.SIGINT, w.on_early_sigint)
    except ValueError:  # not the main thread
        return False
    _early_exit = (w, previous)
    try:
        capsules = _core._open_engines()
        if any(max(_core.engine_live(c)) for c in capsules):
            logger.warning(message)
            w.announced = True
        for capsule in capsules:
            _core.shutdown(capsule, False, _core.ShutdownCancel.RUNNING)  # closes and cancels; no wait
    except Exception:  # noqa: BLE001 - the exit hook below still runs
        pass
    except BaseException as again:  # noqa: B036 — a signal handler raised (a SIGTERM's sys.exit, in a
        # done-callback the cancel ran, say): the next interruption after the one that cancels gives
        # up on the bodies, as in the exit wait (before, it was dropped and the exit waited for them).
        w.interrupted(again)
    # From here a Ctrl-C interrupts Python's join of the threads — the pools' exit hooks joining
    # their threads included (a body stuck there would otherwise hold the exit for good).
    w.early = True
    return True


# -- executors that stop before the exit wait ----------------------------------------------------
#
# concurrent.futures stops its pools in a hook of threading._shutdown (threading._register_atexit),
# which runs before every atexit hook, so before _shutdown_at_exit; distributed closes its clients
# and clusters in atexit hooks registered after distaff's (atexit runs the last registered first).
# A fire-and-forget body still queued in distaff's window for such an executor at the end of the
# script was then refused ("cannot schedule new futures after interpreter shutdown"), or cancelled
# by the client's close. So an engine that ships bodies to an executor it does not own waits for
# its outstanding work in a threading hook that runs before those: threading runs its hooks last
# registered first, and this one is registered (again) whenever such an executor is first used and
# something was registered since.

_hook_lock = threading.Lock()
_hook_at = -1  # len(threading._threading_atexits) right after this module's last registration
# A task was given an executor object (or an engine named some): a workflow still running when the
# script ends may use it for the first time during the exit, so the early wait below is registered
# now, and it waits for every engine, not only those that have used an executor already.
_user_executor_declared = False


def _declare_user_executor() -> None:
    """A task or an engine names an executor distaff does not own (called at decoration, at
    task.options() and at Engine(executors=...))."""
    global _user_executor_declared
    _user_executor_declared = True
    _wait_before_executors_stop_hook()


def _wait_before_executors_stop_hook() -> None:
    """Makes _wait_before_executors_stop run before the exit hooks of the executors in use
    (called by _elsewhere.Executors when an engine first uses an executor it does not own)."""
    global _hook_at
    hooks = getattr(threading, "_threading_atexits", None)
    if hooks is None or _hook_at == len(hooks):
        return
    try:  # their exit hooks registered first (so they run after ours)
        for module in ("concurrent.futures.process", "concurrent.futures.thread"):
            importlib.import_module(module)
    except RuntimeError:  # "can't register atexit after shutdown": the exit has begun, too late
        return

    with _hook_lock:
        if _hook_at == len(hooks):
            return
        try:
            threading._register_atexit(_wait_before_executors_stop)  # type: ignore[attr-defined]
        except (AttributeError, RuntimeError):  # another interpreter; the interpreter is exiting
            return
        _hook_at = len(hooks)


def _wait_before_executors_stop() -> None:
    """The exit wait, early, for the engines that use an executor they do not own (a
    concurrent.futures pool, a Dask client, Ray): it runs while those can still take bodies, so
    fire-and-forget work on them completes, as docs/reliability.md promises. Quiet under a second,
    then it logs what it waits for, as the exit hook does. A Ctrl-C (or what a signal handler
    raises) during the wait cancels the outstanding work of every engine, as one in the exit wait
    does; a program that ended by a Ctrl-C cancels at once. Engines stay open: a non-daemon thread
    may still submit (work for a pool that has stopped by then fails with ShutdownError)."""
    if _early_exit is not None:  # handled by a copy of this hook registered later (so run earlier)
        return
    if _program_interrupted():
        _cancel_early("distaff: the program was interrupted; cancelling outstanding executions")
        return
    announce = True
    try:
        while True:
            # Not an engine of the parent in a forked child: a multiprocessing worker runs
            # threading's exit hooks (this one included) when it ends.
            engines = [e for e in list(_engines)
                       if e._capsule is not None and e._pid == os.getpid()
                       and (_user_executor_declared or e._executors.has_user_runners())]
            busy = [e for e in engines if not _core.wait_idle(e._capsule, 0)]
            if not busy:
                return
            for eng in busy:
                _asyncio.cancel_stranded(eng)  # bodies of closed or stopped loops never finish
                if announce and not _core.wait_idle(eng._capsule, _EXIT_QUIET_S):
                    announce = False
                    live = sum(_core.engine_live(e._capsule)[0] for e in busy if e._capsule is not None)
                    if live:
                        logger.warning("distaff: waiting for %d outstanding execution(s) before exit", live)
                _core.wait_idle(eng._capsule, None)
    except BaseException as exc:  # noqa: B036 — Ctrl-C, or whatever a signal handler raised
        if isinstance(exc, KeyboardInterrupt):
            message = "distaff: interrupted; cancelling outstanding executions"
        else:
            message = f"distaff: {exc!r} during the exit wait; cancelling outstanding executions"
        _cancel_early(message, exc)
        if _early_exit is not None:
            _early_exit[0].handled = _early_exit[0].hits


def _watch_the_joins() -> None:
    """No Ctrl-C so far. One that arrives while Python joins the non-daemon threads interrupts the
    join, as it would without distaff, and is remembered: the exit hook then cancels the
    outstanding work instead of waiting for it (before, Python reported the KeyboardInterrupt as
    "ignored" and the exit hook waited for every body). Only with Python's own SIGINT handler in
    place — an inherited SIG_IGN or the program's own handler is left alone — and only when an
    engine is open."""
    global _early_exit
    import signal

    try:
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler or not _core._open_engines():
            return
        w = _ExitWait()
        w.early = True
        previous = signal.signal(signal.SIGINT, w.on_early_sigint)
    except (ValueError, RuntimeError):  # not the main thread; the interpreter is going away
        return
    _early_exit = (w, previous)


try:  # the hook concurrent.futures uses for the same reason (private, in CPython 3.9+)
    threading._register_atexit(_cancel_before_thread_joins)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # another interpreter, or imported during shutdown
    pass


@atexit.register
def _shutdown_at_exit() -> None:
    # Every engine of this process that is not joined yet — dropped ones whose work still runs,
    # and ones shut down with wait=False, included — waits for its outstanding work (like
    # concurrent.futures), or cancels it after an interruption (see _ExitWait).
    import signal

    global _exiting
    _exiting = True  # no new default engine from now on (default_engine)
    _core._refuse_new_engines(1)  # nor a new engine, except in a body (a workflow running at exit)
    w, early_previous = _early_exit if _early_exit is not None else (_ExitWait(), None)
    w.early = False
    try:
        if early_previous is None and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            previous = None  # SIGINT ignored (inherited, or the program's choice): it stays ignored
        else:
            previous = signal.signal(signal.SIGINT, w.on_sigint)
    except ValueError:  # not the main thread (an embedding calls exit hooks elsewhere)
        previous = None
    if early_previous is not None:
        previous = early_previous  # the handler from before _cancel_before_thread_joins
    try:
        if _program_interrupted():
            w.cancelling = True  # one Ctrl-C ends the program: its work does not keep it alive
            if not w.announced and any(max(_core.engine_live(c)) for c in _core._open_engines()):
                logger.warning("distaff: the program was interrupted; cancelling outstanding executions")
        while True:
            try:
                engines = {id(e._capsule): e for e in list(_engines) if e._capsule is not None}
                capsules = _core._open_engines()
                if not capsules:
                    # None left: refuse new ones (a daemon thread would start bodies that run
                    # during finalisation), then make sure none slipped in before that.
                    _core._refuse_new_engines(2)
                    if _core._open_engines():
                        continue
                    _core._wait_reaped()  # dropped engines: their workers joined
                    break
                for capsule in capsules:
                    eng = engines.get(id(capsule))
                    if eng is not None:
                        _asyncio.cancel_stranded(eng)  # bodies of closed or stopped loops never finish
                    _stop_engine_at_exit(capsule, w)
                    if eng is not None:
                        eng._closed = eng._joined = True
                        eng._stop_event_loop()
                        _trace.engine_stopped(eng)
                        eng._executors.close(True)  # the process pool it owns
                        eng._executors.release_user()  # and the user's executors: not held past the exit
            except BaseException as e:  # noqa: B036 — a signal handler raised outside the wait
                w.armed = False
                w.interrupted(e)
        try:
            _core.stop_timer()
            gc.collect()
            _core._drain_unobserved()
        except BaseException as e:  # noqa: B036 — a signal handler raised: nothing runs any more
            if w.exit_exc is None and not isinstance(e, KeyboardInterrupt):
                w.exit_exc = e
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if w.exit_exc is not None:
        # A signal handler asked for this exit status (sys.exit(143) in a SIGTERM handler): an
        # exception in an exit hook cannot set it, so the process exits here, the engines stopped.
        status = w.exit_status()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(status)


def _end_forked_body(exc: BaseException | None) -> int:
    """The copy of a body in a process that body forked has ended (called by the core, on its
    fiber, which then ends the process with the status returned). The child ends as a program
    whose main code this was: a return is status 0, ``sys.exit(n)`` is n (``sys.exit("msg")``
    prints the message, 1), an uncaught exception prints its traceback and is 1 (a
    KeyboardInterrupt ends the child by SIGINT, as it ends a program). The non-daemon threads the
    body started in the child are waited for, then the engines made in the child finish their work
    (shutdown); the Python streams are flushed. atexit handlers do not run, as in the child of a
    forked thread (docs/limits.md#fork)."""
    status = 0
    interrupted = False
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code
        else:
            try:
                print(code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - stderr is closed: the status still says it
                pass
            status = 1
    elif exc is not None:
        try:
            sys.excepthook(type(exc), exc, exc.__traceback__)
        except BaseException:  # noqa: BLE001
            pass
        status = 1
        interrupted = isinstance(exc, KeyboardInterrupt)
    if not interrupted:
        # As a program's end does (threading._shutdown): wait for the non-daemon threads the body
        # started here — not for threads Python did not start (_DummyThread: the workers of engines
        # made here, which cannot be joined). A Ctrl-C stops the wait; the child exits all the same.
        me = threading.current_thread()
        for t in threading.enumerate():
            if t is me or t.daemon or isinstance(t, threading._DummyThread) or not t.is_alive():
                continue
            try:
                t.join()
            except Exception:  # noqa: BLE001 - not joinable: the others still are
                continue
            except BaseException:  # noqa: BLE001 - a Ctrl-C
                break
    for eng in list(_engines):
        if eng._capsule is not None and eng._pid == os.getpid():
            try:
                eng.shutdown()
            except BaseException:  # noqa: BLE001 - a Ctrl-C during the wait: exit all the same
                pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    if interrupted:
        import signal

        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:  # noqa: BLE001
            pass
        status = 128 + signal.SIGINT
    return status


def _after_fork_in_child() -> None:
    # Worker threads do not survive fork(). Engines from the parent refuse work with a clear
    # error (Engine._submit); the default engine is re-created on next use.
    global _default, _exiting
    _default = None
    _exiting = False
    _core._after_fork_in_child()
    for eng in list(_engines):
        eng._capsule = None  # _core.submit raises ShutdownError naming fork
        eng._closed = True


os.register_at_fork(after_in_child=_after_fork_in_child)
