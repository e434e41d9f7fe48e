"""Bodies that run elsewhere and settle later.

One mechanism, :class:`Elsewhere`, for every execution whose body does not run on its fiber: the
fiber prepares the arguments, starts the work at a *placement* and returns a promise
(``_core.promise``); the execution forwards to it and its fiber ends at once, so an execution waiting
for work elsewhere holds no fiber stack. The outcome arrives later, from whatever thread the
placement has; the body then settles the promise, or applies the task's policy first:

- retries start the work again (after the delay: on a timer thread, or on the body's event loop);
- ``fallback=`` gives the result (by default locally, as an execution the promise forwards to);
- ``timeout=`` is armed on the execution; when it fires, or the execution is cancelled (``cancel()``,
  a cancelled parent or workflow scope, shutdown with ``cancel_running``), the execution's done
  callback stops the work: the placement drops it if it has not started, or stops it.

Placements (subclasses): :class:`Job` ships the body to a *runner* — distaff's process pool, an
adapter over a ``concurrent.futures`` executor, Dask or Ray (distaff/executors.py); the event loop
that runs ``async def`` bodies is the other (_async_body.py). A placement implements ``_start()``
(one attempt), ``_stop()`` (the execution finished first) and ``_where()`` (its track in traces),
and may override ``_arguments()``, ``_annotate()``, ``_again()`` and ``_fallback()``; it reports each
attempt's end through ``_succeeded``, ``_failed`` or ``_cancelled`` (at most once per attempt).

A runner implements ``name``, ``owned`` (the engine made it and shuts it down), ``submit(job)``,
``cancel(job)`` and ``close(wait)``; it calls ``job.shipped()`` as it hands the body to the
executor (a trace's interval "on the executor" starts there), ``job.payload()`` (the bytes to ship,
serialized only when it ships them) and ``job.report(outcome=..., error=...)`` exactly once per
submission.
"""

from __future__ import annotations

import concurrent.futures
import os
import heapq
import inspect
import threading
import time
from typing import Any, Callable

from . import _core, _quiet, _remote, _trace
from ._arguments import _resolve_value
from ._errors import SerializationError, ShutdownError
from ._retry import _record_attempt

_settle = _core.settle
_promise = _core.promise
_current_execution = _core.current_execution


