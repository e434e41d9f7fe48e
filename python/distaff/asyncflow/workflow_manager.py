"""AsyncFlow's ``WorkflowEngine`` on distaff.

Every component (function task, executable task, prompt task, block) is one distaff execution of a
private :class:`distaff.Engine`; what the program gets back is an ``asyncio.Future`` on the
engine's loop (a :class:`ComponentFuture`) that settles when the execution does. Futures passed as
arguments become the executions' dependencies, so distaff orders, resolves and fails them: no
polling loop, no per-component scan. Only distaff's public API is used (docs/asyncflow.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import itertools
import logging
import os
import shlex
import signal
import threading
import uuid
import weakref
from collections.abc import MutableMapping
from typing import Any, AsyncIterator, Callable, Optional, Union

import distaff

from .backends import (
    DaskExecutionBackend,
    LocalExecutionBackend,
    NoopExecutionBackend,
    _Backend,
    _run_body,
)
from .data import InputFile, OutputFile
from .errors import DependencyFailureError

TASK = "task"
BLOCK = "block"
FUNCTION = "function"
EXECUTABLE = "executable"
PROMPT = "prompt"

logger = logging.getLogger("distaff.asyncflow")

_uids = itertools.count(1)  # per process, like AsyncFlow's counter (never reset: uids stay unique)
_get_running_loop = asyncio._get_running_loop  # None instead of an exception: the call hot path

_NO_PARAMS = object()  # _Spec.check of a function without parameters

NOOP_OUTPUT = "Dummy Output"
NOOP_PROMPT_OUTPUT = "Dummy Prompt Output"


class ComponentFuture(asyncio.Future):
    """The future a component call returns: an ``asyncio.Future`` of the engine's loop.

    ``state`` is ``"PENDING"`` (waiting for dependencies or a free worker), ``"RUNNING"``,
    then ``"DONE"``, ``"FAILED"`` or ``"CANCELLED"``. ``id`` is the numeric part of the uid, and
    ``task`` (or ``block``) the component's description, as in AsyncFlow. ``cancel()`` works before
    and while the component runs.

    The description dict is made the first time it is asked for (``task``, ``block``,
    ``description``, ``engine.components[uid]``) and is the same dict from then on: a component
    nobody inspects costs no dicts or lists (10,000 tasks kept ~100,000 objects alive for the
    garbage collector to scan again and again).
    """

    __slots__ = ("id", "_execution", "_deps", "_failed", "_error_map", "_spec", "_uid", "_wid", "_args",
                 "_kwargs", "_td", "_files", "_desc")

    # Every slot is set by WorkflowEngine._call, which makes these futures (no __init__ of our own:
    # one Python frame less per component).

    @property
    def state(self) -> str:
        if self.done():
            if self.cancelled():
                return "CANCELLED"
            return "FAILED" if self._failed else "DONE"
        ex = self._execution
        if ex is not None and ex.state in ("running", "succeeded", "failed", "cancelled"):
            return "RUNNING"
        return "PENDING"

    @property
    def task(self) -> dict | None:
        """The description of a task component (AsyncFlow's attribute); None for a block."""
        return None if self._spec.comp_type == BLOCK else self.description

    @property
    def block(self) -> dict | None:
        """The description of a block component; None for a task."""
        return self.description if self._spec.comp_type == BLOCK else None

    @property
    def description(self) -> dict:
        desc = self._desc
        if desc is None:
            spec = self._spec
            files = self._files
            kwargs = self._kwargs
            desc = self._desc = {
                "name": spec.name,
                "uid": self._uid,
                "workflow_id": self._wid,
                "args": self._args,
                "kwargs": {} if kwargs is None else kwargs,
                "function": spec.fn if spec.task_type in (FUNCTION, None) else None,
                "executable": None,
                "arguments": [],
                "prompt": None,
                "task_backend_specific_kwargs": self._td,
                "target_backend": spec.target_backend,
                "capture_stdio": spec.capture_stdio,
                "is_service": spec.service,
                "metadata": {
                    "dependencies": [d.description for d in self._deps],
                    "input_files": list(files[0]) if files else [],
                    "output_files": list(files[1]) if files else [],
                },
            }
        return desc

    def cancel(self, msg: Any = None) -> bool:
        if self.done():
            return False
        ex = self._execution
        if ex is not None:
            ex.cancel()
        return super().cancel(msg)

    # -- settling from the execution --------------------------------------------------------------

    def _settle(self, ex: Any) -> None:
        """Done callback of the execution (runs on this future's loop)."""
        if self.done():
            return
        if ex.cancelled():
            # Cancelled by distaff (a cancelled block or dependency, a shutdown; distaff stops a
            # body running on an executor thread at its next await).
            super().cancel()
            return
        error = ex.exception()
        if error is None:
            self.set_result(ex.result())
            return
        if isinstance(error, distaff.DependencyError) and self._deps:
            for dep in self._deps:
                dep._settle_now()
            if any(dep.cancelled() for dep in self._deps):
                super().cancel()
                return
            failed = [dep for dep in self._deps if dep.done() and not dep.cancelled() and dep._failed]
            if failed:
                error = DependencyFailureError(
                    f"Cannot execute '{self._spec.name}' due to dependency failure",
                    failed_dependencies=[dep._spec.name for dep in failed],
                    root_cause=failed[0].exception(),
                )
        elif self._error_map is not None:
            error = self._error_map(error)
        self._failed = True
        self.set_exception(error)

    def _settle_now(self) -> None:
        ex = self._execution
        if not self.done() and ex is not None and ex.done():
            self._settle(ex)


class _Components(MutableMapping):
    """``engine.components``: uid -> ``{"type": "task" | "block", "future": ..., "description":
    {...}}``, as AsyncFlow keeps it. An entry is made when first read, then kept."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict = {}  # uid -> its ComponentFuture until the entry is read, then the entry

    def __getitem__(self, uid: str) -> dict:
        entry = self._items[uid]
        if entry.__class__ is ComponentFuture:
            entry = self._items[uid] = {"type": entry._spec.comp_type, "future": entry, "description": entry.description}
        return entry

    def __setitem__(self, uid: str, entry: dict) -> None:
        self._items[uid] = entry

    def __delitem__(self, uid: str) -> None:
        del self._items[uid]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, uid: object) -> bool:
        return uid in self._items

    def __repr__(self) -> str:
        return repr(dict(self.items()))


def _command_error(error: BaseException) -> BaseException:
    """AsyncFlow fails an executable task whose command exited non-zero with its stderr text."""
    if isinstance(error, distaff.CommandError):
        mapped = RuntimeError(error.stderr or "failed with unknown error")
        mapped.__cause__ = error
        return mapped
    return error


class _Spec:
    """One decorated function: what a call of it submits, and where."""

    __slots__ = (
        "fn", "name", "comp_type", "task_type", "backend", "target_backend", "service",
        "capture_stdio", "td_def", "signature", "check", "dtask", "error_map", "commands",
    )


# -- signals: one handler per loop, shared by the engines on it ------------------------------------

_SIGNALS = tuple(getattr(signal, n) for n in ("SIGHUP", "SIGTERM", "SIGINT") if hasattr(signal, n))
_signal_engines: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.WeakSet]" = weakref.WeakKeyDictionary()
# What each signal had before the first engine on a loop took it over, put back when the last one
# goes: the loop's own handler (loop.add_signal_handler: its callback and arguments), else the
# process's (signal.signal: a function, SIG_IGN or SIG_DFL; None if not set from Python).
_saved_signals: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()


def _save_signal(loop: asyncio.AbstractEventLoop, sig: int) -> tuple:
    handle = getattr(loop, "_signal_handlers", {}).get(sig)
    if handle is not None and not handle.cancelled():
        return ("loop", handle._callback, handle._args)
    return ("process", signal.getsignal(sig), None)


def _restore_signal(loop: asyncio.AbstractEventLoop, sig: int, saved: tuple) -> None:
    where, handler, args = saved
    if where == "loop" and not loop.is_closed():
        loop.add_signal_handler(sig, handler, *args)
    elif where == "process" and handler is not None:
        if _finished_runner_handler(handler):
            # asyncio.run's own SIGINT handler for a main task that has finished (the engine ends
            # with the loop, after Runner.run put default_int_handler back — it found ours there):
            # what the runner itself would have put back.
            handler = signal.default_int_handler
        signal.signal(sig, handler)


def _finished_runner_handler(handler: Any) -> bool:
    if not isinstance(handler, functools.partial):
        return False
    owner = getattr(handler.func, "__self__", None)
    if not isinstance(owner, asyncio.Runner) or getattr(handler.func, "__name__", "") != "_on_sigint":
        return False
    main_task = handler.keywords.get("main_task")
    return main_task is not None and main_task.done()


def _on_signal(loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
    engines = list(_signal_engines.get(loop, ()))
    for engine in engines:
        logger.info("Received external shutdown signal (%s), initiating graceful shutdown", sig.name)
        engine._start_shutdown(False)


class WorkflowEngine:
    """AsyncFlow's workflow engine: ``flow = await WorkflowEngine.create(backend=...)``.

    Decorators ``function_task``, ``executable_task``, ``prompt_task`` and ``block`` turn
    ``async def`` functions into components; calling one returns a :class:`ComponentFuture` at
    once. ``await flow.shutdown()`` cancels what has not finished and releases the backends; the
    engine also shuts down on SIGINT, SIGTERM and SIGHUP (when its loop runs in the main thread),
    and when its loop ends (``asyncio.run()`` returning): components never awaited are cancelled.
    """

    def __init__(
        self,
        backend: Any = None,
        dry_run: bool = False,
        implicit_data: bool = True,
        uid: Optional[str] = None,
        work_dir: Optional[str] = None,
    ) -> None:
        loop = _get_running_loop()
        if loop is None:
            raise RuntimeError(
                "WorkflowEngine must be created within an async context: use "
                "'await WorkflowEngine.create(...)' from within an async function run by asyncio.run()"
            )
        for value, what in ((dry_run, "dry_run"), (implicit_data, "implicit_data")):
            if not isinstance(value, bool):
                raise TypeError(f"{what} must be a bool, not {type(value).__name__}")
        if uid is not None and (not isinstance(uid, str) or not uid):
            raise TypeError(f"uid must be a non-empty str, not {uid!r}")
        if work_dir is not None and not isinstance(work_dir, (str, os.PathLike)):
            raise TypeError(f"work_dir must be a str or a path, not {type(work_dir).__name__}")
        if backend is None:
            backend = NoopExecutionBackend() if dry_run else LocalExecutionBackend()
        backends = list(backend) if isinstance(backend, (list, tuple)) else [backend]
        if not backends:
            raise ValueError("backend= is an empty list: give at least one backend")
        self.loop = loop
        self.uid = uid or f"asyncflow.session.{uuid.uuid4().hex[:8]}"
        self.work_dir = os.fspath(work_dir) if work_dir is not None else os.getcwd()
        self.dry_run = dry_run
        self.implicit_data_mode = implicit_data
        self._backends: dict[str, _Backend] = {}
        for b in backends:
            if not isinstance(b, _Backend):
                raise TypeError(
                    f"backend must be a distaff.asyncflow backend (LocalExecutionBackend, NoopExecutionBackend, "
                    f"...), not {type(b).__name__}"
                )
            if b.name in self._backends:
                raise ValueError(f"two backends are named {b.name!r}: give each one its own name=")
            self._backends[b.name] = b
            b._work_dir = os.path.join(self.work_dir, self.uid)
            b.is_attached = True
            b.attached_to.append(self.uid)
        self._default_backend_name = backends[0].name
        # uid -> ComponentFuture; `components` shows each as AsyncFlow's entry
        self._futures: dict[str, ComponentFuture] = {}
        self.components = _Components()
        self._workflow_id_ctx: contextvars.ContextVar = contextvars.ContextVar(
            f"distaff_asyncflow_workflow_id.{self.uid}", default=None
        )
        self._engine = distaff.Engine()
        self._settle_context = contextvars.Context()
        self._closing = False
        self._shutdown_task: asyncio.Task | None = None
        # The asyncio tasks of executable-task bodies running their command: shutdown waits for
        # them (a cancelled one kills its command and reaps it), so none outlives shutdown().
        self._commands: set = set()
        self.task_states_map = self.backend.get_task_states_map()

        self.block = self._register_decorator(BLOCK)
        self.function_task = self._register_decorator(TASK, FUNCTION)
        self.executable_task = self._register_decorator(TASK, EXECUTABLE)
        self.prompt_task = self._register_decorator(TASK, PROMPT)
        self._setup_signal_handlers()
        self._watch_loop_end()

    @classmethod
    async def create(
        cls,
        backend: Any = None,
        dry_run: bool = False,
        implicit_data: bool = True,
        uid: Optional[str] = None,
        work_dir: Optional[str] = None,
    ) -> "WorkflowEngine":
        """Creates the engine on the running loop. ``backend``: one backend or a list (the first
        is the default; tasks pick another with ``backend="name"``). Without one: the dry-run
        ``NoopExecutionBackend`` if ``dry_run``, else a ``LocalExecutionBackend`` on a
        ``ThreadPoolExecutor``."""
        if _get_running_loop() is None:
            raise RuntimeError(
                "WorkflowEngine.create() must be awaited within a running event loop (inside asyncio.run())"
            )
        if backend is None and not dry_run:
            logger.warning("No execution backend provided, and dry_run is False. Defaulting to LocalExecutionBackend")
        engine = cls(backend=backend, dry_run=dry_run, implicit_data=implicit_data, uid=uid, work_dir=work_dir)
        for b in engine._backends.values():
            await b
        return engine

    def __repr__(self) -> str:
        state = "shut down" if self._closing else "running"
        return f"<distaff.asyncflow.WorkflowEngine {self.uid} {state}>"

    @property
    def backend(self) -> _Backend:
        """The default backend (the first one given)."""
        return self._backends[self._default_backend_name]

    @property
    def backends(self) -> dict:
        """The backends by name."""
        return dict(self._backends)

    @property
    def distaff_engine(self) -> distaff.Engine:
        """The distaff Engine running the components (``graph()``, ``stats()``)."""
        return self._engine

    # -- scopes ------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def workflow_scope(self, workflow_id: str | None = None) -> AsyncIterator[str]:
        """Tags every component registered inside the block with ``workflow_id`` (generated
        ``wf-`` + 8 hex digits when omitted) and yields it. Per engine: another engine's
        components never see this scope."""
        if workflow_id is not None and (not isinstance(workflow_id, str) or not workflow_id):
            raise TypeError(f"workflow_id must be a non-empty str, not {workflow_id!r}")
        wid = workflow_id or f"wf-{uuid.uuid4().hex[:8]}"
        token = self._workflow_id_ctx.set(wid)
        try:
            yield wid
        finally:
            self._workflow_id_ctx.reset(token)

    # -- decorators ----------------------------------------------------------------------------------

    def _register_decorator(self, comp_type: str, task_type: str | None = None) -> Callable:
        def outer(
            possible_func: Union[Callable, None] = None,
            service: bool = False,
            backend: Optional[str] = None,
            capture_stdio: bool = False,
        ) -> Any:
            if not isinstance(service, bool):
                raise TypeError(f"'service' must be a boolean, got {type(service).__name__}")
            if not isinstance(capture_stdio, bool):
                raise TypeError(f"'capture_stdio' must be a boolean, got {type(capture_stdio).__name__}")
            if backend is not None:
                if not isinstance(backend, str):
                    raise TypeError(f"'backend' must be a backend's name (a str), got {type(backend).__name__}")
                if backend not in self._backends:
                    raise ValueError(f"no backend named {backend!r} on this engine; it has {sorted(self._backends)}")

            def actual_decorator(func: Callable) -> Callable:
                spec = self._make_spec(func, comp_type, task_type, service, backend, capture_stdio)
                call = self._call

                @functools.wraps(func)
                def wrapped(*args: Any, **kwargs: Any) -> ComponentFuture:
                    return call(spec, args, kwargs)

                return wrapped

            if possible_func is None:
                return actual_decorator
            if callable(possible_func):
                return actual_decorator(possible_func)
            raise TypeError(f"Expected a callable function, got {type(possible_func).__name__}")

        return outer

    def _make_spec(self, func: Any, comp_type: str, task_type: str | None, service: bool, backend: str | None, capture_stdio: bool) -> _Spec:
        kind = "block" if comp_type == BLOCK else f"{task_type}_task"
        if not callable(func):
            raise TypeError(f"@{kind} needs a callable, got {type(func).__name__}")
        if not inspect.iscoroutinefunction(func):
            raise TypeError(
                f"Function {getattr(func, '__name__', func)!r} must be async (async def) to be a {kind}; "
                "for a sync function, wrap it in an async def"
            )
        signature = inspect.signature(func)
        td_def: dict = {}
        param = signature.parameters.get("task_description")
        if param is not None and param.default is not inspect.Parameter.empty:
            if not isinstance(param.default, dict):
                raise TypeError(
                    f"Default value for 'task_description' in function '{func.__name__}' must be a dict, "
                    f"got {type(param.default).__name__}"
                )
            td_def = param.default
        spec = _Spec()
        spec.fn = func
        spec.name = func.__name__
        spec.comp_type = comp_type
        spec.task_type = task_type
        spec.target_backend = backend
        spec.backend = self._backends[backend or self._default_backend_name]
        spec.service = service
        spec.capture_stdio = capture_stdio
        spec.td_def = td_def
        spec.signature = signature
        # The argument check (a TypeError in the caller, before anything is queued): skipped for
        # a function taking (*args, **kwargs) (anything fits) and for a call without arguments of a
        # function without parameters (the common no-op case of the benchmarks).
        kinds = {p.kind for p in signature.parameters.values()}
        if not kinds:
            spec.check = _NO_PARAMS
        elif kinds <= {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}:
            spec.check = None
        else:
            spec.check = signature
        spec.error_map = None
        spec.commands = self._commands
        eng = self._engine
        bkind = spec.backend.kind
        if comp_type == BLOCK:
            spec.dtask = eng.task(name=spec.name, resolve=True)(self._block_body)
        elif task_type == FUNCTION:
            if bkind == "noop":
                spec.dtask = eng.task(name=spec.name, wait=True)(_noop_body)
            elif spec.backend.in_process:
                # Threads of this process: distaff runs the coroutine on the executor thread's own
                # event loop and cancels it at its next await when the execution is cancelled
                # (docs/executors.md).
                spec.dtask = eng.task(name=spec.name, executor=spec.backend.executor)(_call_body)
            else:
                spec.dtask = eng.task(name=spec.name, executor=spec.backend.executor)(_run_body)
        elif task_type == EXECUTABLE:
            if bkind == "noop":
                spec.dtask = eng.task(name=spec.name, resolve=True)(_noop_command_body)
            else:
                spec.dtask = eng.task(name=spec.name, resolve=True, executable=True)(_command_body)
                spec.error_map = _command_error
        else:  # PROMPT
            spec.dtask = eng.task(name=spec.name, resolve=True)(_prompt_body)
        return spec

    # -- a call ---------------------------------------------------------------------------------------

    def _call(self, spec: _Spec, args: tuple, kwargs: dict) -> ComponentFuture:
        loop = self.loop
        if _get_running_loop() is not loop:
            raise RuntimeError(
                f"{spec.name}() must be called from a coroutine running on the WorkflowEngine's event loop "
                "(the loop it was created on); function-task bodies run elsewhere and cannot call components"
            )
        if self._closing:
            raise RuntimeError(f"cannot call {spec.name}(): the WorkflowEngine {self.uid} is shut down")
        td = spec.td_def
        if kwargs:
            if "task_description" in kwargs:
                td_call = kwargs.pop("task_description") or {}
                if not isinstance(td_call, dict):
                    raise TypeError(f"Expected 'task_description' to be a dict, got {type(td_call).__name__}")
                td = {**td, **td_call}
            explicit_wid = kwargs.pop("workflow_id", None)
            if explicit_wid is not None and (not isinstance(explicit_wid, str) or not explicit_wid):
                raise TypeError(f"workflow_id must be a non-empty str, not {explicit_wid!r}")
        else:
            explicit_wid = None
        check = spec.check
        if check is not None and (args or kwargs or check is not _NO_PARAMS):
            try:
                spec.signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{spec.name}(): {e}") from None

        deps: list = []
        files = None
        dargs = args
        for i, a in enumerate(args):
            if isinstance(a, ComponentFuture):
                if dargs is args:
                    dargs = list(args)
                dargs[i] = a._execution
                deps.append(a)
            elif isinstance(a, (InputFile, OutputFile)):
                if files is None:
                    files = ([], [])
                files[0 if isinstance(a, InputFile) else 1].append(a.filename)
        dkwargs = kwargs
        for k, v in kwargs.items():
            if isinstance(v, ComponentFuture):
                if dkwargs is kwargs:
                    dkwargs = dict(kwargs)
                dkwargs[k] = v._execution
                deps.append(v)

        comp_type = spec.comp_type
        number = f"{next(_uids):06d}"
        uid = f"{comp_type}.{number}"
        fut = ComponentFuture(loop=loop)
        fut.id = number
        fut._spec = spec
        fut._uid = uid
        fut._wid = explicit_wid or self._workflow_id_ctx.get()
        fut._args = args
        fut._kwargs = kwargs or None
        fut._td = td
        fut._files = files
        fut._deps = tuple(deps) if deps else ()
        fut._error_map = spec.error_map
        fut._failed = False
        fut._desc = None
        fut._execution = None
        task_type = spec.task_type
        if comp_type == BLOCK:
            ex = spec.dtask.submit(fut, spec.fn, tuple(dargs), dkwargs)
        elif task_type == FUNCTION:
            ex = spec.dtask.submit(spec.fn, tuple(dargs), dkwargs)
        else:  # the body fills in the description's executable and arguments, or prompt
            ex = spec.dtask.submit(spec, fut.description, tuple(dargs), dkwargs)
        fut._execution = ex
        self._futures[uid] = self.components._items[uid] = fut
        # Delivered on this loop (distaff batches the wake-ups); _settle reads no context
        # variables, so one empty context serves every component (no copy per call).
        ex.add_done_callback(fut._settle, context=self._settle_context)
        return fut

    async def _block_body(self, fut: ComponentFuture, fn: Callable, args: tuple, kwargs: dict) -> Any:
        # Components called in the block are its members: tagged with its uid (AsyncFlow's rule) and,
        # being submitted from its body, children of its execution: cancelling it cancels them.
        token = self._workflow_id_ctx.set(fut._uid)
        try:
            return await fn(*args, **kwargs)
        finally:
            self._workflow_id_ctx.reset(token)

    # -- shutdown ---------------------------------------------------------------------------------------

    def _setup_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "running on a non-main-thread event loop; signal handlers not installed - host process must "
                "manage shutdown"
            )
            return
        loop = self.loop
        engines = _signal_engines.get(loop)
        if engines is None:
            engines = _signal_engines[loop] = weakref.WeakSet()
        if not engines:
            saved = _saved_signals[loop] = {}
            for sig in _SIGNALS:
                before = _save_signal(loop, sig)
                try:
                    loop.add_signal_handler(sig, _on_signal, loop, sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    logger.debug("signal %s not supported here", sig)
                else:
                    saved[sig] = before
        engines.add(self)

    def _remove_signal_handlers(self) -> None:
        engines = _signal_engines.get(self.loop)
        if engines is None or self not in engines:
            return
        engines.discard(self)
        if not engines:
            # Put back exactly what was there (asyncio's remove_signal_handler alone leaves SIG_DFL,
            # or default_int_handler for SIGINT): the user's signal.signal handlers, SIG_IGN, or a
            # handler of their own on this loop. A loop already closed removed its handlers itself.
            saved = _saved_signals.pop(self.loop, {})
            for sig, before in saved.items():
                try:
                    if not self.loop.is_closed():
                        self.loop.remove_signal_handler(sig)
                    _restore_signal(self.loop, sig, before)
                except (NotImplementedError, RuntimeError, ValueError, TypeError, OSError):
                    logger.debug("could not restore the handler of signal %s", sig, exc_info=True)

    def _watch_loop_end(self) -> None:
        # The engine ends with its loop, as the loop's own tasks and distaff's async bodies do
        # (docs/asyncio.md): a task of its own that only waits is cancelled when asyncio.run()
        # ends (asyncio.run cancels the loop's tasks and runs the loop until they are done), and
        # shuts the engine down then, as `await flow.shutdown()` would. Without it a component
        # started and never awaited outlived the loop: the exit waited for its body, silently, or
        # its executor refused it at interpreter exit (an internal traceback), at random.
        self._loop_ended: asyncio.Future = self.loop.create_future()
        task = self.loop.create_task(self._shut_down_at_loop_end(), context=contextvars.Context())
        # A loop closed without cancelling its tasks (run_until_complete, close) drops it: no
        # "Task was destroyed but it is pending" for it.
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        self._loop_end_task = task

    async def _shut_down_at_loop_end(self) -> None:
        try:
            await self._loop_ended  # set by shutdown(): nothing to do any more
        except asyncio.CancelledError:
            if self._shutdown_task is None:
                logger.info("the event loop is ending (asyncio.run returned): shutting the WorkflowEngine down")
            task = self._start_shutdown(False)
            await _to_the_end(task)
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # asyncio.run reports it
            raise

    def _start_shutdown(self, skip_execution_backend: bool) -> asyncio.Task:
        if self._shutdown_task is None:
            # A fresh context: called from one of this engine's blocks, the shutdown must not run
            # as part of that block (it cancels it).
            self._shutdown_task = self.loop.create_task(
                self._shutdown(skip_execution_backend), context=contextvars.Context()
            )
        return self._shutdown_task

    async def shutdown(self, skip_execution_backend: bool = False) -> None:
        """Cancels every unfinished component, stops the engine and (unless
        ``skip_execution_backend``) shuts the backends down. Idempotent; concurrent calls all wait
        for the one shutdown; it returns within about 5 seconds even when bodies do not stop."""
        if not isinstance(skip_execution_backend, bool):
            raise TypeError(f"skip_execution_backend must be a bool, not {type(skip_execution_backend).__name__}")
        task = self._start_shutdown(skip_execution_backend)
        if _get_running_loop() is self.loop:
            await asyncio.shield(task)
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_wait_task(task), self.loop))

    async def _shutdown(self, skip_execution_backend: bool) -> None:
        self._closing = True
        self._remove_signal_handlers()
        logger.info("Shutdown is triggered, terminating the resources gracefully")
        for fut in list(self._futures.values()):
            if not fut.done():
                fut.cancel()
        # Each step runs to its end even if this task is cancelled meanwhile: asyncio.run() ending
        # (main returned while a signal's shutdown was under way) cancels every task of the loop,
        # this one included, and must not leave the backends running.
        deadline = self.loop.time() + 5.0
        try:
            await asyncio.wait_for(self._engine.ashutdown(cancel_pending=True, cancel_running=True), 5.0)
        except asyncio.TimeoutError:
            logger.warning("distaff.asyncflow: some bodies did not stop within 5 s of shutdown; not waiting for them")
        except asyncio.CancelledError:
            pass  # the executions were cancelled when the shutdown began; it carries on
        # The executions are over; their commands are being killed and reaped on this loop.
        # (list(): a body on the engine's own loop thread may add or remove one meanwhile)
        commands = [t for t in list(self._commands) if not t.done() and t.get_loop() is self.loop]
        if commands:
            try:
                await asyncio.wait(commands, timeout=max(0.1, deadline - self.loop.time()))
            except asyncio.CancelledError:
                pass
        if not skip_execution_backend:
            for b in self._backends.values():
                try:
                    await b.shutdown()
                except (Exception, asyncio.CancelledError):  # noqa: BLE001 - one backend failing must not keep the others
                    logger.exception("shutting down backend %r failed", b.name)
        else:
            logger.info("Skipping execution backend shutdown as requested")
        if not self._loop_ended.done():
            self._loop_ended.set_result(None)


async def _wait_task(task: asyncio.Task) -> None:
    await asyncio.shield(task)


async def _to_the_end(task: asyncio.Task) -> None:
    """Waits for ``task`` to finish even if the waiter is cancelled again meanwhile."""
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            continue
        except BaseException:  # noqa: BLE001 - the task failed: it logged what went wrong
            break


# -- bodies (module level: they pickle by reference) -----------------------------------------------------


async def _call_body(fn: Callable, args: tuple, kwargs: dict) -> Any:
    return await fn(*args, **kwargs)


def _noop_body(*_args: Any, **_kwargs: Any) -> str:
    return NOOP_OUTPUT


async def _command_of(spec: _Spec, desc: dict, args: tuple, kwargs: dict) -> list:
    command = await spec.fn(*args, **kwargs)
    if not command or not isinstance(command, str):
        raise ValueError(f"Executable task '{spec.name}' must return a non-empty command string")
    parts = shlex.split(command)
    if not parts:
        raise ValueError(f"Executable task '{spec.name}' must return a non-empty command string")
    desc["executable"], desc["arguments"] = parts[0], parts[1:]
    return parts


async def _command_body(spec: _Spec, desc: dict, args: tuple, kwargs: dict) -> list:
    task = asyncio.current_task()  # the body's task: it goes on to run the command (_command.run)
    if task is not None:
        spec.commands.add(task)
        task.add_done_callback(spec.commands.discard)
    parts = await _command_of(spec, desc, args, kwargs)
    if desc["task_backend_specific_kwargs"].get("shell", True):
        # AsyncFlow's shell mode: the split words joined by spaces, run by the shell.
        return ["/bin/sh", "-c", " ".join(parts)]
    return parts


async def _noop_command_body(spec: _Spec, desc: dict, args: tuple, kwargs: dict) -> str:
    await _command_of(spec, desc, args, kwargs)
    return NOOP_OUTPUT


async def _prompt_body(spec: _Spec, desc: dict, args: tuple, kwargs: dict) -> str:
    prompt = await spec.fn(*args, **kwargs)
    if not prompt or not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"Prompt task '{spec.name}' must return a non-empty string prompt")
    desc["prompt"] = prompt
    if spec.backend.kind == "noop":
        return NOOP_PROMPT_OUTPUT
    raise NotImplementedError(
        f"{type(spec.backend).__name__} does not support prompt_task. Register an AI execution backend and "
        "route with @flow.prompt_task(backend='<name>')."
    )


__all__ = ["BLOCK", "EXECUTABLE", "FUNCTION", "PROMPT", "TASK", "ComponentFuture", "WorkflowEngine"]
