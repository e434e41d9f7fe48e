"""``@task`` / ``@workflow``: decorated functions that submit Executions."""

from __future__ import annotations

import functools
import os as _os
import signal as _signal
import threading as _threading
import inspect
import sys
from typing import Any, Callable, Iterable

from . import _aio, _core, _elsewhere, _sync
from . import _engine as _engine_mod  # a cycle (_engine imports this module): used at call time only
from . import _validate as _v
from ._arguments import _resolving, _scan_executions
from ._retry import RetryPolicy, _retrying
from ._scopes import _new_workflow_id
from ._signature import _check_fallback, _make_checker, _parse_wait, _positional_range

_submit = _core.submit
# Submit flags as plain ints: the submit path ORs them per call (an IntFlag operation costs more).
_WORKFLOW = int(_core.SubmitFlag.WORKFLOW)
_DETACHED = int(_core.SubmitFlag.DETACHED)
_HERE = int(_core.SubmitFlag.HERE)
_MISSING: Any = object()  # "called as @task()", distinct from an explicit (bad) None

# Keyword names distaff reserves in a call: stripped before the body sees its kwargs.
# A function with a parameter of one of these names still receives it; see docs/concepts.md.
# (One so far: the C submit strips it too, cpp/bindings/submit.cpp.)
_WORKFLOW_ID = "workflow_id"
RESERVED_KWARGS = (_WORKFLOW_ID,)

_aio.bind(globals(), "_get_running_loop")  # asyncio's C-level one once asyncio is imported (_aio.py)
_NO_LOOP = _aio._NO_LOOP  # what it is before: asyncio loaded past distaff's finder is caught up in __call__


_async_body = None  # distaff._async_body, imported by the first async body's submit (it imports asyncio)


def _load_async_body():
    global _async_body
    from . import _async_body as mod

    _async_body = mod
    return mod


def _bind_to_submitting_loop(binding, loop, ex) -> None:
    (_async_body or _load_async_body())._bind_to_submitting_loop(binding, loop, ex)


# DISTAFF_INLINE_CALLS=0 (read at import): the main thread's f(x) hands its body to a worker as
# other threads do (for measurements; docs/internals/sync-calls.md).
_INLINE_CALLS = _os.environ.get("DISTAFF_INLINE_CALLS", "1") != "0"

_MAIN_THREAD = _threading.main_thread().ident
_get_ident = _threading.get_ident
_getsignal = _signal.getsignal
_SIGINT = _signal.SIGINT
_raising_ctrl_c = _signal.default_int_handler


