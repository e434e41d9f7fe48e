"""distaff's exception types and the logging of errors nobody observed."""

from __future__ import annotations

import builtins
import concurrent.futures
import functools
import logging
import sys
from types import TracebackType

from . import _aio

logger = logging.getLogger("distaff")

__all__ = [
    "CancelledError",
    "DeadlockError",
    "DependencyError",
    "Error",
    "InternalError",
    "Interrupted",
    "SerializationError",
    "ShutdownError",
    "TimeoutError",
    "WorkerLostError",
]


class Error(Exception):
    """Base class of distaff's own errors (not of errors raised by task bodies)."""


class CancelledError(Error, concurrent.futures.CancelledError):
    """The execution was cancelled (raised by ``result()`` and ``exception()``).

    It is a ``concurrent.futures.CancelledError`` and an ``asyncio.CancelledError``: an Execution is
    a future of both kinds, and each protocol's code recognises its cancellation (docs/asyncio.md).
    """


def _adopt_asyncio_cancelled(base: type) -> None:
    # asyncio's base is added when asyncio is imported (_aio.py): `import distaff` does not import it.
    if not issubclass(CancelledError, base):
        CancelledError.__bases__ = (Error, concurrent.futures.CancelledError, base)


_aio.install(_adopt_asyncio_cancelled)


class TimeoutError(Error, builtins.TimeoutError):  # noqa: A001 - distaff.TimeoutError on purpose
    """The execution was still running at its deadline (``timeout=``)."""


class Interrupted(BaseException):
    """Raised again in a body that caught its execution's CancelledError or TimeoutError and ran on.

    A cancel or timeout interrupts a running body with the execution's own ``CancelledError`` or
    ``TimeoutError``, both ``Exception`` subclasses, so an ``except Exception:`` block (a retry
    loop, logging's error handler) can swallow it. The execution has ended all the same. Once such
    a body has left the handler of the first exception, each of its waits raises this one at once,
    and while it runs Python, distaff raises this one in it after 10 ms, then at doubling intervals
    up to 0.32 s, until the body ends. It derives from
    ``BaseException``, as ``KeyboardInterrupt`` does, so ``except Exception`` lets it through. The
    body's ``finally`` blocks and ``with`` exits run, and nobody else sees it: the execution's outcome
    is already set.
    """


class DependencyError(Error):
    """A dependency gating this execution (``wait=``) failed or was cancelled; it never ran.

    The dependency's own exception is the ``__cause__``.
    """


class DeadlockError(Error, RuntimeError):
    """An execution would wait on itself, directly or through a chain of waits."""


class ShutdownError(Error, RuntimeError):
    """The engine is shut down (or was inherited across ``fork``) and accepts no work; or the
    executor a body was sent to (``executor=``) was shut down before the body finished (the
    message names it: a closed Dask client, a pool shut down, also at interpreter exit)."""


class SerializationError(Error, TypeError):
    """A body sent to another process (``executor=``) or one of its arguments cannot be serialized
    (a lock, a socket, an open file): the message names which. That execution fails without running
    and is not retried (another attempt would fail alike); nothing else is affected."""


class WorkerLostError(Error, RuntimeError):
    """The worker process running this execution's body died (``os._exit``, a signal such as
    SIGSEGV or SIGKILL, the OOM killer). Only that execution fails; ``retries=`` retry it."""


class CommandError(Error):
    """The command of an executable task (``@task(executable=True)``) exited with a non-zero
    status. ``returncode`` is that status (negative: killed by that signal), ``stdout`` and
    ``stderr`` what it wrote (text), ``cmd`` its argument vector."""

    def __init__(self, cmd: list, returncode: int, stdout: str, stderr: str, name: str | None = None) -> None:
        tail = stderr.strip()
        if len(tail) > 500:
            tail = "..." + tail[-500:]
        who = f"task {name!r}: " if name else ""
        super().__init__(f"{who}command {cmd[0]!r} exited with status {returncode}" + (f": {tail}" if tail else ""))
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def __reduce__(self):
        return (_rebuild_command_error, (self.cmd, self.returncode, self.stdout, self.stderr, str(self)))


def _rebuild_command_error(cmd, returncode, stdout, stderr, message):
    err = CommandError(cmd, returncode, stdout, stderr)
    err.args = (message,)
    return err


