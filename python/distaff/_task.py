"""``@task`` / ``@workflow``: decorated functions that submit Executions."""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any, Callable, Iterable

from . import _core

_submit = _core.submit
_MISSING: Any = object()  # "called as @task()", distinct from an explicit (bad) None
_engine_mod: Any = None  # distaff._engine, bound by distaff/__init__.py (import cycle)

# Keyword names distaff reserves in a call: stripped before the body sees its kwargs.
# A function with a parameter of one of these names still receives it; see docs/concepts.md.
RESERVED_KWARGS = ("workflow_id",)

_get_running_loop = asyncio._get_running_loop  # C-level, no exception when there is no loop


def _make_checker(fn: Callable, name: str) -> Callable | None:
    """A function with ``fn``'s parameters and an empty body: calling it checks arguments exactly.

    Built once at decoration, so a bad call fails in the caller at submit time with Python's own
    TypeError ("load_user() missing 1 required positional argument: 'uid'") at ~60 ns a call,
    instead of inspect.Signature.bind's ~2 µs.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # builtins and C callables without a signature are checked when called
    params = []
    for p in sig.parameters.values():
        p = p.replace(annotation=inspect.Parameter.empty)
        if p.default is not inspect.Parameter.empty:
            p = p.replace(default=None)
        params.append(p)
    src_sig = str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))
    ns: dict[str, Any] = {}
    exec(f"def _check{src_sig}: pass", ns)  # noqa: S102 - parameters come from a real signature
    check = ns["_check"]
    # Python names the function in argument errors by its __qualname__: make it the task's.
    check.__code__ = check.__code__.replace(co_name=name.rpartition(".")[2], co_qualname=name)
    check.__name__ = name.rpartition(".")[2]
    check.__qualname__ = name
    return check


def _parse_wait(wait: Any, fn: Callable) -> bool | tuple[str, ...]:
    if wait is None or wait is False:
        return False
    if wait is True:
        return True
    if isinstance(wait, str):
        names = tuple(n.strip() for n in wait.split(",") if n.strip())
    elif isinstance(wait, Iterable):
        names = tuple(wait)
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"wait= names must be strings, got {n!r}")
    else:
        raise TypeError(f"wait= must be True, an iterable of parameter names or a comma-separated string, not {wait!r}")
    if not names:
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        raise ValueError(f"wait={wait!r} names parameters, but {fn!r} has no inspectable signature") from None
    for n in names:
        if n not in params:
            raise ValueError(f"wait= names {n!r}, which is not a parameter of {getattr(fn, '__qualname__', fn)!r}")
    return names


class Task:
    """A decorated function. ``submit()`` returns an Execution; calling it returns the result.

    Calling inside a running asyncio event loop returns the Execution instead (blocking would
    freeze the loop): ``await my_task(x)``.
    """

    def __init__(
        self,
        fn: Callable,
        *,
        name: str | None = None,
        kind: str = "task",
        wait: Any = None,
        engine: Any = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@{kind} needs a callable, not {type(fn).__name__}")
        if isinstance(fn, Task):
            raise TypeError(f"{fn.name!r} is already a distaff {fn.kind}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"@{kind} cannot wrap the generator function {fn.__qualname__!r}: an execution has one "
                "result; return a list, or submit one execution per item"
            )
        if inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"@{kind} does not yet accept 'async def' ({fn.__qualname__!r}); "
                "wrap the coroutine with asyncio.run inside a plain function"
            )
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError("name= must be a non-empty string")
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or type(fn).__qualname__
        self.kind = kind
        self._kind_flag = kind == "workflow"
        self._wait = _parse_wait(wait, fn)
        self._check = _make_checker(fn, getattr(fn, "__qualname__", None) or self.name)
        self._engine = engine
        try:
            accepts = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            accepts = {}
        # A function with its own `workflow_id` parameter receives it (docs/concepts.md).
        self._strip_workflow_id = "workflow_id" not in accepts
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<distaff {self.kind} {self.name}>"

    def _gating(self, args: tuple, kwargs: dict) -> tuple:
        """The Executions passed to the parameters named in wait=."""
        bound = inspect.signature(self.fn).bind(*args, **kwargs)
        out = []
        for n in self._wait:
            if n in bound.arguments:
                v = bound.arguments[n]
                vals = v if isinstance(v, (list, tuple)) else v.values() if isinstance(v, dict) else (v,)
                out.extend(x for x in vals if isinstance(x, _core.Execution))
        return tuple(out)

    def submit(self, *args: Any, **kwargs: Any) -> _core.Execution:
        """Submits a call and returns its Execution at once. Any thread, fiber or loop.

        Raises:
            TypeError: the arguments do not fit the function's signature (raised here, in the caller).
            ShutdownError: the engine is shut down.
        """
        # The hot path: every line here shows in bench/ W1 (~1 µs per task end to end).
        workflow_id = None
        if kwargs and "workflow_id" in kwargs and self._strip_workflow_id:
            workflow_id = kwargs.pop("workflow_id")
        check = self._check
        if check is not None:
            check(*args, **kwargs)
        engine = self._engine or _engine_mod.default_engine()
        wait = self._wait
        if wait.__class__ is tuple:
            wait = self._gating(args, kwargs)
        return _submit(engine._capsule, self.fn, self.name, self._kind_flag, wait, args, kwargs or None, workflow_id)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        execution = self.submit(*args, **kwargs)
        if _get_running_loop() is not None:
            return execution  # inside a running event loop: the caller awaits it
        return execution.result()

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundTask(self, instance)


class _BoundTask:
    """A Task accessed through an instance: ``obj.method.submit(x)`` passes ``obj`` first."""

    __slots__ = ("_task", "_self")

    def __init__(self, task: Task, instance: Any) -> None:
        self._task = task
        self._self = instance

    def submit(self, *args: Any, **kwargs: Any) -> _core.Execution:
        return self._task.submit(self._self, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._task(self._self, *args, **kwargs)

    @property
    def fn(self) -> Callable:
        return functools.partial(self._task.fn, self._self)

    def __getattr__(self, item: str) -> Any:
        return getattr(self._task, item)


def _decorator(kind: str, fn: Any, engine: Any, **options: Any):
    if fn is not _MISSING:
        if options:
            raise TypeError(f"@{kind} options must be passed as keywords: @{kind}(name=...)")
        return Task(fn, kind=kind, engine=engine)

    def wrap(f: Callable) -> Task:
        return Task(f, kind=kind, engine=engine, **options)

    return wrap


def task(fn: Any = _MISSING, /, *, name: str | None = None, wait: Any = None) -> Any:
    """Decorates a function as a task on the default engine. Works bare (``@task``) or called."""
    return _decorator("task", fn, None, name=name, wait=wait) if fn is _MISSING else _decorator("task", fn, None)


def workflow(fn: Any = _MISSING, /, *, name: str | None = None, wait: Any = None) -> Any:
    """Decorates a function as a workflow (a task that orchestrates others) on the default engine."""
    return _decorator("workflow", fn, None, name=name, wait=wait) if fn is _MISSING else _decorator("workflow", fn, None)