class Elsewhere:
    """A body that runs elsewhere and settles later. It is the execution's body object itself: the
    fiber calls it, it starts the work and returns the promise the execution forwards to."""

    __slots__ = ("fn", "policy", "name", "engine", "timeout", "me", "promise", "args", "kwargs",
                 "attempt", "handle", "stopped", "shipped_ns", "slot")

    def __init__(self, fn: Callable, policy: Any, name: str, engine: Any, timeout: float | None = None) -> None:
        self.fn = fn
        self.policy = policy
        self.name = name
        self.engine = engine
        self.timeout = timeout
        self.me = self.promise = self.handle = None
        self.stopped = False
        self.attempt = 1
        self.shipped_ns = 0
        self.slot = None  # a concurrency= slot (_sync._Slot), set by the submitter

    # -- in the execution's fiber -----------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.promise = promise = _promise(self.name)
        try:
            self.args, self.kwargs = self._arguments(args, kwargs)
            me = self.me = _current_execution()
            if me is not None:
                # From here a cancel() or timeout finishes the execution at once but raises nothing
                # in this fiber: an exception at an arbitrary bytecode of the hand-over (a runner
                # popping its queue, between executor.submit and the done callback's registration)
                # lost jobs and leaked window slots. The done callback below stops the work instead.
                me._shield()
            if self._place(me):
                if me is not None:
                    self._annotate(me)
                    if self.policy is not None:
                        me._annotate("attempts", 1)
                    if self.timeout is not None:
                        _core.arm_timeout(me, self.timeout)
                    # Registered before the work starts: a cancel from here on reaches it (or prevents it).
                    # Raw: run on the completing thread (_asyncio.py: distaff's own callbacks).
                    me._add_done_callback(self._execution_done)
                self._start()
        except BaseException:
            # Nothing will settle it now (a cancel can raise in this fiber at any bytecode).
            if not promise.done():
                _settle(promise, False, None)
            raise
        return promise

    def _arguments(self, args: tuple, kwargs: dict) -> tuple:
        """The arguments the body gets (by default as they are)."""
        return args, kwargs

    def _place(self, me: Any) -> bool:
        """Chooses where the body runs, in the fiber. False: it settled the promise instead."""
        return True

    def _annotate(self, me: Any) -> None:
        """Notes on the execution's description (where it runs)."""

    # -- what a placement implements ---------------------------------------------------------------

    def _start(self) -> None:
        """Starts one attempt (the first in the fiber; retries from ``_again``)."""
        raise NotImplementedError

    def _stop(self) -> bool:
        """The execution finished (cancelled, timed out) before the work did: stop it. True if the
        placement settles the promise itself once the work has stopped."""
        raise NotImplementedError

    def _where(self) -> str:
        """The track a trace shows the work on."""
        raise NotImplementedError

    # -- outcomes ---------------------------------------------------------------------------------

    def _succeeded(self, value: Any) -> None:
        if self.promise.done():
            return
        if self.stopped:
            self._cancelled()
            return
        self._returned("succeeded")
        self._settle(True, value)

    def _cancelled(self) -> None:
        if self.promise.done():
            return
        self._returned("cancelled")
        self._settle(False, None)

    def _failed(self, exc: BaseException, retryable: bool = True, outcome: str = "failed") -> None:
        if self.promise.done():
            return
        if self.stopped:
            self._cancelled()
            return
        self._returned(outcome)
        policy, me = self.policy, self.me
        if policy is not None and retryable and isinstance(exc, policy.retry_on):
            _record_attempt(me, self.attempt, exc)
            if self.attempt <= policy.retries:
                delay = policy.delay(self.attempt - 1)
                self.attempt += 1  # description["attempts"] follows when it starts (after the delay)
                self._again(delay)
                return
            if policy.fallback is not None:
                self._fallback(exc)
                return
        self._settle(False, exc)

    def _settle(self, ok: bool, value: Any) -> None:
        # The last word on this execution: let go of the body, its arguments and the cycle through
        # the execution's done callback.
        promise = self.promise
        if ok and self.slot is not None and isinstance(value, _core.Execution):
            self.slot.pause()  # it forwards: no concurrency slot while the other one runs
        self.fn = self.args = self.kwargs = self.me = self.handle = None
        _settle(promise, ok, value)

    # -- failure policy ---------------------------------------------------------------------------

    def _again(self, delay: float) -> None:
        """Starts the next attempt after ``delay`` seconds (by default on distaff's retry timer thread)."""
        if delay > 0:
            _later(delay, self._resubmit)
        else:
            self._resubmit()

    def _resubmit(self) -> None:
        if self.stopped or self.promise.done():
            return
        self.handle = None
        me = self.me
        if me is not None:
            me._annotate("attempts", self.attempt)
        try:
            self._start()
        except BaseException as exc:  # noqa: BLE001 - e.g. a closed runner: the attempt fails
            self._settle(False, exc)

    def _fallback(self, exc: BaseException) -> None:
        """Every attempt failed: ``fallback(*args, **kwargs, exc=exc)`` gives the result. By default
        locally, as an execution the promise forwards to (its result or error is the answer)."""
        try:
            fb = self.engine._submit(self.policy.fallback, f"{self.name} (fallback)", 0, False,
                                     self.args, {**(self.kwargs or {}), "exc": exc}, None)
        except BaseException as sub_exc:  # noqa: BLE001 - the engine is shut down
            self._settle(False, sub_exc)
            return
        self._settle(True, fb)

    def _execution_done(self, _ex: Any) -> None:
        # The execution finished. Through the promise: nothing to do. Otherwise it was cancelled or
        # timed out while the work was queued or running: stop the work.
        if self.promise.done():
            return
        self.stopped = True
        later = False
        try:
            later = self._stop()
        finally:
            if not later:
                self._cancelled()

    # -- trace records ----------------------------------------------------------------------------

    def shipped(self) -> None:
        """The work starts at its placement now. Traces show the interval from here to the outcome's
        return on the placement's track (docs/observability.md): a record per attempt, only while
        something records the engine."""
        self.shipped_ns = _core.monotonic_ns()
        if _trace._hubs:
            self._ship_record()

    def _ship_record(self) -> None:
        log = _trace.elsewhere_log(self.engine)
        me = self.me
        if log is not None and me is not None:
            log.append(("ship", self.shipped_ns, me.id, self._where(), self.attempt))

    def _returned(self, outcome: str) -> None:
        """The attempt's outcome is back (or it was stopped): its trace record."""
        shipped, self.shipped_ns = self.shipped_ns, 0
        if shipped and _trace._hubs:
            log = _trace.elsewhere_log(self.engine)
            me = self.me
            if log is not None and me is not None:
                log.append(("return", _core.monotonic_ns(), me.id, self._where(), self.attempt, outcome, shipped))


