"""``@task(executable=True)``: the body returns a command; distaff runs it as a subprocess.

The command runs under the body's asyncio task (an executable task is an ``async`` task whatever
its body is), so while the process runs the execution holds no worker thread and no fiber: the
loop waits on the pipes. Cancelling the execution (``cancel()``, ``timeout=``, a cancelled parent
or scope, a shutdown that cancels running work) finishes it at once, as always, and cancels that
asyncio task, which kills the process (SIGKILL) and reaps it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import shlex
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
    exit. Cancellation kills the process (SIGKILL) and waits for it before re-raising."""
    proc = await asyncio.create_subprocess_exec(
        *parts,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            try:
                await asyncio.shield(proc.wait())
            except BaseException:  # noqa: BLE001 - cancelled again: the process is killed anyway
                pass
        raise
    stdout = out.decode(errors="replace")
    stderr = err.decode(errors="replace")
    if proc.returncode != 0:
        raise CommandError(parts, proc.returncode, stdout, stderr, name)
    return stdout


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
