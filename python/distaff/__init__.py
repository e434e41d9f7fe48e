"""distaff: a workflow engine for plain Python functions, on a C++ fiber scheduler.

Decorate functions with ``@task`` / ``@workflow``; ``.submit()`` returns an :class:`Execution`
(a future-like handle, awaitable in asyncio); calling the function runs it and returns its value.
Every execution runs as a fiber: waiting suspends the fiber, never an OS thread.
"""

from . import _core
from ._core import Execution
from ._engine import Engine, default_engine, shutdown
from ._errors import (
    CancelledError,
    DeadlockError,
    DependencyError,
    Error,
    InternalError,
    ShutdownError,
)
from ._task import RESERVED_KWARGS, Task, task, workflow
from . import _asyncio, _errors

_core._set_hooks(_asyncio.await_execution, _errors.log_callback_error)


def current_execution():
    """The Execution whose body is running on this fiber, or None outside task bodies."""
    return _core.current_execution()


__version__ = "0.1.0"

__all__ = [
    "CancelledError",
    "DeadlockError",
    "DependencyError",
    "Engine",
    "Error",
    "Execution",
    "InternalError",
    "RESERVED_KWARGS",
    "ShutdownError",
    "Task",
    "current_execution",
    "default_engine",
    "shutdown",
    "task",
    "workflow",
]