class Job(Elsewhere):
    """A body shipped to a runner (an executor: docs/executors.md). Its arguments are resolved to
    values first: values travel, never local handles."""

    __slots__ = ("is_async", "runner")

    def __init__(self, fn: Callable, is_async: bool, policy: Any, name: str, runner: Any, engine: Any) -> None:
        Elsewhere.__init__(self, fn, policy, name, engine)
        self.is_async = is_async
        self.runner = runner

    def _arguments(self, args: tuple, kwargs: dict) -> tuple:
        # The arguments are done (wait=True): their values travel.
        rv = _resolve_value
        return tuple([rv(a) for a in args]), ({k: rv(v) for k, v in kwargs.items()} if kwargs else {})

    def _annotate(self, me: Any) -> None:
        me._annotate("executor", self.runner.name)

    def _start(self) -> None:
        self.runner.submit(self)

    def _stop(self) -> bool:
        self._returned("cancelled")
        self.runner.cancel(self)
        return False

    def _where(self) -> str:
        return "executor " + self.runner.name

    # -- called by runners -----------------------------------------------------------------------

    def payload(self) -> bytes:
        """The serialized body and arguments (pickle, or cloudpickle when needed: _remote.dumps).
        Raises TypeError naming what could not be serialized."""
        try:
            return _remote.dumps((_remote.body_ref(self.fn), self.args, self.kwargs, self.is_async))
        except ImportError:  # cloudpickle is not installed: that message says what to do
            raise
        except Exception as exc:  # noqa: BLE001 - pickling raises anything (TypeError, PicklingError, ...)
            raise _unshippable(self, exc) from None

    def report(self, outcome: Any = None, error: BaseException | None = None) -> None:
        """The runner's report for one submission: the packed outcome from _remote, or a local error
        (WorkerLostError, the TypeError of payload(), the executor's own error)."""
        promise = self.promise
        if promise is None or promise.done():
            return
        if self.stopped:
            self._cancelled()
            return
        if error is None:
            ok, value = _decode(outcome, self)
            if ok:
                self._succeeded(value)
            else:
                # a result that cannot be serialized: the body ran, and another attempt would fail alike
                self._failed(value, not isinstance(value, SerializationError))
            return
        # cannot serialize (or no cloudpickle to try), the executor is shut down: another attempt
        # would fail alike
        self._failed(error, not isinstance(error, (SerializationError, ImportError, ShutdownError)),
                     "cancelled" if isinstance(error, concurrent.futures.CancelledError) else "failed")


def _unshippable(job: Job, exc: BaseException) -> SerializationError:
    import cloudpickle

    what = None
    try:
        cloudpickle.dumps(job.fn)
    except Exception:  # noqa: BLE001
        what = f"the body {getattr(job.fn, '__qualname__', job.fn)!r}"
    if what is None:
        names: list[str] = []
        try:
            bound = inspect.signature(job.fn).bind(*job.args, **job.kwargs)
            items = list(bound.arguments.items())
        except (TypeError, ValueError):
            items = [(f"#{i}", a) for i, a in enumerate(job.args)] + list(job.kwargs.items())
        for n, v in items:
            try:
                cloudpickle.dumps(v)
            except Exception:  # noqa: BLE001
                names.append(f"{n!r} ({type(v).__qualname__})")
        what = "argument " + ", ".join(names) if names else "the arguments"
    return SerializationError(
        f"task {job.name!r} cannot run on executor {job.runner.name!r}: {what} cannot be serialized "
        f"({type(exc).__name__}: {exc})"
    )


