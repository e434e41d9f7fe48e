"""What runs on the other side: unpacks a shipped body, runs it, packs the outcome.

Imported in worker processes (distaff's own pool, Dask workers, Ray workers) and kept small: it
needs only the standard library and cloudpickle. The outcome is always returned as bytes, never
raised, so every executor carries a failure the same way and the local side rebuilds the
exception with its own type and message (Ray, for one, would wrap a raised exception in a type
of its own).
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from typing import Any

_WHERE: str | None = None
_WHERE_PID = 0
# A packed outcome is (ok, data, type_name, message, traceback, where): ok True with data the value
# itself, _NESTED with data the value's own pickle (it needed cloudpickle), False for a failure.
_NESTED = 2


def dumps(obj: Any) -> bytes:
    """Serializes obj: the standard (C) pickler when that is enough, else cloudpickle.

    cloudpickle costs ~3x more per call (a Python hook per object); it is needed for what the
    standard pickler cannot send or would send by a reference the other process cannot resolve:
    lambdas, closures, local classes (pickle raises) and anything of ``__main__`` (the name shows
    in the stream; another process's ``__main__`` is not this one).
    """
    import pickle  # on first use: 0.5 MiB of RSS for every `import distaff` otherwise (issue 15, W5)
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        if b"__main__" not in data:
            return data
    except Exception:  # noqa: BLE001 - whatever the standard pickler refuses, cloudpickle tries
        pass
    try:
        import cloudpickle
    except ImportError:
        raise ImportError(
            f"sending {type(obj).__qualname__} to another process needs cloudpickle (a lambda, a closure or "
            "something defined in __main__): pip install 'distaff[processes]'"
        ) from None
    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def body_ref(fn: Any) -> Any:
    """What to ship for a body: a reference to it when it is the function of a module-level task.

    ``@task`` makes ``module.name`` the Task, not the function, so pickle's by-reference lookup of
    the function finds another object and refuses (cloudpickle then ships it by value, with the
    globals it uses: a 100k-item list went along with every call). The reference names the module
    and qualname; the worker imports the module and takes the Task's function (:func:`resolve`).
    Anything else is shipped as it is: a plain importable function goes by reference anyway, a
    lambda, closure or ``__main__`` function goes by value (cloudpickle).
    """
    name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if name is None or name == "__main__" or qualname is None or "<" in qualname:
        return fn
    module = sys.modules.get(name)
    if module is None:
        return fn
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if obj is fn or getattr(obj, "fn", None) is not fn or not _is_task(obj):
        return fn
    return _Ref(name, qualname)


def _is_task(obj: Any) -> bool:
    from ._task import Task  # imported by then: the body's task made it

    return isinstance(obj, Task)


class _Ref:
    """A module-level task's function, by name: unpickles as the function itself (:func:`resolve`)."""

    __slots__ = ("module", "qualname")

    def __init__(self, module: str, qualname: str) -> None:
        self.module = module
        self.qualname = qualname

    def __reduce__(self) -> Any:
        return (resolve, (self.module, self.qualname))


def resolve(module: str, qualname: str) -> Any:
    """The function of the task ``module.qualname`` (importing the module): a :class:`_Ref` unpickled."""
    import importlib

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if _is_task(obj):
        return obj.fn
    return obj  # the module defines a plain function there (another version of it): run that


def where() -> str:
    """This process, as the note on a remote exception names it: ``host pid N``."""
    global _WHERE, _WHERE_PID
    pid = os.getpid()
    if pid != _WHERE_PID:  # first call, or a forked child
        _WHERE, _WHERE_PID = f"{socket.gethostname()} pid {pid}", pid
    return _WHERE


def _format(exc: BaseException) -> str:
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # from the body's frame on, not this module's
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _pack_error(exc: BaseException, tb: str) -> bytes:
    import pickle  # on first use: 0.5 MiB of RSS for every `import distaff` otherwise (issue 15, W5)
    try:
        exc_bytes = dumps(exc)
    except BaseException:  # an exception that cannot travel travels as its type name and message
        exc_bytes = None
    try:
        message = str(exc)
    except BaseException:
        message = "<str() failed>"
    return pickle.dumps((False, exc_bytes, type(exc).__qualname__, message, tb, where()))


def run(payload: bytes) -> bytes:
    """Runs a payload ``dumps((fn, args, kwargs, is_async))``; returns the packed outcome."""
    import pickle  # on first use: 0.5 MiB of RSS for every `import distaff` otherwise (issue 15, W5)
    try:
        fn, args, kwargs, is_async = pickle.loads(payload)
        del payload
        result = _run_async(fn, args, kwargs) if is_async else fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the caller
        return _pack_error(exc, _format(exc))
    try:
        # One pickle for the common case (a value the standard pickler sends by value); the value
        # pickled on its own (with cloudpickle's help, _NESTED) otherwise.
        try:
            out = pickle.dumps((True, result, None, None, None, where()), protocol=pickle.HIGHEST_PROTOCOL)
            if b"__main__" not in out:
                return out
        except Exception:  # noqa: BLE001 - the standard pickler refused: cloudpickle below
            pass
        return pickle.dumps((_NESTED, dumps(result), None, None, None, where()), protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:  # noqa: BLE001
        from ._errors import SerializationError  # only here: the module stays small otherwise
        err = SerializationError(f"the result ({type(result).__qualname__}) cannot be serialized: {exc}")
        return _pack_error(err, traceback.format_exc())


def run_chunk(payloads: list) -> list:
    """Runs several payloads in order (a chunk of tiny bodies, executors._Futures); one packed
    outcome each: a failure is one body's outcome, never the chunk's."""
    return [run(p) for p in payloads]


def local_outcome(ok: bool, value: Any) -> tuple:
    """A packed outcome for an in-process executor (nothing serialized): the value, or the
    exception with its formatted traceback."""
    if ok:
        return (True, value, None, None, None, where())
    return (False, value, None, None, _format(value), where())


def run_local(fn: Any, args: tuple, kwargs: dict, is_async: bool) -> tuple:
    """The same for an in-process executor (a thread pool): nothing is serialized."""
    try:
        result = _run_async(fn, args, kwargs) if is_async else fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001
        return (False, exc, None, None, _format(exc), where())
    return (True, result, None, None, None, where())


def _run_async(fn: Any, args: Any, kwargs: Any) -> Any:
    import asyncio

    return asyncio.run(fn(*args, **kwargs))