class InternalError(Error, RuntimeError):
    """A bug in distaff: an internal invariant broke. Please report it."""


class _TaskNote(str):
    """distaff's note on a body's exception: ``distaff: raised in task 'load' (execution 7)``.

    A plain string to everyone else (it pickles as one). It also remembers the traceback the
    exception had when the note was added (``head``) and the executions distaff has handed the
    exception to since (``receivers``: ``result()``, ``exception()``, ``await`` in a body), which is
    how :func:`_note_failure` tells an error propagating from execution to execution (a note per
    execution it crossed, the whole traceback) from one exception instance shared by several
    executions and raised afresh by each (reset, or it would grow without bound).
    """

    def __reduce__(self):
        return (str, (str(self),))


_RECEIVERS_KEPT = 64  # handed to more executions than that at once: the oldest are forgotten
_NOTES_KEPT = 16  # distaff notes on one exception object at most (fan-in: see _note_failure)


class _MoreNote(str):
    def __reduce__(self):
        return (str, (str(self),))


def _last_note(notes: list) -> "_TaskNote | None":
    for n in reversed(notes):
        if type(n) is _TaskNote:
            return n
    return None


def _cut(tb, head):
    """The traceback entries of ``tb`` before ``head`` (copies: entries are never modified, others
    may hold them); ``tb`` itself if ``head`` is not in it."""
    prefix = []
    t = tb
    while t is not None and t is not head:
        prefix.append(t)
        t = t.tb_next
    if t is None:
        return tb
    new = None
    for t in reversed(prefix):
        new = TracebackType(new, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return new


def _join(prefix, tail):
    """Copies of ``prefix``'s entries followed by ``tail``."""
    entries = []
    t = prefix
    while t is not None:
        entries.append(t)
        t = t.tb_next
    new = tail
    for t in reversed(entries):
        new = TracebackType(new, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return new


def _note_failure(exc: BaseException, text: str, execution_id: int) -> None:
    """Called when execution ``execution_id`` fails with ``exc`` (its body raised it): adds the note.

    - First time distaff sees the object, or it reached this execution through distaff (the body
      got it from ``result()``/``exception()``/``await`` of another execution and let it propagate):
      one more note, the traceback untouched — the caller sees every task it crossed.
    - The same object raised afresh by an execution it was not handed to — a module-level ``ERR``
      raised by every call: CPython prepends each raise to the traceback the object already
      carries, so it would grow by a few frames per execution forever (and hold their frames), and
      distaff's notes with it. The notes and traceback entries left by earlier raises are dropped:
      the exception describes its latest raise, with one note.
    """
    notes = getattr(exc, "__notes__", None)
    if notes is not None and type(notes) is not list:
        return  # an exception that refuses notes keeps its own
    tb = exc.__traceback__
    receivers: dict = {}
    prev = _last_note(notes) if notes else None
    if prev is not None:
        if execution_id in prev.receivers:
            receivers = dict(prev.receivers)
            del receivers[execution_id]
        else:
            notes[:] = [n for n in notes if type(n) not in (_TaskNote, _MoreNote)]
            cut = _cut(tb, prev.head)
            if cut is not tb:
                exc.__traceback__ = tb = cut
    if notes is not None and prev is not None and execution_id not in prev.receivers:
        pass  # reset above: a fresh raise starts a new list
    elif notes is not None and sum(1 for n in notes if type(n) is _TaskNote) >= _NOTES_KEPT:
        # One error let through by very many executions (a failed configuration every step
        # re-raises): the first _NOTES_KEPT name where it went, then one line says there were more.
        if not any(type(n) is _MoreNote for n in notes):
            notes.append(_MoreNote("distaff: ... and further executions it reached (not listed)"))
        last = _last_note(notes)
        last.receivers = receivers
        # Its traceback likewise: this execution's frames, then where the error was first raised —
        # not the frames of every execution it went through since.
        first = next(n for n in notes if type(n) is _TaskNote)
        mine = _cut(tb, last.head)
        if mine is not tb:
            exc.__traceback__ = _join(mine, first.head)
        last.head = exc.__traceback__  # the next one cuts here
        return
    note = _TaskNote(text)
    note.head = tb
    note.receivers = receivers
    if notes is None:
        exc.add_note(note)
    else:
        notes.append(note)


def _note_forward(exc: BaseException, text: str, execution_id: int) -> None:
    """Execution ``execution_id`` forwarded to one that failed with ``exc`` (its body returned that
    Execution): the error passes through it as if the body had received and re-raised it — one
    more note, nothing reset. An execution that already noted it (an ``async def`` or executor
    body, whose promise it follows, noted its own failure when it settled) gets no second note."""
    notes = getattr(exc, "__notes__", None)
    if notes is not None:
        if type(notes) is not list:
            return
        last = _last_note(notes)
        if last is not None and str(last) == text:
            return
    _handed_out(exc, execution_id)
    _note_failure(exc, text, execution_id)


def _handed_out(exc: BaseException, execution_id: int) -> None:
    """distaff gave ``exc`` (a failed execution's error) to the code of execution ``execution_id``."""
    notes = getattr(exc, "__notes__", None)
    if type(notes) is not list:
        return
    prev = _last_note(notes)
    if prev is not None:
        r = prev.receivers
        r[execution_id] = None
        if len(r) > _RECEIVERS_KEPT:
            del r[next(iter(r))]


_unobserved_listeners: list = []


def log_unobserved(batch: list) -> None:
    """Logs failed executions that were collected with nobody having retrieved their exception.

    Called at a safe point with a batch of ``(id, name, exception)`` (see cpp/bindings/unobserved.cpp).
    Each listener in ``_unobserved_listeners`` (the pytest plugin's fixture) also gets the batch.
    """
    for listener in list(_unobserved_listeners):
        try:
            listener(batch)
        except Exception:  # noqa: BLE001 - a listener must not stop the logging
            logger.exception("distaff: unobserved-failure listener %r failed", listener)
    # One error object failing many executions (fan-in) is logged once, with a count of the rest.
    groups: dict = {}
    for id_, name, exc in batch:
        groups.setdefault(id(exc), []).append((id_, name, exc))
    for members in groups.values():
        id_, name, exc = members[0]
        if len(members) == 1:
            logger.error(
                "distaff: execution %d (%s) failed and nobody retrieved its error",
                id_,
                name,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        else:
            logger.error(
                "distaff: execution %d (%s) and %d more failed with this error and nobody retrieved it "
                "(executions %s)",
                id_,
                name,
                len(members) - 1,
                ", ".join(str(m[0]) for m in members[1:11]) + (", ..." if len(members) > 11 else ""),
                exc_info=(type(exc), exc, exc.__traceback__),
            )


def log_callback_error(callback, execution, exc: BaseException) -> None:
    """Called when a done-callback run by a completion raises: logged, like concurrent.futures does.
    A KeyboardInterrupt or SystemExit is logged too (it has no caller to reach there: the callback
    ran on whichever thread finished the execution, usually a worker); the message says so."""
    if isinstance(exc, Exception):
        logger.error(
            "distaff: exception calling callback %r for %r",
            callback,
            execution,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return
    logger.error(
        "distaff: callback %r for %r raised %s on the thread that finished the execution; it was not "
        "propagated (it has no caller there) and the program goes on",
        callback,
        execution,
        type(exc).__name__,
        exc_info=(type(exc), exc, exc.__traceback__),
    )


def pass_interrupts_through_logging() -> None:
    """Wraps ``logging.Handler.handleError`` once (called by the bindings before any body is
    interrupted: a running one, or a parked one, which raises from its wait). A handler's ``emit()`` catches ``Exception`` and
    calls ``handleError``, which prints "--- Logging error ---" and returns: a cancel or timeout
    that landed inside ``emit()`` (where a body that logs spends its I/O, and so where the timer
    thread gets the GIL) was printed as a logging error and swallowed. The wrapper re-raises the
    interruption of the body running here, so it goes on out of the logging call (the handler's
    lock is given back by ``Handler.handle``'s ``finally``); any other error is handled as before."""
    prev = logging.Handler.handleError
    if getattr(prev, "_distaff_passes_interrupts", False):
        return
    from . import _core

    own = _core._interrupt_of_this_body

    @functools.wraps(prev)
    def handleError(self, record):  # noqa: N802 (logging's name)
        exc = sys.exception()
        if exc is not None and own(type(exc)):
            raise  # the handled interruption, with its traceback
        return prev(self, record)

    handleError._distaff_passes_interrupts = True  # type: ignore[attr-defined]
    logging.Handler.handleError = handleError  # type: ignore[method-assign]
