"""``@task`` / ``@workflow``: decorated functions that submit Executions."""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import math
import os
import random
import secrets
import sys
import weakref
from typing import Any, Callable, Iterable

from . import _asyncio as _asyncio_mod
from . import _core, _elsewhere, _sync
from . import _validate as _v
from ._errors import _note_failure

_submit = _core.submit
# Submit flags as plain ints: the submit path ORs them per call (an IntFlag operation costs more).
_WORKFLOW = int(_core.SubmitFlag.WORKFLOW)
_DETACHED = int(_core.SubmitFlag.DETACHED)
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


def _positional_range(params: Any) -> tuple[int, int]:
    """(least, most) positional arguments a call may pass with no keywords and be certainly valid,
    most ``_core.NO_BOUND`` for *args; (NO_BOUND, NO_BOUND) when such a call still needs the full check
    (a required keyword-only parameter). Calls of that shape skip the checker in the C submit
    (cpp/bindings/submit.cpp)."""
    P = inspect.Parameter
    least = most = 0
    unbounded = False
    for p in params.values():
        if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD):
            most += 1
            if p.default is P.empty:
                least = most
        elif p.kind is P.VAR_POSITIONAL:
            unbounded = True
        elif p.kind is P.KEYWORD_ONLY and p.default is P.empty:
            return _core.NO_BOUND, _core.NO_BOUND
    return least, _core.NO_BOUND if unbounded else most


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
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)
        )
        self.timeout = _check_timeout(timeout)
        self.policy = RetryPolicy.make(retries, retry_delay, backoff, max_delay, jitter, retry_on, fallback)
        if fallback is not None:
            _check_fallback(fallback, fn, self.name)
        # What the fiber calls: the function itself (the hot path), or adapters that resolve
        # Execution arguments to values, retry, arm the timeout, run a coroutine on an event loop.
        body = _resolving(fn) if resolve else fn
        if self.policy is not None:
            body = (_retrying_async if self.is_async else _retrying)(body, self.policy)
        self._body = body
        self._options: dict = {}
        # concurrency=: one limiter per limit value, shared by this task and its .options() copies.
        self._limiters: dict = {}
        self.concurrency = _sync.check_concurrency(concurrency)
        self.executor = _check_executor(executor, kind)  # docs/executors.md
        self._check = _make_checker(fn, getattr(fn, "__qualname__", None) or self.name)
        self._engine = engine
        try:
            accepts = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            accepts = {}
        # A function with its own `workflow_id` parameter receives it (docs/concepts.md).
        self._strip_workflow_id = "workflow_id" not in accepts
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
        return _core.Submitter(
            general=general,
            check=self._check,
            min_pos=min_pos,
            max_pos=max_pos,
            body=self._body,
            name=self.name,
            wait=self._wait,
            engine=self._engine,
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
        if kwargs and "workflow_id" in kwargs and self._strip_workflow_id:
            workflow_id = _v.workflow_id(kwargs.pop("workflow_id"))
        check = self._check
        if check is not None:
            check(*args, **kwargs)
        engine = self._engine or _engine_mod.default_engine()
        wait = self._wait
        if wait.__class__ is tuple:
            wait = self._gating(args, kwargs)
        options = self._options
        executor = options.get("executor", self.executor) if options else self.executor
        binding = None
        if executor is not None:  # the body runs elsewhere; its arguments travel as values
            body = _elsewhere.Job(self.fn, self.is_async, self.policy, self.name, engine._executors.runner(executor), engine)
            wait = True
        else:
            body = self._body
            if self.is_async:
                bind_loop = _get_running_loop()
                body = _AsyncBody(body, bind_loop, engine, self.name, wait is not False, self.kind)
                if bind_loop is not None:
                    binding = body.binding
        timeout = self.timeout
        flags = self._kind_flag
        if options:
            timeout = options.get("timeout", timeout)
            flags |= _DETACHED if options.get("detached") else 0
            if workflow_id is None:
                workflow_id = options.get("workflow_id")
        if timeout is not None:
            if executor is not None:
                body.timeout = timeout
            else:
                body = _Timed(body, timeout)
        limit = options.get("concurrency", self.concurrency) if options else self.concurrency
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
        return ex

    def _submit_limited(self, limit, engine, body, flags, wait, args, kwargs, workflow_id) -> _core.Execution:
        """Submission under concurrency=: beyond the limit, a gate promise joins the wait=
        dependencies, so the execution waits without a fiber until a slot frees (_sync._Limiter)."""
        limiter = self._limiters.get(limit)
        if limiter is None:
            limiter = self._limiters.setdefault(limit, _sync._Limiter(limit, self.name))
        # A body running here holds its slot until it returns (cancel and timeout cannot stop a
        # blocking call); async and remote bodies hand over and return at once: their slot ends
        # with the execution.
        slot = None
        if not self.is_async and not isinstance(body, _elsewhere.Job):
            slot = _sync._Slot(limiter)
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
        clone._options = opts
        clone.submit = clone._make_submit()
        return clone

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        execution = self.submit(*args, **kwargs)
        if _get_running_loop() is not None:
            return execution  # inside a running event loop: the caller awaits it
        return execution.result()

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


def _check_fallback(fallback: Callable, fn: Callable, name: str) -> None:
    """fallback= is called as ``fallback(*args, **kwargs, exc=error)``: it must take ``exc`` by
    keyword, and the task's own parameters must leave that name free."""
    P = inspect.Parameter
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "exc" in params and params["exc"].kind is not P.VAR_KEYWORD:
        raise ValueError(
            f"fallback= receives the final error as the keyword argument exc=, which clashes with the "
            f"parameter 'exc' of {name!r}: rename that parameter"
        )
    try:
        fparams = inspect.signature(fallback).parameters
    except (TypeError, ValueError):
        return  # a builtin without a signature: checked when called
    p = fparams.get("exc")
    takes = (p is not None and p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)) or any(
        q.kind is P.VAR_KEYWORD for q in fparams.values()
    )
    if not takes:
        raise TypeError(
            f"fallback {getattr(fallback, '__qualname__', fallback)!r} must accept the keyword argument exc= "
            f"(the final error): fallback(*args, exc, **kwargs), e.g. def fallback(x, *, exc): ..."
        )


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


