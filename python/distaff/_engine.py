"""Engine: one scheduler (worker threads running fibers) and its lifecycle."""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import gc
import logging
import os
import threading
import weakref
from typing import Any, Callable

from . import _core, _elsewhere
from ._task import _MISSING, Task, _decorator

logger = logging.getLogger("distaff")

_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()
_default: "Engine | None" = None
_default_lock = threading.Lock()


class Engine:
    """A workflow engine: worker threads that run every execution as a fiber.

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
        history: how many finished executions ``graph()`` remembers (0 disables).
        executors: names for ``@task(executor=...)``: ``{"gpu": dask_client, ...}`` (docs/executors.md).
            The engine does not shut these down.
        processes: worker processes of the engine's own ``"processes"`` pool, started on first use
            and shut down with the engine (default: the number of usable cores).
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
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if max_workers is None:
            max_workers = max(32, workers)
        if isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(f"max_workers must be an int, not {type(max_workers).__name__}")
        if not workers <= max_workers <= 1024:
            raise ValueError(f"max_workers must be between workers ({workers}) and 1024, got {max_workers}")
        if stack_size is None:
            stack_size = _core.STACK_SIZE_DEFAULT
        if isinstance(stack_size, bool) or not isinstance(stack_size, int):
            raise TypeError(f"stack_size must be an int (bytes), not {type(stack_size).__name__}")
        if not _core.STACK_SIZE_MIN <= stack_size <= _core.STACK_SIZE_MAX:
            raise ValueError(f"stack_size must be between 64 KiB and 1 GiB ({_core.STACK_SIZE_MIN} and "
                             f"{_core.STACK_SIZE_MAX} bytes), got {stack_size}")
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            raise ValueError("history must be a non-negative int")
        self._executors = _elsewhere.Executors(executors, processes)
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
        self._workflows: dict[str, weakref.WeakSet] = {}
        self._workflows_lock = threading.Lock()
        self._tracked = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()
        _engines.add(self)

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
        """Runs a plain callable as an execution (no decoration, no signature check)."""
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
        return self._submit(fn, name, 0, False, args, kwargs, None)

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
        with self._workflows_lock:
            members = self._workflows.get(workflow_id)
            if members is None:
                members = self._workflows[workflow_id] = weakref.WeakSet()
            members.add(ex)
            self._tracked += 1
            if self._tracked % 4096 == 0:  # forget workflows whose executions are all gone
                for k in [k for k, v in self._workflows.items() if not v]:
                    del self._workflows[k]

    # -- workflow scopes ------------------------------------------------------------------------------

    def workflow_scope(self, workflow_id: str | None = None, *, cancel_on_error: bool = False) -> "WorkflowScope":
        """Tags every execution submitted inside the block (and, transitively, what those submit)
        with a workflow id. A context manager and an async context manager; yields the id.

        Args:
            workflow_id: the id; default ``wf-`` + 8 hex digits.
            cancel_on_error: an exception leaving the block cancels what is still running in it.
        """
        return WorkflowScope(self, workflow_id, cancel_on_error)

    def executions(self, workflow_id: str | None = None) -> list:
        """The live Execution objects tagged with ``workflow_id`` (all tagged ones if None)."""
        with self._workflows_lock:
            if workflow_id is None:
                out = [e for v in self._workflows.values() for e in v]
            else:
                out = list(self._workflows.get(workflow_id, ()))
        return sorted(out, key=lambda e: e.id)

    def cancel_workflow(self, workflow_id: str) -> int:
        """Cancels every unfinished execution tagged with ``workflow_id``; returns how many."""
        n = 0
        # Newest first: dependents (always newer than their dependencies) are cancelled before a
        # running dependency is, so they end cancelled rather than failed by DependencyError.
        for e in reversed(self.executions(workflow_id)):
            if not e.done() and e.cancel():
                n += 1
        return n

    # -- the engine's own event loop (async bodies submitted from outside a running loop) ----------

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                t = threading.Thread(target=run, name="distaff-event-loop", daemon=True)
                t.start()
                started.wait()
                self._loop_thread = t
                self._loop = loop
            return self._loop

    def _stop_event_loop(self) -> None:
        with self._loop_lock:
            loop, t = self._loop, self._loop_thread
            self._loop = self._loop_thread = None
        if loop is not None and t is not None:
            loop.call_soon_threadsafe(loop.stop)
            t.join()
            loop.close()

    # -- lifecycle ----------------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False, cancel_running: bool = False) -> None:
        """Stops accepting work.

        Args:
            wait: wait for every outstanding execution (queued, waiting and running) to finish, then
                join the workers. Ctrl-C interrupts the wait and leaves the engine running.
            cancel_pending: first cancel what has not started yet.
            cancel_running: also cancel the executions whose bodies are running now, like
                ``Execution.cancel()``: a body parked in a wait is woken with CancelledError, one
                running Python gets CancelledError at its next bytecode, one stuck in C code is
                marked cancelled and waited for. Implies ``cancel_pending``.
        """
        if self._capsule is None:  # inherited across fork(): its workers do not exist here
            self._closed = True
            return
        cancel = 2 if cancel_running else 1 if cancel_pending else 0
        _core.shutdown(self._capsule, wait, cancel)
        self._closed = True
        # Owned executors stop once their work is done (at once when wait: the engine has drained).
        self._executors.close(wait, self.wait_idle)
        if wait:
            self._joined = True
            self._stop_event_loop()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Waits until every execution submitted so far has finished. True if it did in time."""
        return _core.wait_idle(self._capsule, timeout)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown(wait=True)

    # -- introspection ------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters: live (unfinished), queued, fibers (started, unfinished), submitted, workers
        (configured), threads (worker threads now, elastic ones included), grown (elastic threads
        started so far), closed."""
        return self._core.stats()

    def graph(self) -> dict:
        """What ran: ``{"nodes": [...], "edges": [...]}`` over the finished executions remembered.

        Each node is a description dict; edges are ``{"source", "target", "kind"}`` with kind
        ``"parent"`` (source's body submitted target) or ``"dependency"`` (target got source as an
        argument).
        """
        nodes = []
        edges = []
        for (id_, name, kind, parent, deps, state, sub, start, fin) in self._core.history():
            nodes.append(
                {
                    "id": id_,
                    "name": name,
                    "kind": kind,
                    "parent_id": parent or None,
                    "dependencies": list(deps),
                    "state": state,
                    "submitted": sub / 1e9 if sub else None,
                    "started": start / 1e9 if start else None,
                    "finished": fin / 1e9 if fin else None,
                }
            )
            if parent:
                edges.append({"source": parent, "target": id_, "kind": "parent"})
            for d in deps:
                edges.append({"source": d, "target": id_, "kind": "dependency"})
        return {"nodes": nodes, "edges": edges}

    def clear_history(self) -> None:
        self._core.clear_history()


class WorkflowScope:
    """``with engine.workflow_scope() as wid:`` — see :meth:`Engine.workflow_scope`."""

    def __init__(self, engine: Engine, workflow_id: str | None, cancel_on_error: bool) -> None:
        if workflow_id is not None and (not isinstance(workflow_id, str) or not workflow_id):
            raise TypeError("workflow_id must be a non-empty string")
        from ._task import _new_workflow_id

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
    """The engine the module-level ``@task``/``@workflow`` use, created on first use."""
    global _default
    eng = _default
    if eng is not None and not eng._closed:
        return eng
    with _default_lock:
        if _default is None or _default._closed:
            _default = Engine()
        return _default


def shutdown(wait: bool = True, *, cancel_pending: bool = False, cancel_running: bool = False) -> None:
    """Shuts down the default engine (a later task call starts a new one); see Engine.shutdown."""
    global _default
    with _default_lock:
        eng, _default = _default, None
    if eng is not None:
        eng.shutdown(wait, cancel_pending=cancel_pending, cancel_running=cancel_running)


@atexit.register
def _shutdown_at_exit() -> None:
    # Rule 7 (ARCHITECTURE.md): every engine is stopped before interpreter finalisation, so no
    # worker touches the GIL afterwards. Outstanding work is waited for, like concurrent.futures;
    # a Ctrl-C during that wait cancels everything (running bodies as Execution.cancel() does) and
    # waits only for bodies that cannot be interrupted (stuck in C code).
    #
    # No KeyboardInterrupt may escape this hook: finalisation would then start with bodies still
    # running (measured: an abort). So while it runs, SIGINT only counts; it raises only inside the
    # engine wait, which is where it can act (the wait returns to cancel and wait again).
    import signal

    ctrl_c = {"hits": 0, "armed": False}

    def on_sigint(signum: int, frame: Any) -> None:
        ctrl_c["hits"] += 1
        if ctrl_c["armed"]:
            ctrl_c["armed"] = False
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread (an embedding calls exit hooks elsewhere)
        previous = None
    try:
        logged = 0
        for eng in list(_engines):
            if eng._joined or eng._capsule is None:
                continue
            # Engines shut down with wait=False are joined here too: their running bodies must end
            # before finalisation, or a fiber would take the GIL of a finalising interpreter.
            live = eng.stats()["live"]
            if live:
                logger.warning("distaff: waiting for %d outstanding execution(s) before exit", live)
            while True:
                if ctrl_c["hits"] > logged:
                    if logged == 0:
                        # The rule: the first Ctrl-C ended the program; one here cancels.
                        logger.warning("distaff: interrupted; cancelling outstanding executions")
                    else:  # bodies stuck in C code must still return before finalisation
                        logger.warning("distaff: still waiting for running bodies to finish")
                    logged = ctrl_c["hits"]
                cancel = 2 if ctrl_c["hits"] else 0
                try:
                    ctrl_c["armed"] = True
                    _core.shutdown(eng._capsule, True, cancel)
                    ctrl_c["armed"] = False
                    break
                except KeyboardInterrupt:
                    ctrl_c["armed"] = False
            eng._closed = eng._joined = True
            eng._stop_event_loop()
            eng._executors.close(True)
        _core.stop_timer()
        gc.collect()
        _core._drain_unobserved()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _after_fork_in_child() -> None:
    # Worker threads do not survive fork(). Engines from the parent refuse work with a clear
    # error (Engine._submit); the default engine is re-created on next use.
    global _default
    _default = None
    _core._after_fork_in_child()
    for eng in list(_engines):
        eng._capsule = None  # _core.submit raises ShutdownError naming fork
        eng._closed = True


os.register_at_fork(after_in_child=_after_fork_in_child)