def _ship_here() -> bool:
    """Whether an executor body may be shipped by this thread during its submit: not where a
    Ctrl-C raises KeyboardInterrupt at any bytecode — the main thread under Python's default SIGINT
    handler — as the runners and the executors' own submit() (locks, futures, the window) are not
    written to be interrupted midway. Inside asyncio.run the first Ctrl-C cancels the main task
    instead, so the main thread's loop ships here too (docs/internals/sync-calls.md)."""
    return _get_ident() != _MAIN_THREAD or _getsignal(_SIGINT) is not _raising_ctrl_c


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
        resolve: bool = False,
        timeout: float | None = None,
        retries: int = 0,
        retry_delay: float = 0.0,
        backoff: float = 1.0,
        max_delay: float | None = None,
        jitter: bool = False,
        retry_on: Any = (Exception,),
        fallback: Callable | None = None,
        concurrency: int | None = None,
        executor: Any = None,
        executable: bool = False,
        engine: Any = None,
    ) -> None:
        self._static = isinstance(fn, staticmethod)
        if self._static:  # @task above @staticmethod: a plain function that never binds an instance
            fn = fn.__func__
        if not callable(fn):
            raise TypeError(f"@{kind} needs a callable, not {type(fn).__name__}")
        if isinstance(fn, Task):
            raise TypeError(f"{fn.name!r} is already a distaff {fn.kind}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"@{kind} cannot wrap the generator function {getattr(fn, '__qualname__', fn)!r}: an execution has one "
                "result; return a list, or submit one execution per item"
            )
        if name is not None:
            _v.name(name, "name=")
        self.fn = fn
        # A derived name is checked too: C code carries it (a NUL would cut it short there).
        self.name = _v.name(name or getattr(fn, "__qualname__", None) or type(fn).__qualname__, "name=")
        self.kind = kind
        self._kind_flag = _WORKFLOW if kind == "workflow" else 0
        self.resolve = _v.flag(resolve, "resolve=")
        self._wait = True if resolve else _parse_wait(wait, fn)
        self.is_async = is_async_callable(fn)
        self.timeout = _check_timeout(timeout)
        self.policy = RetryPolicy.make(retries, retry_delay, backoff, max_delay, jitter, retry_on, fallback)
        if fallback is not None:
            _check_fallback(fallback, fn, self.name)
        # What the fiber calls: the function itself (the hot path), or adapters that resolve
        # Execution arguments to values, retry, arm the timeout. An async body runs elsewhere (on an
        # event loop, _async_body.py), and so does one with executor=: the elsewhere mechanism
        # (_elsewhere.py) applies their retries, fallback and timeout as their outcomes arrive.
        body = _resolving(fn) if resolve else fn
        self.executable = _v.flag(executable, "executable=")
        if self.executable:  # the body returns a command; it runs as a subprocess (_command.py)
            if kind == "workflow":
                raise TypeError("a @workflow cannot be executable=True; make the step that runs the command a @task")
            if executor is not None:
                raise TypeError("executable=True runs the command here as a subprocess; it takes no executor=")
            from . import _command  # (it imports asyncio: only programs with executable tasks load it)

            body = _command.commanding(body, self.name)
            self.is_async = True
        if fallback is not None and not self.is_async and is_async_callable(fallback):
            # A sync body's fallback is called in its fiber (or, with executor=, as an execution of
            # its own): nothing would await the coroutine — the caller would get it, un-run.
            raise TypeError(
                f"fallback {getattr(fallback, '__qualname__', fallback)!r} is async but {self.name!r} is not: "
                f"the fallback of a sync {kind} is called, not awaited; give it a plain def fallback "
                f"(or make the {kind} async def)"
            )
        if self.policy is not None and not self.is_async:
            body = _retrying(body, self.policy)
        self._body = body
        self._options: dict = {}
        # concurrency=: one limiter per limit value, shared by this task and its .options() copies.
        self._limiters: dict = {}
        self.concurrency = _sync.check_concurrency(concurrency)
        self.executor = _check_executor(executor, kind)  # docs/executors.md
        if fn is _placeholder:
            return  # _decorator's check of the options alone: nothing below depends on them
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            sig = None
        self._check = None if sig is None else _make_checker(fn, getattr(fn, "__qualname__", None) or self.name, sig)
        self._engine = engine
        accepts = {} if sig is None else sig.parameters
        # A function with its own `workflow_id` parameter receives it (docs/concepts.md).
        self._strip_workflow_id = _WORKFLOW_ID not in accepts
        self._positional_range = _positional_range(accepts) if self._check is not None else (_core.NO_BOUND, _core.NO_BOUND)
        functools.update_wrapper(self, fn)
        self.submit = self._make_submit()

    def __repr__(self) -> str:
        return f"<distaff {self.kind} {self.name}>"

    def _gating(self, args: tuple, kwargs: dict) -> tuple:
        """The Executions passed to the parameters named in wait=."""
        sig = self.__dict__.get("_signature")
        if sig is None:
            sig = self._signature = inspect.signature(self.fn)  # once: ~15 µs a call otherwise
        bound = sig.bind(*args, **kwargs)
        out = []
        for n in self._wait:
            if n in bound.arguments:
                v = bound.arguments[n]
                # Exact types, as the C++ scan for wait=True and the dependency records use.
                vals = v if v.__class__ in (list, tuple) else v.values() if v.__class__ is dict else (v,)
                out.extend(x for x in vals if isinstance(x, _core.Execution))
        return tuple(out)

    def _make_submit(self) -> Callable:
        """The submit function for this task: the general one, or for the common case (a plain
        task with no timeout, async body or per-call options) a C callable with everything bound
        (cpp/bindings/submit.cpp): the W1 hot path runs no Python code of ours."""
        general = self._submit_general
        if (
            self.is_async
            or self.timeout is not None
            or self._options
            or self._kind_flag
            or self._wait.__class__ is tuple
            or self.concurrency is not None
            or self.executor is not None
        ):
            return general
        min_pos, max_pos = self._positional_range
        engine = self._engine
        return _core.Submitter(
            # a synchronous call may run the body on the main thread (docs/internals/sync-calls.md)
            inline=self.policy is None and _INLINE_CALLS,
            general=general,
            check=self._check,
            min_pos=min_pos,
            max_pos=max_pos,
            body=self._body,
            name=self.name,
            wait=self._wait,
            bound=engine is not None,
            capsule=engine._capsule if engine is not None else None,
            scope=engine._scope if engine is not None else None,
            default_engine=_engine_mod.default_engine,
            strip=self._strip_workflow_id,
        )

    def _submit_general(self, *args: Any, **kwargs: Any) -> _core.Execution:
        """Submits a call and returns its Execution at once. Any thread, fiber or loop.

        Raises:
            TypeError: the arguments do not fit the function's signature (raised here, in the caller).
            ShutdownError: the engine is shut down.
        """
        # The hot path: every line here shows in bench/ W1 (~1 µs per task end to end).
        workflow_id = None
        if kwargs and _WORKFLOW_ID in kwargs and self._strip_workflow_id:
            workflow_id = _v.workflow_id(kwargs.pop(_WORKFLOW_ID))
        check = self._check
        if check is not None:
            check(*args, **kwargs)
        engine = self._engine or _engine_mod.default_engine()
        wait = self._wait
        if wait.__class__ is tuple:
            wait = self._gating(args, kwargs)
        options = self._options
        timeout = self.timeout
        flags = self._kind_flag
        if options:
            executor = options.get("executor", self.executor)
            timeout = options.get("timeout", timeout)
            flags |= _DETACHED if options.get("detached") else 0
            if workflow_id is None:
                workflow_id = options.get("workflow_id")
            limit = options.get("concurrency", self.concurrency)
        else:
            executor = self.executor
            limit = self.concurrency
        binding = here = None
        if executor is not None:  # the body runs elsewhere; its arguments travel as values
            body = _elsewhere.Job(self.fn, self.is_async, self.policy, self.name, engine._executors.runner(executor), engine)
            wait = True
            if limit is None and _ship_here():
                # Shipped by this thread during the submit when it can (not a worker's fiber, no
                # Execution arguments to wait for): no worker wakes only to hand the body on
                # (docs/internals/sync-calls.md, "Bodies shipped here").
                flags |= _HERE
        else:
            body = self._body
            if self.is_async:
                bind_loop = _get_running_loop()
                mod = _async_body or _load_async_body()
                if bind_loop is not None:
                    # Submitted on its loop's thread: the hand-off to the loop runs here, at once,
                    # rather than on a worker's fiber (docs/internals/sync-calls.md, "Async bodies
                    # started here"); with nothing between the submit and the start, the lean one.
                    flags |= _HERE
                    if (wait is False and timeout is None and limit is None and self.policy is None
                            and not mod._trace._hubs and bind_loop is not engine._loop):
                        body = here = mod._HereBody(body, bind_loop, engine, self.name, self.kind)
                        bind_loop = None  # it registers itself (or its fallback does)
                if bind_loop is not None or not flags & _HERE:
                    body = mod._AsyncBody(body, bind_loop, engine, self.name, wait is not False, self.kind, self.policy)
                    if bind_loop is not None:
                        binding = body.binding
        if timeout is not None:
            if executor is not None or self.is_async:  # armed by the elsewhere mechanism
                body.timeout = timeout
            else:
                body = _Timed(body, timeout)
        if limit is not None:
            ex = self._submit_limited(limit, engine, body, flags, wait, args, kwargs, workflow_id)
            if binding is not None:
                _bind_to_submitting_loop(binding, bind_loop, ex)
            return ex
        scope = engine._scope
        if workflow_id is None:
            workflow_id = scope.get()
            if workflow_id is None:
                if not self._kind_flag:
                    ex = _submit(engine._capsule, body, self.name, flags, wait, args, kwargs or None, None)
                    if binding is not None:
                        _bind_to_submitting_loop(binding, bind_loop, ex)
                    elif here is not None and here.me is not ex:
                        here._queued_submit(ex)  # queued after all (e.g. the inline nesting bound)
                    return ex
                workflow_id = _new_workflow_id()  # a @workflow opens a scope of its own
        # A tagged execution: its body (a copy of this context) and everything it submits carry the id.
        token = scope.set(workflow_id)
        try:
            ex = _submit(engine._capsule, body, self.name, flags, wait, args, kwargs or None, workflow_id)
        finally:
            scope.reset(token)
        engine._track(workflow_id, ex)
        if binding is not None:
            _bind_to_submitting_loop(binding, bind_loop, ex)
        elif here is not None and here.me is not ex:
            here._queued_submit(ex)
        return ex

    def _submit_limited(self, limit, engine, body, flags, wait, args, kwargs, workflow_id) -> _core.Execution:
        """Submission under concurrency=: beyond the limit, a gate promise joins the wait=
        dependencies, so the execution waits without a fiber until a slot frees (_sync._Limiter)."""
        limiter = self._limiters.get(limit)
        if limiter is None:
            limiter = self._limiters.setdefault(limit, _sync._Limiter(limit, self.name))
        # A body running here holds its slot until it returns (cancel and timeout cannot stop a
        # blocking call); async and remote bodies hand over and return at once: their slot ends
        # with the execution — or when their body returns an Execution (it forwards: _Slot.pause).
        slot = _sync._Slot(limiter)
        if isinstance(body, _elsewhere.Elsewhere):
            body.slot = slot
        else:
            body = _sync._SlotBody(body, slot)
        gate = limiter._enqueue()
        if gate is not None:
            if wait is True:
                wait = _scan_executions(args, kwargs)
            elif wait is False or wait is None:
                wait = ()
            wait = (*wait, gate)
        scope = engine._scope
        if workflow_id is None:
            workflow_id = scope.get()
            if workflow_id is None and self._kind_flag:
                workflow_id = _new_workflow_id()
        token = scope.set(workflow_id) if workflow_id is not None else None
        try:
            ex = _submit(engine._capsule, body, self.name, flags, wait, args, kwargs or None, workflow_id)
        except BaseException:
            if gate is None:
                limiter._handoff()
            elif limiter._abandon(gate):
                limiter._handoff()
            raise
        finally:
            if token is not None:
                scope.reset(token)
        limiter.watch(ex, gate, slot)
        if workflow_id is not None:
            engine._track(workflow_id, ex)
        return ex

    def options(
        self,
        *,
        timeout: float | None | Any = _MISSING,
        workflow_id: str | None = None,
        detached: bool = False,
        concurrency: int | None | Any = _MISSING,
        executor: Any = _MISSING,
    ) -> "Task":
        """A copy of this task with per-call options: ``task.options(timeout=5).submit(x)``.

        Args:
            timeout: overrides the task's timeout (None: no timeout).
            workflow_id: tags the executions (also works for functions that have their own
                ``workflow_id`` parameter).
            detached: the executions are not cancelled when the submitting execution is.
            concurrency: at most this many executions submitted with this limit run at once
                (None: no limit). Shared by every copy of the task with the same value.
            executor: where the body runs (docs/executors.md); None: in this process.
        """
        clone = object.__new__(Task)
        clone.__dict__.update(self.__dict__)
        opts = dict(self._options)
        if timeout is not _MISSING:
            opts["timeout"] = _check_timeout(timeout)
        if _v.workflow_id(workflow_id) is not None:
            opts["workflow_id"] = workflow_id
        if _v.flag(detached, "detached"):
            opts["detached"] = True
        if concurrency is not _MISSING:
            opts["concurrency"] = _sync.check_concurrency(concurrency)
        if executor is not _MISSING:
            opts["executor"] = _check_executor(executor, self.kind)
            if opts["executor"] is not None and self.executable:
                raise TypeError("executable=True runs the command here as a subprocess; it takes no executor=")
        clone._options = opts
        clone.submit = clone._make_submit()
        return clone

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _get_running_loop() is not None or (_get_running_loop is _NO_LOOP and _aio.late_running_loop() is not None):
            return self.submit(*args, **kwargs)  # inside a running event loop: the caller awaits it
        submit = self.submit
        if submit.__class__ is _core.Submitter:
            # submit(...).result() in C; on the main thread the body runs right here
            # (docs/internals/sync-calls.md).
            return submit.call(*args, **kwargs)
        return submit(*args, **kwargs).result()

    def map(self, *iterables: Iterable) -> list:
        """One execution per item: ``[task.submit(*args) for args in zip(*iterables)]``.

        The iterables must have the same length (ValueError otherwise, before anything is
        submitted). Returns the list of Executions at once; ``distaff.gather(*task.map(xs))``
        combines them. Every call is checked and submitted like ``submit()`` (with this task's
        options); if one submission fails, the ones already submitted are cancelled.
        """
        return _map(self.submit, self.name, iterables)

    def __reduce__(self) -> Any:
        # Pickles by reference: by its module-level name when that is this task, else as its
        # function (which cloudpickle ships by value when it is a lambda, a closure or in __main__)
        # and its name; a rebuilt task runs on the default engine of the process that loads it.
        module = sys.modules.get(getattr(self, "__module__", None) or "")
        if module is not None and module.__name__ != "__main__":
            obj: Any = module
            for part in self.__qualname__.split("."):
                obj = getattr(obj, part, None)
            if obj is self:
                return self.__qualname__
        return (_rebuild_task, (self.fn, self.kind, self.name))

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None or self._static:
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

    def map(self, *iterables: Iterable) -> list:
        return _map(self.submit, self._task.name, iterables)

    @property
    def fn(self) -> Callable:
        return functools.partial(self._task.fn, self._self)

    def __getattr__(self, item: str) -> Any:
        return getattr(self._task, item)