def _rebuild_task(fn: Callable, kind: str, name: str) -> Task:
    return Task(fn, kind=kind, name=name)


def _check_executor(executor: Any, kind: str) -> Any:
    if executor is None:
        return None
    if kind == "workflow":
        raise TypeError("a @workflow orchestrates locally and takes no executor=; give it to the tasks it runs")
    from . import executors

    executors.check_target(executor, "executor=")
    return executor


def _check_timeout(timeout: Any) -> float | None:
    """The timeout= option: None, or seconds > 0 (inf or 10**400: no deadline, like None)."""
    return _v.seconds(timeout, "timeout", _v.OPTION)


class RetryPolicy:
    """How a failed attempt is retried: ``retries`` more attempts, the n-th (from 0) after
    ``min(retry_delay * backoff**n, max_delay)`` seconds, times a random factor in [0.5, 1.5) with
    ``jitter``. Only exceptions matching ``retry_on`` are retried. When every attempt failed,
    ``fallback(*args, **kwargs, exc=error)`` (if given) provides the result: the call's own
    arguments, and the final error as the keyword argument ``exc``."""

    __slots__ = ("retries", "retry_delay", "backoff", "max_delay", "jitter", "retry_on", "fallback")

    @classmethod
    def make(cls, retries, retry_delay, backoff, max_delay, jitter, retry_on, fallback) -> "RetryPolicy | None":
        _v.count(retries, "retries")
        retry_delay = _v.seconds(retry_delay, "retry_delay", _v.DELAY)
        backoff = _v.seconds(backoff, "backoff", _v.FACTOR)
        max_delay = _v.seconds(max_delay, "max_delay", _v.CAP)
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            raise TypeError("retry_on must be an exception class or a tuple of them")
        if fallback is not None and not callable(fallback):
            raise TypeError("fallback must be callable")
        if retries == 0 and fallback is None:
            return None
        p = cls()
        p.retries, p.retry_delay, p.backoff, p.max_delay = retries, float(retry_delay), float(backoff), max_delay
        p.jitter, p.retry_on, p.fallback = bool(jitter), retry_on, fallback
        return p

    def delay(self, n: int) -> float:
        d = self.retry_delay
        if d and self.backoff != 1.0:
            try:
                d *= self.backoff**n
            except OverflowError:  # backoff=1e308: the delay is as long as a float gets
                d = math.inf
        if self.max_delay is not None:
            d = min(d, self.max_delay)
        if self.jitter:
            d *= 0.5 + random.random()
        return d