def _decode(outcome: Any, job: Job) -> tuple[bool, Any]:
    """(True, value) or (False, exception) from _remote's packed outcome."""
    import pickle  # on first use: 0.5 MiB of RSS for every `import distaff` otherwise (issue 15, W5)
    try:
        packed = pickle.loads(outcome) if outcome.__class__ is bytes else outcome
        ok, data, type_name, message, tb, where = packed
        if job.me is not None:
            job.me._annotate("ran_on", where)
        if ok is True:
            return True, data
        if ok == _remote._NESTED:
            return True, pickle.loads(data)
        exc = None
        if outcome.__class__ is not bytes:
            exc = data
        elif data is not None:
            try:
                exc = pickle.loads(data)
            except Exception:  # noqa: BLE001 - e.g. an exception class that does not import here
                exc = None
        if not isinstance(exc, BaseException):
            exc = RuntimeError(f"{type_name}: {message}")
    except Exception as err:  # noqa: BLE001 - a result that does not deserialize here
        return False, TypeError(f"task {job.name!r}: the result from executor {job.runner.name!r} cannot be "
                                f"deserialized here ({type(err).__name__}: {err})")
    try:
        exc.add_note(f"distaff: task {job.name!r} raised on executor {job.runner.name!r} ({where}); "
                     f"remote traceback:\n{tb}".rstrip())
    except Exception:  # noqa: BLE001
        pass
    return False, exc


# -- one timer thread for retry delays -----------------------------------------------------------

_timer_lock = threading.Condition()
_timer_heap: list = []
_timer_thread: threading.Thread | None = None
_timer_seq = 0


def _later(delay: float, fn: Callable[[], None]) -> None:
    """Calls fn() after delay seconds on distaff's retry timer thread (a daemon: it never holds exit)."""
    global _timer_thread, _timer_seq
    with _timer_lock:
        _timer_seq += 1
        heapq.heappush(_timer_heap, (time.monotonic() + delay, _timer_seq, fn))
        if _timer_thread is None or not _timer_thread.is_alive():
            _timer_thread = threading.Thread(target=_timer_loop, name="distaff-retry-timer", daemon=True)
            _timer_thread.start()
        _timer_lock.notify()


def _timer_loop() -> None:
    while True:
        with _timer_lock:
            while True:
                if _timer_heap:
                    due = _timer_heap[0][0] - time.monotonic()
                    if due <= 0:
                        fn = heapq.heappop(_timer_heap)[2]
                        break
                    with _quiet.idle():
                        _timer_lock.wait(due)
                else:
                    with _quiet.idle():
                        _timer_lock.wait()
        try:
            fn()
        except BaseException:  # noqa: BLE001 - never kill the timer thread
            import logging

            logging.getLogger("distaff").exception("distaff: retry timer callback failed")


# -- the engine's executors -----------------------------------------------------------------------