def _map(submit: Callable, name: str, iterables: tuple) -> list:
    if not iterables:
        raise TypeError(f"{name}.map() needs at least one iterable")
    for it in iterables:
        if not isinstance(it, Iterable):
            raise TypeError(f"{name}.map() takes iterables, not {type(it).__name__}")
    try:
        calls = list(zip(*iterables, strict=True))
    except ValueError:
        lengths = ", ".join(str(len(list(it))) if hasattr(it, "__len__") else "?" for it in iterables)
        raise ValueError(f"{name}.map(): the iterables have different lengths ({lengths})") from None
    out: list = []
    try:
        for args in calls:
            out.append(submit(*args))
    except BaseException:
        for ex in out:
            ex.cancel()
        raise
    return out


def is_async_callable(fn: Any) -> bool:
    """Does calling ``fn`` make a coroutine to await: an ``async def`` function or method, one
    marked with ``inspect.markcoroutinefunction``, an object whose ``__call__`` is ``async def``,
    and any of these inside ``functools.partial`` (nested too)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn) or isinstance(fn, type):
        return False
    return inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def _rebuild_task(fn: Callable, kind: str, name: str) -> Task:
    return Task(fn, kind=kind, name=name)


def _check_executor(executor: Any, kind: str) -> Any:
    if executor is None:
        return None
    if kind == "workflow":
        raise TypeError("a @workflow orchestrates locally and takes no executor=; give it to the tasks it runs")
    from . import executors

    executors.check_target(executor, "executor=")
    if executor.__class__ is not str:  # a name is declared by Engine(executors=...)
        from . import _engine

        _engine._declare_user_executor()
    return executor


def _check_timeout(timeout: Any) -> float | None:
    """The timeout= option: None, or seconds > 0 (inf or 10**400: no deadline, like None)."""
    return _v.seconds(timeout, "timeout", _v.OPTION)


class _Timed:
    """Arms the execution's timeout when its body starts."""

    __slots__ = ("fn", "timeout")

    def __init__(self, fn: Callable, timeout: float) -> None:
        self.fn = fn
        self.timeout = timeout

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _core.arm_timeout(_core.current_execution(), self.timeout)
        return self.fn(*args, **kwargs)


