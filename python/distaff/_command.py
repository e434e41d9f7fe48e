"""``@task(executable=True)``: the body returns a command; distaff runs it as a subprocess.

The command runs under the body's asyncio task (an executable task is an ``async`` task whatever
its body is), so while the process runs the execution holds no worker thread and no fiber: the
loop waits on the pipes. Cancelling the execution (``cancel()``, ``timeout=``, a cancelled parent
or scope, a shutdown that cancels running work) finishes it at once, as always, and cancels that
asyncio task, which kills the process (SIGKILL) and reaps it.

The command runs in a process group of its own, and the kill is sent to that group: a command
that starts processes of its own (``sh -c "a; b"``, a script, ``make``) does not leave them running
(they would also hold its output pipes open, which the run reads to their end). The process is
started on the loop's thread before the body's first await, so its group is known to every way the
body can end.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import shlex
import signal
import subprocess
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
    waits for it before re-raising."""
    loop = asyncio.get_running_loop()
    # Started here, synchronously (asyncio's own subprocess_exec also forks on the loop's thread),
    # so the group's pid is known before the first await: a cancel can come at any await after it.
    # With asyncio.create_subprocess_exec the pid was known only once asyncio had connected the
    # pipes, a few loop steps later; asyncio.run() ending cancels every task of the loop, the one
    # connecting the pipes too, and asyncio then killed the command alone (not its group) and
    # waited for the pipes its children held: the run hung, and the children lived on (CI, s11).
    proc = subprocess.Popen(
        parts,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=_GROUPS,  # its own process group (and no terminal): killed as a whole
    )
    pipes: list = []
    try:
        readers = [_read_pipe(loop, f, pipes) for f in (proc.stdout, proc.stderr)]
        out, err = await asyncio.gather(*readers)
        await _exited(loop, proc)
    except BaseException:
        _kill(proc)
        # A process that left the group (setsid) may still hold the pipes: closing our ends lets
        # the reaping end once the command itself has exited.
        for transport in pipes:
            transport.close()
        for f in (proc.stdout, proc.stderr):
            f.close()
        await _to_the_end(asyncio.ensure_future(_exited(loop, proc)))
        raise
    stdout = out.decode(errors="replace")
    stderr = err.decode(errors="replace")
    if proc.returncode != 0:
        raise CommandError(parts, proc.returncode, stdout, stderr, name)
    return stdout


async def _read_pipe(loop: asyncio.AbstractEventLoop, f: Any, pipes: list) -> bytes:
    """Everything the command writes to pipe ``f``, read on the loop (no thread)."""
    reader = asyncio.StreamReader(loop=loop)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), f)
    pipes.append(transport)
    try:
        return await reader.read()
    finally:
        transport.close()


async def _exited(loop: asyncio.AbstractEventLoop, proc: subprocess.Popen) -> int:
    """Waits for the command to exit and reaps it: on a pidfd the loop watches where there is one
    (Linux 5.3+), else on a thread."""
    if proc.poll() is not None:
        return proc.returncode
    pidfd_open = getattr(os, "pidfd_open", None)
    try:
        fd = pidfd_open(proc.pid) if pidfd_open is not None else -1
    except OSError:  # ESRCH: already exited (reaped below); ENOSYS and the like: the thread
        fd = -1 if proc.poll() is None else -2
    if fd == -2:
        return proc.returncode
    if fd < 0:
        return await loop.run_in_executor(None, proc.wait)
    try:
        readable = loop.create_future()
        loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
        try:
            await readable
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    return proc.wait()


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


_GROUPS = hasattr(os, "killpg")


def _kill(proc: subprocess.Popen) -> None:
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
