"""distaff: a workflow engine for plain Python functions, on a C++ fiber scheduler.

Decorate functions with ``@task`` / ``@workflow``; ``.submit()`` returns an :class:`Execution`
(a future-like handle, awaitable in asyncio); calling the function runs it and returns its value.
Every execution runs as a fiber: waiting suspends the fiber, never an OS thread.
"""

import inspect as _inspect
import sys as _sys

from . import _aio, _core
from ._core import Execution
from ._engine import Engine, ExecutionRecord, WorkflowScope, default_engine, shutdown, use_engine, workflow_scope
from ._errors import (
    CancelledError,
    CommandError,
    DeadlockError,
    DependencyError,
    Error,
    InternalError,
    Interrupted,
    SerializationError,
    ShutdownError,
    TimeoutError,
    WorkerLostError,
)
from ._progress import progress
from ._sync import Event, Lock, Semaphore
from ._viz import to_dot, to_mermaid
from ._retry import RetryPolicy
from ._task import RESERVED_KWARGS, Task, task, workflow
from ._wait import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    JoinError,
    as_completed,
    gather,
    join,
    wait,
)
from . import _asyncio, _cf_compat, _engine, _errors, _imports, executors, otel

_core._set_hooks(
    _asyncio.await_execution, _errors.log_callback_error, _asyncio.wait_on_loop_thread, _engine.await_returned
)
_aio.bind(globals(), "_get_running_loop")  # asyncio's, once a program imports it (_aio.py)
_cf_compat.install()  # concurrent.futures.wait/as_completed accept Executions
_imports.install()  # importlib's module locks per fiber, not per worker thread (docs/limits.md)


def sleep(seconds: float) -> None:
    """Sleeps without holding a thread: in a task body only the fiber waits.

    Outside task bodies (main thread, plain threads) it is ``time.sleep``. In ``async def`` code —
    called from a coroutine function, or anywhere inside an ``async def`` task body — it raises
    RuntimeError, since it would block the event loop: use ``await asyncio.sleep(seconds)``. Sync
    code that merely runs on a loop's thread (a Jupyter cell) still sleeps. ``time.sleep`` in a body
    holds its worker thread (docs/limits.md).
    """
    if _get_running_loop() is not None and (
        _core.current_execution() is not None or _sys._getframe(1).f_code.co_flags & _ASYNC_CODE
    ):
        raise RuntimeError(
            "distaff.sleep() in async def code would block the asyncio event loop: use "
            "`await asyncio.sleep(seconds)` there"
        )
    _core.sleep(seconds)


_ASYNC_CODE = _inspect.CO_COROUTINE | _inspect.CO_ASYNC_GENERATOR


def trace(path, engine=None):
    """Records what ``engine`` (default: the engine module-level tasks use here) does inside the
    block and writes ``path`` when it exits; see :meth:`Engine.trace`. ``.json``: Chrome trace
    (Perfetto), ``.jsonl``: event log, ``.html``: self-contained report."""
    if engine is None:
        engine = default_engine()
    elif not isinstance(engine, Engine):
        raise TypeError(f"trace() engine must be a distaff.Engine, not {type(engine).__name__}")
    return engine.trace(path)


def current_execution():
    """The Execution whose body is running here (on this fiber, or in this asyncio task for an
    ``async def`` task), or None outside task bodies."""
    return _core.current_execution()


__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "JoinError",
    "as_completed",
    "gather",
    "join",
    "wait",
    "WorkflowScope",
    "workflow_scope",
    "CancelledError",
    "CommandError",
    "DeadlockError",
    "DependencyError",
    "Engine",
    "Error",
    "Event",
    "Lock",
    "Semaphore",
    "Execution",
    "ExecutionRecord",
    "InternalError",
    "Interrupted",
    "RESERVED_KWARGS",
    "RetryPolicy",
    "SerializationError",
    "ShutdownError",
    "TimeoutError",
    "WorkerLostError",
    "Task",
    "current_execution",
    "default_engine",
    "shutdown",
    "sleep",
    "progress",
    "task",
    "to_dot",
    "to_mermaid",
    "trace",
    "use_engine",
    "workflow",
    "executors",
]
