"""``@task(executable=True)``: the body returns a command; distaff runs it as a subprocess.

The command runs under the body's asyncio task (an executable task is an ``async`` task whatever
its body is), so while the process runs the execution holds no worker thread and no fiber: the
loop waits on the pipes. Cancelling the execution (``cancel()``, ``timeout=``, a cancelled parent
or scope, a shutdown that cancels running work) finishes it at once, as always, and cancels that
asyncio task, which kills the process (SIGKILL) and reaps it.

The command runs in a process group of its own, and the kill is sent to that group: a command
that starts processes of its own (``sh -c "a; b"``, a script, ``make``) does not leave them running
(they would also hold its output pipes open, and asyncio waits for those to close before it
reports the exit: the cancelled body would wait for them, and the event loop closing under it left
the subprocess transport unclosed).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import shlex
import signal
from typing import Any, Callable

from ._errors import CommandError


def argv(command: Any, name: str) -> list:
    """The argument vector of a body's return value: a string split shell-style (no shell runs),
    or a list/tuple of strings and paths."""
    if isinstance(command, str):
        parts = shlex.split(command)
    elif isinstance(command, (list, tuple)):
        parts = []
        for a in command:
            if not isinstance(a, (str, os.PathLike)):
                raise TypeError(
                    f"executable task {name!r} returned an argument of type {type(a).__name__} in its "
                    "command; every argument must be a str or a path"
                )
            parts.append(os.fspath(a))
    else:
        raise TypeError(
            f"executable task {name!r} must return its command as a str or a list of str, "
            f"not {type(command).__name__}"
        )
    if not parts or not parts[0].strip():
        raise ValueError(f"executable task {name!r} returned an empty command")
    return parts


async def run(parts: list, name: str) -> str:
    """Runs ``parts`` and returns its standard output as text; raises CommandError on a non-zero
    exit. Cancellation kills the process and every process it started in its group (SIGKILL) and
    waits for it before re-raising — also when it comes while the process is being started."""
    # Shielded: a cancel while asyncio connects the pipes would otherwise make asyncio kill the
    # command alone (not its group) and give up on it; here it is let finish, then killed.
    spawning = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *parts,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=_GROUPS,  # its own process group (and no terminal): killed as a whole
        )
    )
    try:
        proc = await asyncio.shield(spawning)
    except asyncio.CancelledError:
        await _to_the_end(spawning)
        if not spawning.cancelled() and spawning.exception() is None:
            await _kill_and_reap(spawning.result())
        raise
    try:
        out, err = await proc.communicate()
    except BaseException:
        await _kill_and_reap(proc)
        raise
    stdout = out.decode(errors="replace")
    stderr = err.decode(errors="replace")
    if proc.returncode != 0:
        raise CommandError(parts, proc.returncode, stdout, stderr, name)
    return stdout


async def _to_the_end(fut: Any) -> None:
    """Awaits ``fut`` until it is done, whatever it ends with; a cancellation meanwhile (the loop's
    own end, after distaff's cancel) does not stop the wait. Its outcome is left in ``fut``."""
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            continue
        except BaseException:  # noqa: BLE001 - fut failed: it is done
            break
    if not fut.cancelled():
        fut.exception()  # retrieved: no "never retrieved" noise


async def _kill_and_reap(proc: Any) -> None:
    _kill(proc)
    # A process that left the group (setsid) may still hold the pipes: closing our ends of them
    # lets the wait end once the command itself is reaped (asyncio's wait also waits for the
    # pipes). An abandoned wait would leave the transport to the collector, on a closed loop.
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        for fd in (1, 2):
            pipe = transport.get_pipe_transport(fd)
            if pipe is not None:
                pipe.close()
    await _to_the_end(asyncio.ensure_future(proc.wait()))


_GROUPS = hasattr(os, "killpg")


def _kill(proc: Any) -> None:
    """SIGKILL to the command's process group (its pid: it leads the group), which reaches what it
    started even after the command itself exited; else to the command alone."""
    if _GROUPS:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            pass  # the group is empty (all exited), or a member we may not signal
    if proc.returncode is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def commanding(fn: Callable, name: str) -> Callable:
    """The body of an executable task: calls ``fn`` (awaiting it when it is async) for the command,
    then runs the command."""
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))

    @functools.wraps(fn)
    async def body(*args: Any, **kwargs: Any) -> str:
        command = fn(*args, **kwargs)
        if is_async or inspect.isawaitable(command):
            command = await command
        return await run(argv(command, name), name)

    return body
