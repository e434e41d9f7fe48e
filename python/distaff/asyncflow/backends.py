"""AsyncFlow's execution backends, mapped onto distaff's executors.

- ``LocalExecutionBackend(executor=None, name="default")`` (and ``ConcurrentExecutionBackend``, the
  same under the name AsyncFlow's older releases used): function-task bodies run on ``executor``,
  a ``concurrent.futures`` ``ThreadPoolExecutor`` (the default) or ``ProcessPoolExecutor``,
  through distaff's ``executor=`` (docs/executors.md). Executable tasks run their command as a
  subprocess of this process; prompt tasks are refused with ``NotImplementedError``.
- ``NoopExecutionBackend(name="default")``: the dry-run backend. Nothing runs; every task
  completes with ``"Dummy Output"`` (``"Dummy Prompt Output"`` for a prompt task).
- ``DaskExecutionBackend(client, name="default")``: function-task bodies run on a Dask cluster
  through distaff's Dask support.

Like AsyncFlow's, a backend is awaitable (``backend = await LocalExecutionBackend(pool)``); awaiting
it again, or not at all, is harmless.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import weakref
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

logger = logging.getLogger("distaff.asyncflow")


class StateMapper:
    """The task states a backend reports, as AsyncFlow names them."""

    DONE = "DONE"
    RUNNING = "RUNNING"
    CANCELED = "CANCELED"
    FAILED = "FAILED"

    terminal_states = frozenset({DONE, CANCELED, FAILED})


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a backend name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("a backend name must not be empty")
    return name


class _Backend:
    kind = "base"

    def __init__(self, name: str) -> None:
        self.name = _check_name(name)
        self._work_dir = os.getcwd()
        self.is_attached = False
        self.attached_to: list[str] = []
        self._initialized = False
        self._closed = False

    def __await__(self):
        return self._async_init().__await__()

    async def _async_init(self) -> "_Backend":
        if not self._initialized:
            self._initialized = True
            logger.info("%s execution backend started successfully", self._label())
        return self

    async def __aenter__(self) -> "_Backend":
        return await self._async_init()

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()

    @classmethod
    async def create(cls, *args: Any, **kwargs: Any) -> "_Backend":
        return await cls(*args, **kwargs)

    def _label(self) -> str:
        return type(self).__name__

    def get_task_states_map(self) -> StateMapper:
        return StateMapper()

    def state(self) -> str:
        if self._closed:
            return "SHUTDOWN"
        return "INITIALIZED" if self._initialized else "IDLE"

    def register_callback(self, func: Any) -> None:
        """Kept for AsyncFlow compatibility; distaff reports states through the futures."""

    def build_task(self, uid: str, task_desc: dict, task_specific_kwargs: dict) -> None:
        pass

    def link_explicit_data_deps(self, src_task=None, dst_task=None, file_name=None, file_path=None) -> None:
        pass

    def link_implicit_data_deps(self, src_task, dst_task) -> None:
        pass

    async def shutdown(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"


class NoopExecutionBackend(_Backend):
    """Dry run: no body runs; every task completes with a dummy output."""

    kind = "noop"

    def __init__(self, name: str = "default") -> None:
        super().__init__(name)
        self._initialized = True

    def state(self) -> str:
        return "IDLE"


class LocalExecutionBackend(_Backend):
    """Function-task bodies on a ``concurrent.futures`` executor of this machine."""

    kind = "local"

    def __init__(self, executor: Executor | None = None, name: str = "default") -> None:
        if executor is None:
            executor = ThreadPoolExecutor()
            logger.info("No executor was provided. Falling back to default ThreadPoolExecutor")
        if not isinstance(executor, Executor):
            raise TypeError(
                f"Executor must be ThreadPoolExecutor or ProcessPoolExecutor, not {type(executor).__name__}"
            )
        super().__init__(name)
        self.executor = executor
        # Bodies in threads of this process can be cancelled at their next await (_run_in_thread);
        # a process pool's body is out of reach once it started.
        self.in_process = not isinstance(executor, ProcessPoolExecutor)

    def _label(self) -> str:
        return "ThreadPool" if isinstance(self.executor, ThreadPoolExecutor) else type(self.executor).__name__

    async def shutdown(self) -> None:
        """Drops the bodies not started yet and lets the executor's threads or processes end once
        their current body returns (it does not wait for them: a body stuck in a blocking call
        would hold up the shutdown)."""
        if not self._closed:
            self._closed = True
            if isinstance(self.executor, ProcessPoolExecutor):
                await _shut_the_pool_down(self.executor)
            else:
                self.executor.shutdown(wait=False, cancel_futures=True)
            logger.info("Concurrent execution backend shutdown complete")


# How long shutdown() waits for a process pool to wind down (its processes end once their current
# body returns; one stuck in a blocking call is not waited for beyond this).
_POOL_WIND_DOWN_S = 2.0


async def _shut_the_pool_down(pool: ProcessPoolExecutor) -> None:
    """Shuts a process pool down, dropping the bodies not started, and waits (at most
    _POOL_WIND_DOWN_S, off the loop) for it to finish: on CPython 3.11 a pool's manager thread,
    still closing its wake-up pipe as the interpreter exits, races concurrent.futures' exit hook,
    which then prints "Exception ignored ... OSError: [Errno 9] Bad file descriptor" (CPython
    gh-125451 added the lock). The one call ``shutdown(wait=True, cancel_futures=True)`` does both
    on a daemon thread, so a stuck body never holds up the exit. (It must be one call: after a
    ``shutdown(wait=False)`` the pool forgets its manager thread, and a second ``shutdown(wait=True)``
    returns at once without waiting for it.)"""
    done = asyncio.get_running_loop().create_future()

    def shut_down_then_tell() -> None:
        pool.shutdown(wait=True, cancel_futures=True)
        try:
            done.get_loop().call_soon_threadsafe(lambda: done.done() or done.set_result(None))
        except RuntimeError:
            pass  # the loop has closed meanwhile: nobody waits any more

    t = threading.Thread(target=shut_down_then_tell, name="distaff-asyncflow-pool-wind-down", daemon=True)
    _wind_downs_at_exit(t)
    t.start()
    try:
        await asyncio.wait_for(asyncio.shield(done), _POOL_WIND_DOWN_S)
    except asyncio.TimeoutError:
        pass


_wind_downs: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()
_wind_downs_hooked = False


def _wind_downs_at_exit(t: threading.Thread) -> None:
    """A pool still winding down when the program ends (a slow process start under load outlasts
    _POOL_WIND_DOWN_S) is waited for as the interpreter exits, before concurrent.futures' own exit
    hook (threading's exit hooks run last-registered first; this one is registered after that
    module's), which would otherwise race the manager thread's closing of its wake-up pipe. That
    hook joins the same manager threads anyway, so the exit waits no longer than it would."""
    global _wind_downs_hooked
    _wind_downs.add(t)
    if not _wind_downs_hooked:
        register_early = getattr(threading, "_register_atexit", None)
        if register_early is not None:
            try:
                register_early(_join_wind_downs)
            except RuntimeError:  # the interpreter is exiting already
                return
        _wind_downs_hooked = True


def _join_wind_downs() -> None:
    for t in list(_wind_downs):
        if t.is_alive():
            t.join()


class ConcurrentExecutionBackend(LocalExecutionBackend):
    """AsyncFlow's earlier name for :class:`LocalExecutionBackend`; the same behaviour."""


class DaskExecutionBackend(_Backend):
    """Function-task bodies on a Dask cluster: ``DaskExecutionBackend(client)`` with a
    ``distributed.Client``. The client is the program's: shutdown leaves it running."""

    kind = "dask"

    def __init__(self, client: Any, name: str = "default") -> None:
        if not callable(getattr(client, "submit", None)):
            raise TypeError(f"DaskExecutionBackend needs a distributed.Client, not {type(client).__name__}")
        super().__init__(name)
        self.executor = client
        self.in_process = False


# -- what runs on the executor ------------------------------------------------------------------

_local = threading.local()
# The executor threads' loops, closed at exit: one left to the garbage collector during interpreter
# finalization fails to unregister its self-pipe ("Invalid file descriptor: -1").
_loops: "weakref.WeakSet[asyncio.AbstractEventLoop]" = weakref.WeakSet()


@atexit.register
def _close_loops() -> None:
    for loop in list(_loops):
        if not loop.is_running() and not loop.is_closed():
            loop.close()


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
        _loops.add(loop)
        created: list = []
        _local.created = created

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
            task = asyncio.Task(coro, loop=loop, **kwargs)
            created.append(task)
            return task

        loop.set_task_factory(factory)
    return loop


def _run_body(fn: Any, args: tuple, kwargs: dict) -> Any:
    """Runs the coroutine function ``fn`` to completion in a process pool's worker or on a Dask
    worker, on that thread's own event loop: AsyncFlow's ``asyncio.run(fn(...))``, without creating
    and closing a loop per call (~20 µs instead of ~250 µs on the benchmark machine). Tasks the body
    left running are cancelled when it returns, as ``asyncio.run`` does (the loop's task factory
    lists them: ``asyncio.all_tasks`` would scan every task of every loop in the process). Bodies
    on threads of this process are distaff's own async bodies on an executor (docs/executors.md)."""
    loop = _thread_loop()
    created = _local.created
    task = loop.create_task(fn(*args, **kwargs))
    try:
        return loop.run_until_complete(task)
    finally:
        leftovers = [t for t in created if not t.done()]
        created.clear()
        if leftovers:
            for t in leftovers:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            created.clear()


__all__ = [
    "ConcurrentExecutionBackend",
    "DaskExecutionBackend",
    "LocalExecutionBackend",
    "NoopExecutionBackend",
    "StateMapper",
]
