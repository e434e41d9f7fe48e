"""distaff's exception types and the logging of errors nobody observed."""

from __future__ import annotations

import builtins
import concurrent.futures
import logging

logger = logging.getLogger("distaff")

__all__ = [
    "CancelledError",
    "DeadlockError",
    "DependencyError",
    "Error",
    "InternalError",
    "ShutdownError",
    "TimeoutError",
    "WorkerLostError",
]


class Error(Exception):
    """Base class of distaff's own errors (not of errors raised by task bodies)."""


class CancelledError(Error, concurrent.futures.CancelledError):
    """The execution was cancelled (raised by ``result()`` and ``exception()``)."""


class TimeoutError(Error, builtins.TimeoutError):  # noqa: A001 - distaff.TimeoutError on purpose
    """The execution was still running at its deadline (``timeout=``)."""


class DependencyError(Error):
    """A dependency gating this execution (``wait=``) failed or was cancelled; it never ran.

    The dependency's own exception is the ``__cause__``.
    """


class DeadlockError(Error, RuntimeError):
    """An execution would wait on itself, directly or through a chain of waits."""


class ShutdownError(Error, RuntimeError):
    """The engine is shut down (or was inherited across ``fork``) and accepts no work."""


class WorkerLostError(Error, RuntimeError):
    """The worker process running this execution's body died (``os._exit``, a signal such as
    SIGSEGV or SIGKILL, the OOM killer). Only that execution fails; ``retries=`` retry it."""


class InternalError(Error, RuntimeError):
    """A bug in distaff: an internal invariant broke. Please report it."""


def log_unobserved(batch: list) -> None:
    """Logs failed executions that were collected with nobody having retrieved their exception.

    Called at a safe point with a batch of ``(id, name, exception)`` (see py_execution.cpp).
    """
    for id_, name, exc in batch:
        logger.error(
            "distaff: execution %d (%s) failed and nobody retrieved its error",
            id_,
            name,
            exc_info=(type(exc), exc, exc.__traceback__),
        )


def log_callback_error(callback, execution, exc: BaseException) -> None:
    """Called when a done-callback raises: logged, like concurrent.futures does."""
    logger.error(
        "distaff: exception calling callback %r for %r",
        callback,
        execution,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