def _record_attempt(me: Any, attempt: int, exc: BaseException) -> None:
    if me is None:
        return
    errors = me.description.get("attempt_errors", [])
    try:
        text = repr(exc)
    except Exception:  # an exception whose repr fails must not replace the body's error
        text = f"<{type(exc).__qualname__} (repr failed)>"
    errors = errors + [{"attempt": attempt, "error": text, "type": type(exc).__qualname__}]
    me._annotate("attempt_errors", errors)


def _retrying(fn: Callable, policy: RetryPolicy) -> Callable:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        me = _core.current_execution()
        attempt = 1
        while True:
            if me is not None:
                me._annotate("attempts", attempt)
            try:
                return fn(*args, **kwargs)
            except policy.retry_on as exc:
                if me is not None and me.done():  # cancelled or timed out: no more attempts
                    raise
                _record_attempt(me, attempt, exc)
                if attempt > policy.retries:
                    if policy.fallback is not None:
                        return policy.fallback(*args, **kwargs, exc=exc)
                    raise
                _core.sleep(policy.delay(attempt - 1))  # suspends the fiber, not the thread
                attempt += 1

    return call


def _retrying_async(fn: Callable, policy: RetryPolicy) -> Callable:
    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        me = _core.current_execution()  # set for this asyncio task by _cancellable
        attempt = 1
        while True:
            if me is not None:
                me._annotate("attempts", attempt)
            try:
                return await fn(*args, **kwargs)
            except policy.retry_on as exc:
                if me is not None and me.done():  # cancelled or timed out: no more attempts
                    raise
                _record_attempt(me, attempt, exc)
                if attempt > policy.retries:
                    if policy.fallback is not None:
                        r = policy.fallback(*args, **kwargs, exc=exc)
                        return (await r) if inspect.isawaitable(r) else r
                    raise
                await asyncio.sleep(policy.delay(attempt - 1))
                attempt += 1

    return call


class _Timed:
    """Arms the execution's timeout when its body starts."""

    __slots__ = ("fn", "timeout")

    def __init__(self, fn: Callable, timeout: float) -> None:
        self.fn = fn
        self.timeout = timeout

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _core.arm_timeout(_core.current_execution(), self.timeout)
        return self.fn(*args, **kwargs)


def _scan_executions(args: tuple, kwargs: dict) -> tuple:
    """What wait=True waits for: Executions among the arguments, also inside lists, tuples and
    dicts (exact types, as the C++ scan does)."""
    out = []
    for v in (*args, *(kwargs.values() if kwargs else ())):
        vals = v if v.__class__ in (list, tuple) else v.values() if v.__class__ is dict else (v,)
        out.extend(x for x in vals if isinstance(x, _core.Execution))
    return tuple(out)