_OPTION_NAMES: tuple = ()
# Names other libraries use for the same thing (Prefect, Celery, tenacity...).
_LIKELY_MEANT = {"retry": "retries", "max_retries": "retries", "attempts": "retries", "delay": "retry_delay",
                 "retry_backoff": "backoff", "max_concurrency": "concurrency", "limit": "concurrency",
                 "depends_on": "wait", "deps": "wait"}


def _check_option_names(kind: str, options: dict) -> None:
    """An unknown option is a TypeError naming the public decorator, with the nearest real name."""
    global _OPTION_NAMES
    if not _OPTION_NAMES:
        # Task.__init__'s keyword-only parameters, read from its code object (inspect.signature
        # of it cost ~100 µs, on the first decoration of every process: bench W7b cold).
        code = Task.__init__.__code__
        kwonly = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
        _OPTION_NAMES = tuple(n for n in kwonly if n not in ("kind", "engine"))
    for key in options:
        if key not in _OPTION_NAMES:
            import difflib

            near = [_LIKELY_MEANT[key]] if key in _LIKELY_MEANT else difflib.get_close_matches(key, _OPTION_NAMES, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; options are {', '.join(_OPTION_NAMES)}"
            raise TypeError(f"@{kind}() got an unexpected option {key!r}{hint}")


def _placeholder(*args: Any, **kwargs: Any) -> None:
    """Stands for the function in task(...) before it is applied, to check the options early."""


def _decorator(kind: str, fn: Any, engine: Any, **options: Any):
    if options:
        _check_option_names(kind, options)
    if fn is not _MISSING:  # @task, or task(f, retries=2): the same as task(retries=2)(f)
        return Task(fn, kind=kind, engine=engine, **options)
    # task(retries=-1) fails here, not later where it is applied: every value that does not depend
    # on the function is checked now (wait= names and fallback= are checked against it then).
    trial = {k: v for k, v in options.items() if k not in ("wait", "fallback")}
    if trial:
        Task(_placeholder, kind=kind, engine=engine, **trial)

    def wrap(f: Callable) -> Task:
        return Task(f, kind=kind, engine=engine, **options)

    return wrap


def task(fn: Any = _MISSING, /, **options: Any) -> Any:
    """Decorates a function as a task on the default engine. Works bare (``@task``) or called.

    Args:
        name: the task's name in descriptions and graphs (default: the function's qualified name).
        wait: start only once Execution arguments are done: True for all of them, or the names of
            the parameters to wait for (an iterable, or a comma-separated string).
        resolve: like wait=True, but the body receives the values instead of the Executions.
        timeout: seconds from the body's start after which the execution fails with
            distaff.TimeoutError (per call: ``task.options(timeout=...)``).
        retries, retry_delay, backoff, max_delay, jitter, retry_on: retry failed attempts
            (see :class:`RetryPolicy`); the fiber sleeps between attempts without holding a thread.
        fallback: ``fallback(*args, **kwargs, exc=error)`` gives the result when every attempt failed:
            the call's arguments, and the final error as the keyword argument ``exc``.
        concurrency: at most this many executions of the task run at once (docs/sync.md).
        executor: run the body elsewhere: ``"processes"``, a name registered on the engine, a
            ``concurrent.futures`` executor, a Dask client or ``distaff.executors.Ray()``
            (docs/executors.md). The execution waits for it without a fiber.
        executable: the body returns a command (a str, split shell-style, or a list of str);
            distaff runs it as a subprocess without holding a thread and the result is its
            standard output (text). A non-zero exit raises distaff.CommandError; cancel() and
            timeout= kill the process.
    """
    return _decorator("task", fn, None, **options)


def workflow(fn: Any = _MISSING, /, **options: Any) -> Any:
    """Decorates a function as a workflow (a task that orchestrates others) on the default engine.

    A workflow opens a workflow scope of its own id (``wf-`` + 8 hex digits) when none is active.
    Takes the same options as :func:`task`.
    """
    return _decorator("workflow", fn, None, **options)