class Executors:
    """An engine's registered executors and the runners made for them (created on first use)."""

    def __init__(self, executors: Any, processes: Any) -> None:
        from . import executors as ex_mod

        if processes is not None:
            if isinstance(processes, bool) or not isinstance(processes, int):
                raise TypeError(f"processes must be an int or None, not {type(processes).__name__}")
            if processes < 1:
                raise ValueError(f"processes must be at least 1, got {processes}")
        named: dict = {}
        if executors is not None:
            if not isinstance(executors, dict):
                raise TypeError(f"executors= must be a dict of name -> executor, not {type(executors).__name__}")
            for k, v in executors.items():
                if not isinstance(k, str) or not k:
                    raise TypeError(f"executor names must be non-empty strings, not {k!r}")
                if k == "processes":  # would hide the built-in pool while descriptions say "processes"
                    raise ValueError(
                        "executors={'processes': ...}: 'processes' is the name of the engine's own process "
                        "pool (size it with Engine(processes=N)); register your executor under another name")
                ex_mod.check_target(v, f"executors[{k!r}]")
                named[k] = v
        self._named = named
        if named:  # user executors an engine's tasks may first use at exit: see _declare_user_executor
            from . import _engine

            _engine._declare_user_executor()
        self._processes = processes
        self._runners: dict = {}
        self._lock = threading.Lock()
        self._closed = False
        self._user = False  # a runner for an executor the engine does not own was made

    def runner(self, spec: Any) -> Any:
        """The runner for an executor= value (a registered name or an object)."""
        key = spec if spec.__class__ is str else id(spec)
        r = self._runners.get(key)
        if r is not None and (spec.__class__ is str or r.target is spec):
            return r
        from . import executors as ex_mod

        with self._lock:
            if self._closed:
                raise ShutdownError("the engine is shut down: its executors accept no work")
            r = self._runners.get(key)
            if r is not None and (spec.__class__ is str or r.target is spec):
                return r
            if spec.__class__ is str:
                if spec in self._named:
                    r = ex_mod.adapt(self._named[spec], spec)
                elif spec == "processes":
                    r = ex_mod.ProcessPool(self._processes, name="processes")
                    r.owned = True
                else:
                    known = ", ".join(repr(n) for n in ["processes", *self._named]) or "none"
                    raise ValueError(f"no executor named {spec!r} on this engine (known: {known})")
            else:
                r = ex_mod.adapt(spec, None)
            prepare = getattr(r, "prepare", None)
            if prepare is not None:  # on the submitting thread (distaff's pool: its manager thread)
                prepare()
            if not getattr(r, "owned", False):
                # An executor that its own library stops at exit, before distaff's exit hook: the
                # engine's work on it is waited for before that (_engine._wait_before_executors_stop).
                from . import _engine

                _engine._wait_before_executors_stop_hook()
                self._user = True
            self._runners[key] = r
            return r

    def has_user_runners(self) -> bool:
        """True once the engine has shipped a body to an executor it does not own."""
        return self._user or (bool(self._named) and not self._closed)

    def dropped(self, pid: int) -> None:
        """The engine was collected without a shutdown (weakref.finalize): no job of it is queued
        or running (each holds the engine), so the pools it owns stop now, without waiting. Not in
        a child forked from its process: the pools' threads are the parent's. It can run as late
        as the interpreter's final collection, where an import fails ("sys.meta_path is None"):
        nothing here imports."""
        if self._closed:
            return  # shut down already (the exit hook closes every engine's runners)
        if os.getpid() == pid:
            self.close(False)

    def release_user(self) -> None:
        """Lets go of the executors the engine does not own (the exit, once its wait is over): the
        engine accepts no work any more, and a user's pool it still held would outlive its own
        module's teardown, where its exit machinery fails noisily (a ProcessPoolExecutor's
        ``weakref_cb``: "'NoneType' object has no attribute 'util'")."""
        with self._lock:
            self._closed = True
            self._named = {}
            self._runners = {k: r for k, r in self._runners.items() if getattr(r, "owned", False)}

    def close(self, wait: bool, until_idle: Callable[[], Any] | None = None) -> None:
        """Shuts down the runners the engine owns; user-supplied executors keep running.

        ``wait=False`` with ``until_idle`` (the engine's wait_idle): the engine's outstanding
        executions may still need the runners, so they are closed by a thread once it is idle."""
        with self._lock:
            self._closed = True
            owned = [r for r in self._runners.values() if getattr(r, "owned", False)]
        if not owned:
            return
        if not wait and until_idle is not None:
            def later() -> None:
                try:
                    until_idle()
                finally:
                    for r in owned:
                        r.close(True)

            threading.Thread(target=later, name="distaff-executors-close", daemon=True).start()
            return
        for r in owned:
            r.close(wait)