class _WorkflowIds:
    """Automatic workflow ids: ``wf-`` + 8 hex digits, unique in the process.

    The n-th id is a keyed bijection of n on 32 bits, so the first 2**32 ids of a process never repeat
    (random ids did: 150k of them held 1-5 duplicates, and cancel_workflow(id) then cancelled
    unrelated runs). They still look random, and the key is drawn per process: a forked child
    re-draws it, so it does not hand out the ids its parent goes on using. Past 2**32 ids the counter
    no longer fits in 8 hex digits and the ids grow longer (``wf-`` + 16 hex digits), still unique.
    """

    def __init__(self) -> None:
        self._count = itertools.count()  # next() is atomic under the GIL
        self._rekey()

    def _rekey(self) -> None:
        k = secrets.randbits(64)
        self._k1, self._k2 = k & 0xFFFFFFFF, k >> 32

    def __call__(self) -> str:
        n = next(self._count)
        if n >> 32:
            return f"wf-{n:016x}"
        # Each step is a bijection on 32-bit integers: add, multiply by an odd number, xor-shift, xor.
        x = (n + self._k1) & 0xFFFFFFFF
        x = (x * 0x9E3779B1) & 0xFFFFFFFF
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & 0xFFFFFFFF
        x ^= x >> 13
        x ^= self._k2
        return f"wf-{x:08x}"


_new_workflow_id = _WorkflowIds()
os.register_at_fork(after_in_child=_new_workflow_id._rekey)


def _resolve_value(v: Any) -> Any:
    # Containers are rebuilt only when they hold Executions: a shared dict or list without any
    # reaches the body as the same object (PocketFlow's shared store is mutated in place).
    E = _core.Execution
    if v.__class__ is E:
        return v.result()
    if v.__class__ is list:
        return [x.result() if x.__class__ is E else x for x in v] if any(x.__class__ is E for x in v) else v
    if v.__class__ is tuple:
        return tuple(x.result() if x.__class__ is E else x for x in v) if any(x.__class__ is E for x in v) else v
    if v.__class__ is dict:
        if any(x.__class__ is E for x in v.values()):
            return {k: (x.result() if x.__class__ is E else x) for k, x in v.items()}
    return v


def _resolving(fn: Callable) -> Callable:
    """resolve=True: Execution arguments (top level, and inside lists, tuples and dict values one
    level down) arrive as their values. They are all done by then (resolve implies wait=True)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*[_resolve_value(a) for a in args], **{k: _resolve_value(v) for k, v in kwargs.items()})

    return call


def _bind_to_submitting_loop(binding: Any, loop: Any, ex: Any) -> None:
    # An async body submitted from a running loop is bound to that loop from now on: a blocking wait
    # on the loop's thread that needs it is a deadlock, and (unless it waits for dependencies, see
    # _AsyncBody) the loop closing cancels it. Released when the execution finishes.
    binding.bind(loop, ex, not binding.gated, started=False)
    ex._add_done_callback(binding.release)


class _AsyncBody:
    """Runs an ``async def`` body on an event loop and completes the execution from it.

    The loop is the submitter's running loop (so loop-bound clients work), else the engine's own
    loop thread. The fiber only starts the coroutine and returns a promise (a forwarded Execution),
    so no fiber stack is held while the coroutine runs.

    Which loop, exactly (docs/asyncio.md): a body submitted from a running loop belongs to that loop.
    If the loop is closed before the body starts, the body is cancelled — except a body that waited
    for dependencies (``wait=``/``resolve=``), which runs on the engine's loop instead; so does a gated
    body whose loop is not running when it starts. Once handed to a loop, the loop closing (or
    ``asyncio.run`` returning) cancels it.
    """

    __slots__ = ("fn", "loop", "engine", "name", "gated", "binding", "kind")

    def __init__(self, fn: Callable, loop: Any, engine: Any, name: str, gated: bool = False, kind: str = "task") -> None:
        self.fn = fn
        # Weakly: a pending body must not keep a dropped loop alive (its collection cancels the body).
        self.loop = weakref.ref(loop) if loop is not None else None
        self.engine = engine
        self.name = name
        self.gated = gated
        self.kind = kind  # "task" or "workflow": the word in the note on the body's error
        self.binding = _asyncio_mod._Binding(engine, gated)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        me = _core.current_execution()
        binding = self.binding
        promise = _core.promise(self.name)
        loop = None
        if self.loop is not None:
            loop = self.loop()
            if loop is None or loop.is_closed() or (self.gated and not loop.is_running()):
                loop = None
                if not self.gated:  # its loop is gone: the body ends as the loop's own tasks did
                    binding.bind(None, me, True)
                    _core.settle(promise, False, None)
                    return promise
        note = f"distaff: raised in {self.kind} '{self.name}' (execution {me.id if me else '?'})"

        def settle(fut: Any) -> None:
            if fut.cancelled():
                _core.settle(promise, False, None)
                return
            exc = fut.exception()
            if exc is None:
                # A returned Execution is followed, like a sync body's (a cycle: DeadlockError).
                _core.settle(promise, True, fut.result())
            else:
                _note_failure(exc, note, me.id if me else 0)
                _core.settle(promise, False, exc)

        def start() -> None:
            # On the loop. The coroutine is created here, not in the fiber: if the loop never runs
            # this callback (stopped, then closed), no coroutine is left un-awaited.
            if me is not None and me.done():  # cancelled or timed out before the loop got to it
                _core.settle(promise, False, None)
                return
            task = asyncio.get_running_loop().create_task(_cancellable(me, self.fn, args, kwargs))
            task.add_done_callback(settle)

        if loop is not None:
            binding.bind(loop, me, True)
            try:
                loop.call_soon_threadsafe(start)
                return promise
            except RuntimeError:  # closed just now
                if not self.gated:
                    binding.bind(None, me, True)
                    _core.settle(promise, False, None)
                    return promise
        loop = self.engine._event_loop()
        binding.bind(loop, me, True)
        if self.loop is None and me is not None:
            me._add_done_callback(binding.release)
        loop.call_soon_threadsafe(start)
        return promise


async def _cancellable(me: Any, fn: Any, args: Any, kwargs: Any) -> Any:
    """Runs an async body so that cancelling (or timing out) its execution cancels the coroutine.

    The link is made here, on the loop, not in the fiber that starts the coroutine: a cancel can
    raise an asynchronous exception in that fiber at any bytecode, which could otherwise leave the
    coroutine running unlinked."""
    if me is not None:
        # This task's context only: distaff.current_execution() in the body, and the parent (for
        # the graph and for cancellation of the tree) of what the body submits.
        _core._async_current.set(me)
        # Weakly: the execution must not keep the task, hence its loop, alive (a dropped loop is
        # collected and its bodies cancelled).
        task_ref = weakref.ref(asyncio.current_task())

        def cancel(_ex: Any) -> None:
            task = task_ref()
            if task is None or task.done():  # finished normally: nothing to cancel, no wake-up needed
                return
            try:
                task.get_loop().call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed: the coroutine is gone with it
                pass

        me._add_done_callback(cancel)
    return await fn(*args, **kwargs)


def _decorator(kind: str, fn: Any, engine: Any, **options: Any):
    if fn is not _MISSING:
        if options:
            raise TypeError(f"@{kind} takes options as keywords only: @{kind}(name=...)")
        return Task(fn, kind=kind, engine=engine)

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
    """
    return _decorator("task", fn, None, **options)


def workflow(fn: Any = _MISSING, /, **options: Any) -> Any:
    """Decorates a function as a workflow (a task that orchestrates others) on the default engine.

    A workflow opens a workflow scope of its own id (``wf-`` + 8 hex digits) when none is active.
    Takes the same options as :func:`task`.
    """
    return _decorator("workflow", fn, None, **options)


_elsewhere._resolve_value = _resolve_value
_elsewhere._record_attempt = _record_attempt
