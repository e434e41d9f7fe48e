"""Where task bodies run when one core is not enough (docs/executors.md).

``@task(executor=...)`` takes a name registered on the engine (``Engine(executors={...})``),
``"processes"`` (the engine's own :class:`ProcessPool`), or an object:

- :class:`ProcessPool`: distaff's process pool (what ``"processes"`` is);
- any ``concurrent.futures.Executor`` (ThreadPoolExecutor, ProcessPoolExecutor, loky, ...);
- a ``distributed.Client`` (Dask): bodies run on the cluster's workers;
- :class:`Ray`: an adapter over ``ray.remote``;
- anything with ``submit(fn, /, *args, **kwargs)`` returning a future with ``add_done_callback``,
  ``result``, ``exception``, ``cancelled`` and ``cancel`` (the ``concurrent.futures.Future`` API).

The fiber of such an execution ends as soon as the body is handed over; the execution settles when
the outcome comes back (distaff/_elsewhere.py).
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from . import _remote
from ._errors import ShutdownError, WorkerLostError

__all__ = ["ProcessPool", "Ray", "WorkerLostError"]


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# -- distaff's process pool ------------------------------------------------------------------------


def _is_batch(handle: Any) -> bool:
    """Is ``handle`` a _local_async.Batch (that module is loaded with the first async def body)?

    The module may be in ``sys.modules`` half-initialised (another thread is importing it right now,
    e.g. an async body starting while an execution is cancelled at exit): until it has defined
    ``Batch`` no Batch exists, so that is a "no", not an AttributeError.
    """
    batch = getattr(sys.modules.get("distaff._local_async"), "Batch", None)
    return batch is not None and handle.__class__ is batch

class _Worker:
    __slots__ = ("proc", "send", "recv", "job", "ready", "killed", "exit_fd", "lost")

    def __init__(self, proc: subprocess.Popen, send: Any, recv: Any) -> None:
        self.proc = proc
        self.send = send
        self.recv = recv
        self.job = None
        self.ready = False
        self.killed = False
        self.lost = False
        # Readable once the process has exited (a pidfd, Linux 5.3+): its death is seen at once,
        # also when a process it forked still holds its end of the pipes, so no EOF comes (an
        # outsider's find: a body that forked a helper and died was reported only when the helper
        # exited, its slot blocked meanwhile). None where unavailable: the EOF alone tells.
        try:
            self.exit_fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self.exit_fd = None

    def close_exit_fd(self) -> None:
        fd, self.exit_fd = self.exit_fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def kill(self) -> None:
        self.killed = True
        try:
            self.proc.kill()
        except OSError:
            pass


class ProcessPool:
    """A pool of worker processes that survives its workers.

    Each worker runs one body at a time; a body is serialized (cloudpickle) only when a worker is
    free to take it, so a million queued submissions hold a million references, not a million
    payloads. A worker that dies (``os._exit``, a signal, the OOM killer) fails only the execution it
    was running, with :class:`distaff.WorkerLostError`, and is replaced; a body whose execution is
    cancelled or times out is stopped by terminating its worker, which is replaced too. Unlike
    ``concurrent.futures.ProcessPoolExecutor`` nothing else breaks: queued work runs on.

    Workers are fresh interpreters (``python -c``, not fork: the engine's threads do not survive a
    fork), started on first use, with the parent's ``sys.path``; they ignore SIGINT (the parent
    decides what to cancel) and exit when the parent closes their pipe or dies, also while running
    a body (``_die_with_parent``).

    Args:
        processes: worker processes (default: the number of usable cores).
        name: the name ``description["executor"]`` shows.
    """

    owned = False  # True for the engine's own "processes" pool: the engine shuts it down
    # How a worker notices that this process died while its body runs: "pdeathsig" (Linux: the
    # kernel SIGKILLs it, with the watchdog where prctl is unavailable) or "watchdog" (a thread in
    # the worker polls getppid(); the only way elsewhere, and what the tests force to check it).
    _parent_death = "pdeathsig"

    def __init__(self, processes: int | None = None, *, name: str | None = None) -> None:
        # Imported on first use: at import time it cost every `import distaff` 1.5 MiB of RSS
        # (multiprocessing, hashlib and libcrypto), ProcessPool or not (issue 15).
        from multiprocessing import connection as _mpc
        if processes is None:
            processes = _usable_cores()
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError(f"processes must be a positive int, not {processes!r}")
        self.processes = processes
        self.name = name or f"ProcessPool({processes})"
        self.target = self
        self._lock = threading.Lock()
        self._queue: collections.deque = collections.deque()
        self._workers: list[_Worker] = []
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = _mpc.Pipe(duplex=False)
        self._closing = False
        self._exited = False
        self._failed_starts = 0
        self._broken: str | None = None

    def __repr__(self) -> str:
        return f"<distaff.executors.ProcessPool {self.name} processes={self.processes}>"

    # -- the runner protocol (distaff/_elsewhere.py) --

    def prepare(self) -> None:
        """Starts the manager thread (which starts the workers) now, on the thread that submits the
        first body: a body is shipped later, from an engine worker, possibly once the main thread
        has ended — and at interpreter exit CPython 3.12+ refuses to start threads (a script
        that submitted right before its end lost its body that way)."""
        with self._lock:
            if self._thread is None and not (self._exited or self._broken or self._closing):
                self._start_thread()

    def _start_thread(self) -> None:
        # Under self._lock. Never leaves an unstarted thread behind (close() would join it).
        t = threading.Thread(target=self._run, name=f"distaff-{self.name}", daemon=True)
        try:
            t.start()
        except RuntimeError as e:  # "can't create new thread at interpreter shutdown"
            raise ShutdownError(f"executor {self.name!r} cannot start now: {e}") from None
        self._thread = t

    def submit(self, job: Any) -> None:
        with self._lock:
            if self._exited or self._broken:
                raise ShutdownError(self._broken or f"executor {self.name!r} is shut down")
            if self._thread is None:
                self._start_thread()
                self._queue.append(job)
                return
            self._queue.append(job)
        self._wake()

    def cancel(self, job: Any) -> None:
        # Queued: dispatch skips it (job.stopped). Running: its worker is terminated and replaced.
        with self._lock:
            w = job.handle
            if w is not None and w.job is job:
                w.kill()

    def close(self, wait: bool = True) -> None:
        """Stops the pool once the work already submitted is done (running and queued bodies finish;
        later submissions raise ShutdownError). ``wait``: block until the workers have exited."""
        with self._lock:
            self._closing = True
            t = self._thread
            if t is None:
                self._exited = True
        self._wake()
        if wait and t is not None and t is not threading.current_thread():
            t.join()

    shutdown = close

    def __enter__(self) -> "ProcessPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(wait=True)

    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and monitoring)."""
        with self._lock:
            return [w.proc.pid for w in self._workers if w.proc.returncode is None]

    # -- the manager thread --

    def _wake(self) -> None:
        try:
            self._wake_w.send_bytes(b"w")
        except OSError:
            pass

    def _spawn(self) -> _Worker:
        import pickle  # on first use: 0.5 MiB of RSS for every `import distaff` otherwise (issue 15, W5)
        from multiprocessing import connection as _mpc
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c",
                 f"from distaff.executors import _worker_main; "
                 f"_worker_main({to_child_r}, {from_child_w}, {os.getpid()}, {self._parent_death!r})"],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        w = _Worker(proc, _mpc.Connection(to_child_w, readable=False), _mpc.Connection(from_child_r, writable=False))
        try:
            w.send.send_bytes(pickle.dumps({"path": list(sys.path)}))
        except OSError:
            pass  # died at once: seen as EOF
        return w

    def _run(self) -> None:
        try:
            for _ in range(self.processes):
                self._workers.append(self._spawn())
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - fail what is queued rather than hang it
            self._broken = f"executor {self.name!r} failed: {type(exc).__name__}: {exc}"
            self._fail_queued(ShutdownError(self._broken))
        finally:
            self._stop_workers()
            with self._lock:
                self._exited = True
            self._fail_queued(ShutdownError(f"executor {self.name!r} is shut down"))

    def _fail_queued(self, exc: BaseException) -> None:
        with self._lock:
            jobs = list(self._queue)
            self._queue.clear()
            for w in self._workers:
                if w.job is not None:
                    jobs.append(w.job)
                    w.job = None
        for j in jobs:
            j.report(error=exc)

    def _loop(self) -> None:
        from multiprocessing import connection as _mpc
        by_conn: dict = {}
        while True:
            self._dispatch()
            with self._lock:
                if self._closing and not self._queue and all(w.job is None for w in self._workers):
                    return
                if self._broken:
                    return
                by_conn = {w.recv: w for w in self._workers}
                by_conn.update({w.exit_fd: w for w in self._workers if w.exit_fd is not None})
            for c in _mpc.wait([*by_conn, self._wake_r]):
                if c is self._wake_r:
                    while self._wake_r.poll():
                        self._wake_r.recv_bytes()
                    continue
                w = by_conn[c]
                if w.lost:  # both its pipe and its exit were ready in this round
                    continue
                if not isinstance(c, int):
                    try:
                        msg = c.recv_bytes()
                    except (EOFError, OSError):
                        self._lost(w)
                        continue
                elif w.recv.poll():  # exited: what it sent before is read first (next round)
                    continue
                else:
                    self._lost(w)
                    continue
                if not w.ready:  # the hello after start-up
                    w.ready = True
                    self._failed_starts = 0
                    continue
                with self._lock:
                    job, w.job = w.job, None
                if job is not None:
                    job.handle = None
                    job.report(outcome=msg)
                # This frame lives as long as the pool: drop the last job and its outcome now, or
                # they (and the execution) stay alive until the next message.
                job = msg = w = None

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    return
                w = next((w for w in self._workers if w.job is None and not w.killed), None)
                if w is None:
                    return
                job = self._queue.popleft()
                if job.stopped:
                    continue
                w.job = job
                job.handle = w
            job.shipped()
            try:
                data = job.payload()  # serialized now, when a worker is free: bounded ahead
            except BaseException as exc:  # noqa: BLE001 - TypeError naming the argument
                with self._lock:
                    w.job = None
                job.handle = None
                job.report(error=exc)
                continue
            try:
                w.send.send_bytes(data)
            except OSError:
                pass  # the worker died: its EOF reports the job lost
            del data

    def _lost(self, w: _Worker) -> None:
        w.lost = True
        try:
            rc = w.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            w.kill()
            rc = w.proc.wait()
        for conn in (w.send, w.recv):
            conn.close()
        w.close_exit_fd()
        with self._lock:
            job, w.job = w.job, None
            i = self._workers.index(w)
        if not w.ready and not w.killed:
            self._failed_starts += 1
            if self._failed_starts >= 3:
                self._broken = (f"executor {self.name!r}: worker processes exit at start-up "
                                f"(exit status {rc}; see their stderr)")
                with self._lock:
                    self._workers.pop(i)
                if job is not None:
                    job.report(error=ShutdownError(self._broken))
                return
        new = self._spawn()
        with self._lock:
            self._workers[i] = new
        if job is not None:
            job.handle = None
            if not job.stopped:
                how = f"killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
                job.report(error=WorkerLostError(
                    f"the worker process (pid {w.proc.pid}) running task {job.name!r} on executor "
                    f"{self.name!r} died ({how}); the pool replaced it"))
            else:
                job.report(error=concurrent.futures.CancelledError())

    def _stop_workers(self) -> None:
        with self._lock:
            workers = list(self._workers)
        for w in workers:
            try:
                w.send.close()  # EOF: the worker exits after its current body
            except OSError:
                pass
        for w in workers:
            try:
                w.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                w.kill()
                w.proc.wait()
            try:
                w.recv.close()
            except OSError:
                pass
            w.close_exit_fd()


_PR_SET_PDEATHSIG = 1
_WATCHDOG_INTERVAL = 0.1  # seconds between the watchdog's looks at getppid()


def _die_with_parent(ppid: int, how: str) -> None:
    """Makes this worker die when its parent (``ppid``) does, even while a body runs: an idle
    worker sees its pipe close, a busy one reads nothing until its body ends (forever for a
    ``while True: pass``), re-parented to init and spinning.

    On Linux the kernel sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``; "parent"
    is the thread that started the worker: the pool's manager thread, which outlives its workers).
    A parent that died before the prctl is caught by comparing getppid() with ``ppid`` after it.
    Elsewhere, or if prctl fails, a daemon thread polls getppid() and calls os._exit: it gets the
    GIL at the switch interval even from a body spinning in Python (not from one stuck in C code
    that holds the GIL; the pipe's EOF or the parent's kill covers what it can)."""
    if how == "pdeathsig" and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != ppid:  # the parent died before the prctl: no signal will come
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    if os.getppid() != ppid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(_WATCHDOG_INTERVAL)
            if os.getppid() != ppid:
                os._exit(1)

    threading.Thread(target=watch, name="distaff-parent-watchdog", daemon=True).start()


def _worker_main(rfd: int, wfd: int, ppid: int | None = None, parent_death: str = "pdeathsig") -> None:
    """A ProcessPool worker: reads payloads, runs them (_remote.run), writes outcomes."""
    import pickle  # on first use: 0.5 MiB of RSS for every `import distaff` otherwise (issue 15, W5)
    from multiprocessing import connection as _mpc
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if ppid is not None:
        _die_with_parent(ppid, parent_death)
    recv = _mpc.Connection(rfd, writable=False)
    send = _mpc.Connection(wfd, readable=False)
    try:
        init = pickle.loads(recv.recv_bytes())
    except EOFError:
        return
    sys.path[:] = init["path"]
    send.send_bytes(b"R")
    run = _remote.run
    while True:
        try:
            data = recv.recv_bytes()
        except EOFError:
            return
        out = run(data)
        del data
        send.send_bytes(out)


# -- adapters over executors that return futures ------------------------------------------------------

class _Windowed:
    """Feeds jobs to an executor with at most ``ahead`` of them submitted and unfinished: beyond it
    they wait here unserialized (a payload is made only when a job is handed over)."""

    owned = False

    def __init__(self, target: Any, name: str, ahead: int) -> None:
        self.target = target
        self.name = name
        self.ahead = ahead
        self._lock = threading.Lock()
        self._queue: collections.deque = collections.deque()
        self._inflight = 0
        self._local = threading.local()
        self._shut_logged = False
        # Ends of calls the executor cancelled itself, handled on a thread of distaff's (_off_executor).
        self._deferred: collections.deque = collections.deque()
        self._deferring = False

    def __repr__(self) -> str:
        return f"<distaff executor {self.name}>"

    def submit(self, job: Any) -> None:
        with self._lock:
            self._queue.append(job)
        self._pump()

    def cancel(self, job: Any) -> None:
        self._stop_job(job, job.handle)

    def _stop_job(self, job: Any, h: Any) -> None:
        if h is not None:
            try:
                self._stop(h)
            except Exception:  # noqa: BLE001 - best effort: the execution is already cancelled
                pass

    def close(self, wait: bool = True) -> None:
        pass  # user-supplied executors keep running

    def _pump(self) -> None:
        local = self._local
        if getattr(local, "active", False):  # re-entered from a done callback: the outer loop goes on
            return
        local.active = True
        try:
            while True:
                with self._lock:
                    if self._inflight >= self.ahead or not self._queue:
                        return
                    n = self._chunk_size()
                    jobs = []
                    while self._queue and len(jobs) < n:
                        job = self._queue[0]
                        if jobs and not self._chunks_with(job):
                            break
                        self._queue.popleft()
                        if not job.stopped:
                            jobs.append(job)
                    if not jobs:
                        continue
                    self._inflight += 1
                if len(jobs) == 1:
                    self._ship(jobs[0])
                else:
                    self._ship_chunk(jobs)
        finally:
            local.active = False

    def _by_the_executor(self, error: BaseException | None, ours: bool) -> bool:
        """Whether a call that ended with ``error`` was cancelled by the executor itself, maybe
        from inside its own shutdown: ``ThreadPoolExecutor.shutdown(cancel_futures=True)`` cancels
        the queued futures, and so runs their done callbacks, holding its shutdown lock, which its
        ``submit()`` takes too. Handling such an end there — reporting it (the execution's done
        callbacks run then, and may submit to the same pool) or pumping the window — deadlocked
        the program. ``ours``: distaff cancelled the call (its executions were), and the executor
        is not seen shut down (the stdlib pools set ``_shutdown`` before they cancel)."""
        return isinstance(error, concurrent.futures.CancelledError) and not (
            ours and not getattr(self.target, "_shutdown", False))

    def _off_executor(self, fn: Callable, *args: Any) -> None:
        """Runs ``fn(*args)`` on a thread of distaff's, not the executor's (_by_the_executor). One
        such thread at a time, which runs what is handed to it in order and ends when nothing is
        left (deciding under the lock), so a wave of cancels starts one thread, not one each."""
        with self._lock:
            self._deferred.append((fn, args))
            if self._deferring:
                return
            self._deferring = True
        try:
            threading.Thread(target=self._run_deferred, name=f"distaff-{self.name}-pump", daemon=True).start()
        except RuntimeError:  # no new thread at interpreter exit (CPython 3.12+): here, then
            self._run_deferred()

    def _run_deferred(self) -> None:
        while True:
            with self._lock:
                if not self._deferred:
                    self._deferring = False
                    return
                fn, args = self._deferred.popleft()
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - the next ones still run
                import logging

                logging.getLogger("distaff").exception("distaff: reporting to %s failed", self.name)

    def _chunk_size(self) -> int:
        """How many queued jobs the next call takes (called under self._lock): one, unless a
        backend ships several per call (_Futures)."""
        return 1

    def _chunks_with(self, job: Any) -> bool:
        """Whether ``job`` can join the chunk being taken (called under self._lock)."""
        return True

    def _ship_chunk(self, jobs: list) -> None:
        raise NotImplementedError

    def _ship(self, job: Any) -> None:
        job.shipped()
        try:
            handle = self._start(job)
        except BaseException as exc:  # noqa: BLE001 - unserializable argument, executor shut down...
            self._release()
            if not isinstance(exc, Exception):
                # A KeyboardInterrupt or SystemExit from a signal handler of the submitting thread
                # (the hand-off runs there): not this body's outcome; it goes on to the caller,
                # and the execution ends cancelled (the inline run) — never stored as its error.
                raise
            self._report_error(job, exc)
            return
        job.handle = handle
        self._watch(job, handle)
        if job.stopped:
            # `handle`, not job.handle: the settling of a job stopped meanwhile clears that.
            self._stop_job(job, handle)

    def _release(self) -> None:
        with self._lock:
            self._inflight -= 1

    def _finished(self, job: Any, outcome: Any = None, error: BaseException | None = None) -> None:
        if self._by_the_executor(error, job.stopped):
            self._off_executor(self._finish, job, outcome, error)
        else:
            self._finish(job, outcome, error)

    def _finish(self, job: Any, outcome: Any, error: BaseException | None) -> None:
        job.handle = None
        self._release()
        try:
            if error is None:
                job.report(outcome=outcome)
            else:
                self._report_error(job, error)
        finally:
            if self._queue:  # a job waits for the window (a racing submit pumps by itself)
                self._pump()

    def _report_error(self, job: Any, exc: BaseException) -> None:
        """The executor refused ``job``'s body, or its call ended without an outcome (``exc``). If
        that is because the executor is shut down, the execution fails with a ShutdownError that
        says so, logged once per executor rather than once per execution (a script's pool shut
        down under thousands of queued bodies logged each of them)."""
        what = None if job.stopped else self._shut_down(exc)
        if what is None:
            job.report(error=exc)
            return
        err = ShutdownError(f"task {job.name!r} did not complete: {what}")
        err.__cause__ = exc
        with self._lock:
            first, self._shut_logged = not self._shut_logged, True
        if first:
            import logging

            logging.getLogger("distaff").error(
                "distaff: %s: the executions whose bodies it had not finished fail with ShutdownError "
                "(logged once for this executor, not for each execution)", what)
        me = job.me
        if me is not None:  # logged above: not again as an unobserved failure of each execution
            me._add_done_callback(_observed)
        job.report(error=err)

    def _shut_down(self, exc: BaseException) -> str | None:
        """What happened to the executor (``"executor 'x' was shut down"``) if ``exc`` comes from
        it being shut down, else None."""
        return None

    # backend hooks
    def _start(self, job: Any) -> Any:
        raise NotImplementedError

    def _watch(self, job: Any, handle: Any) -> None:
        raise NotImplementedError

    def _stop(self, handle: Any) -> None:
        handle.cancel()


class _Chunk:
    """Several jobs shipped as one call of the executor (tiny bodies with a backlog, _Futures)."""

    __slots__ = ("jobs", "fut")

    def __init__(self, jobs: list) -> None:
        self.jobs = jobs
        self.fut: Any = None


class _Futures(_Windowed):
    """A concurrent.futures.Executor, or anything with its submit()/Future protocol.

    Tiny bodies in another process cost the executor's own per-call overhead (pickling, pipes, its
    management thread: ~80 µs with ProcessPoolExecutor) several times over. So once bodies are seen
    to be tiny (under _TINY_S of run time per body, estimated from the calls' latency) and a
    backlog waits for the window, queued jobs travel in chunks (up to _CHUNK_MAX, sized so every
    worker still gets several), as
    ``Executor.map(chunksize=)`` does, and come back together. A chunk is one call: a job cancelled
    in it is dropped when its outcome comes back (the call is cancelled only when all of its jobs
    are). Bodies that take longer than that, and in-process executors, go one call per body."""

    _CHUNK_MAX = 64
    _TINY_S = 0.005
    # async def bodies on threads of this process (_local_async): a chunk runs its bodies
    # concurrently on the thread's event loop, so it may be larger.
    _LOCAL_ASYNC_CHUNK_MAX = 256

    def __init__(self, target: Any, name: str, local: bool) -> None:
        workers = getattr(target, "_max_workers", None)
        self._workers = workers if isinstance(workers, int) and workers > 0 else 4
        super().__init__(target, name, max(32, 4 * workers) if isinstance(workers, int) else 64)
        self.local = local
        self._per_job: float | None = None  # moving average of seconds in flight per body
        # The last batch of async bodies handed to the executor: while no thread has started it,
        # a tiny async body joins it instead of making a call of its own (submit()).
        self._waiting_batch: Any = None

    def submit(self, job: Any) -> None:
        if self.local and job.is_async:
            batch = self._waiting_batch
            per_job = self._per_job
            # Only bodies seen to be tiny: a body that blocks its thread would hold up the others
            # of its batch (they share that thread's loop), as with the chunks of a backlog.
            if (batch is not None and batch.open and per_job is not None and per_job <= self._TINY_S
                    and not self._queue and len(batch.jobs) < self._LOCAL_ASYNC_CHUNK_MAX and batch.join(job)):
                if job.stopped:  # cancelled meanwhile: cancel() may not have seen the batch
                    batch.cancel(job)
                return
        super().submit(job)

    def prepare(self) -> None:
        """On CPython 3.12+, starts all of a stdlib pool's workers now, on the thread that submits
        the first body: from the start of interpreter exit CPython refuses to start threads (and
        to fork), and a pool starts its workers lazily, as bodies arrive — a fire-and-forget body
        shipped once the script has ended would find it unable to take it ("can't create new
        thread at interpreter shutdown"). Best effort, through the pools' own (private) methods."""
        if sys.version_info < (3, 12) or _pools_stopped_at_exit():
            # (Once concurrent.futures' own exit hook has stopped its pools, starting workers
            # hangs on 3.13 — a pool first used by a workflow running at exit: its submit() then
            # fails, and the body with ShutdownError naming the pool.)
            return
        t = self.target
        try:
            if _is_thread_pool(t):
                with t._shutdown_lock:
                    # A call starts a thread unless one is idle (and then takes it as busy): a few
                    # calls more than threads missing.
                    for _ in range(4 * t._max_workers):
                        if t._shutdown or len(t._threads) >= t._max_workers:
                            break
                        t._adjust_thread_count()
            elif _is_process_pool(t):
                with t._shutdown_lock:
                    if not (t._shutdown_thread or t._broken):
                        if t._safe_to_dynamically_spawn_children:
                            for _ in range(t._max_workers - len(t._processes)):
                                t._spawn_process()
                        t._start_executor_manager_thread()
                        q = t._call_queue  # its feeder thread too, started by the first put
                        with q._notempty:
                            if q._thread is None:
                                q._start_thread()
        except (AttributeError, RuntimeError, OSError):  # another version's internals; exiting already
            pass

    def _start(self, job: Any) -> Any:
        if self.local:  # threads of this process: nothing to serialize
            if job.is_async:  # on the thread's own event loop, cancellable (_local_async)
                return self._ship_batch([job])
            return self.target.submit(_remote.run_local, job.fn, job.args, job.kwargs, job.is_async)
        return self.target.submit(_remote.run, job.payload())

    def _ship_batch(self, jobs: list) -> Any:
        """Hands ``async def`` bodies to one executor thread (_local_async.run_batch). The batch is
        on its jobs before it is submitted, and the call releases its window slot itself when it
        ends: the shipping fiber can be interrupted at any bytecode by a cancel() of the execution
        it runs for, and neither a later cancel nor the window may depend on it finishing here."""
        from . import _local_async  # (it imports asyncio: loaded with the first async def body)

        batch = _local_async.Batch(jobs, self._batch_done)
        batch.t0, batch.ahead_of_it = time.monotonic(), self._inflight
        for job in jobs:
            job.handle = batch
        batch.fut = fut = self.target.submit(_local_async.run_batch, batch, self._report_local)
        fut.add_done_callback(batch.call_ended)
        self._waiting_batch = batch
        return batch

    @staticmethod
    def _report_local(job: Any, outcome: Any) -> None:
        # One async body of a batch ended (on the executor's thread).
        job.handle = None
        if outcome is None:  # stopped before it started
            job.report(error=concurrent.futures.CancelledError())
        else:
            job.report(outcome=outcome)

    def _batch_done(self, batch: Any, error: BaseException | None) -> None:
        """Once per batch, when run_batch returns or when its call ends without running it
        (cancelled while queued, the executor shut down)."""
        if self._by_the_executor(error, all(job.stopped for job in batch.jobs)):
            self._off_executor(self._batch_finish, batch, error)
        else:
            self._batch_finish(batch, error)

    def _batch_finish(self, batch: Any, error: BaseException | None) -> None:
        if self._waiting_batch is batch:
            self._waiting_batch = None
        self._release()
        try:
            self._observe(time.monotonic() - batch.t0, batch.ahead_of_it, len(batch.jobs))
            if error is not None:
                for job in batch.jobs:  # the ones that had no outcome yet (report ignores the others)
                    if job.handle is batch:
                        job.handle = None
                        self._report_error(job, error)
        finally:
            if self._queue:
                self._pump()

    def _observe(self, latency: float, ahead_of_it: int, jobs: int = 1) -> None:
        # A call's latency is its queueing behind the `ahead_of_it` calls in flight when it was made
        # (they share the workers) plus its own run: per body, about latency * workers / (calls in
        # flight) / jobs — a measure of the body, not of the window or of the machine's load.
        seconds_per_job = latency * self._workers / max(1, ahead_of_it) / jobs
        p = self._per_job
        self._per_job = seconds_per_job if p is None else 0.8 * p + 0.2 * seconds_per_job

    def _watch(self, job: Any, fut: Any) -> None:
        if _is_batch(fut):
            return  # the batch reports and releases by itself (_ship_batch)
        t0, ahead_of_it = time.monotonic(), self._inflight

        def done(f: Any) -> None:
            self._observe(time.monotonic() - t0, ahead_of_it)
            # One look at the finished future (each of cancelled/exception/result takes its lock).
            try:
                outcome = f.result(0)
            except concurrent.futures.CancelledError:
                self._finished(job, error=concurrent.futures.CancelledError())
            except BaseException as exc:  # noqa: BLE001 - the executor's own error (BrokenProcessPool...)
                self._finished(job, error=exc)
            else:
                self._finished(job, outcome=outcome)

        fut.add_done_callback(done)

    def _chunk_size(self) -> int:
        # Called under self._lock.
        if self._per_job is None or self._per_job > self._TINY_S:
            return 1
        if self.local:  # only async bodies go together (_chunks_with), on the thread's loop
            if not self._queue[0].is_async:
                return 1
            return max(1, min(self._LOCAL_ASYNC_CHUNK_MAX, len(self._queue) // (2 * self._workers)))
        return max(1, min(self._CHUNK_MAX, len(self._queue) // (4 * self._workers)))

    def _chunks_with(self, job: Any) -> bool:
        return job.is_async or not self.local

    def _ship_chunk(self, jobs: list) -> None:
        if self.local:  # async bodies (_chunks_with), run together on one thread's loop
            for job in jobs:
                job.shipped()
            try:
                batch = self._ship_batch(jobs)
            except BaseException as exc:  # noqa: BLE001 - executor shut down or broken
                self._release()
                for job in jobs:
                    job.handle = None
                    self._report_error(job, exc)
                return
            for job in jobs:
                if job.stopped:
                    batch.cancel(job)
            return
        payloads, kept = [], []
        for job in jobs:
            job.shipped()
            try:
                payloads.append(job.payload())
            except BaseException as exc:  # noqa: BLE001 - unserializable: that execution fails alone
                job.report(error=exc)
                continue
            kept.append(job)
        if not kept:
            self._release()
            return
        chunk = _Chunk(kept)
        try:
            fut = self.target.submit(_remote.run_chunk, payloads)
        except BaseException as exc:  # noqa: BLE001 - executor shut down or broken
            self._release()
            for job in kept:
                self._report_error(job, exc)
            return
        del payloads
        chunk.fut = fut
        for job in kept:
            job.handle = chunk
        t0, ahead_of_it = time.monotonic(), self._inflight

        def done(f: Any) -> None:
            self._observe(time.monotonic() - t0, ahead_of_it, len(kept))
            try:
                outcomes = f.result(0)
                error = None
            except concurrent.futures.CancelledError:
                outcomes, error = None, concurrent.futures.CancelledError()
            except BaseException as exc:  # noqa: BLE001 - BrokenProcessPool...
                outcomes, error = None, exc
            self._release()
            try:
                for i, job in enumerate(kept):
                    job.handle = None
                    if error is None:
                        job.report(outcome=outcomes[i])
                    else:
                        self._report_error(job, error)
            finally:
                if self._queue:
                    self._pump()

        fut.add_done_callback(done)
        for job in kept:
            if job.stopped:
                self.cancel(job)

    def _shut_down(self, exc: BaseException) -> str | None:
        if isinstance(exc, concurrent.futures.BrokenExecutor):  # its own message says more
            return None
        message = str(exc) if isinstance(exc, RuntimeError) else ""
        if "interpreter shutdown" in message or _pools_stopped_at_exit():
            return f"executor {self.name!r} was shut down at interpreter exit"
        t = self.target
        if (getattr(t, "_shutdown", False) is True or getattr(t, "_shutdown_thread", False) is True
                or "after shutdown" in message):
            return f"executor {self.name!r} was shut down"
        return None

    def _stop_job(self, job: Any, h: Any) -> None:
        if _is_batch(h):
            h.cancel(job)
            return
        super()._stop_job(job, h)

    def _stop(self, handle: Any) -> None:
        if handle.__class__ is _Chunk:
            # The others in the chunk still want their outcomes: cancel the call only for all.
            if handle.fut is not None and all(j.stopped for j in handle.jobs):
                handle.fut.cancel()
            return
        handle.cancel()


class _Dask(_Windowed):
    """A distributed.Client: bodies run as Dask tasks of the serialized body (pure=False: every
    call runs).

    Jobs that arrive together are shipped together: ``submit`` only queues the job (the execution's
    fiber goes on at once) and wakes a shipping thread, which takes everything queued (up to the
    window) into one ``client.map`` call, so one ``update_graph`` message reaches the scheduler per
    batch instead of one per body (the scheduler of a ``LocalCluster`` runs in this process, on the
    client's event loop, and each message costs it a few hundred µs of this process's CPU). A lone
    job ships as soon as that thread wakes: batches form while it is busy, no delay waits for
    company.

    Cancelling an execution (``cancel()``, ``timeout=``, a cancelled scope) ends it here at once
    and cancels its Dask future: a body still queued on the cluster never runs; a running one
    cannot be interrupted (Dask runs it in a worker thread), so it runs to its end, keeping that
    worker thread busy, and its result is discarded.

    Outcomes are awaited on the client's own event loop (``_track``): each batch of finished
    futures is fetched there with one asynchronous ``gather`` (a done callback per future would
    fetch them one round trip at a time), at most every _DASK_LINGER seconds while other bodies
    are in flight, and handed to one collector thread per client, which settles the executions
    (so their done callbacks never run on the client's loop)."""

    def __init__(self, client: Any, name: str | None) -> None:
        if name is None:
            try:
                name = f"dask({client.scheduler.address})"
            except Exception:  # noqa: BLE001
                name = "dask"
        super().__init__(client, name, 1024)
        self._jobs: dict = {}  # key -> job, shipped and not yet settled (under self._cond)
        self._cond = threading.Condition()
        self._batches: collections.deque = collections.deque()  # fetched, for the collector thread
        self._collecting = False  # the collector thread runs
        # On the client's event loop only: futures in flight, finished ones not yet fetched, ...
        self._pending = 0
        self._done: list = []
        self._fetching = False
        self._fetched_at = 0.0
        self._timer: Any = None
        self._waiting: set = set()
        self._shipping = False  # the shipping thread has work (under self._lock)
        self._shipper: threading.Thread | None = None
        self._ship_cond = threading.Condition(self._lock)

    def submit(self, job: Any) -> None:
        with self._lock:
            self._queue.append(job)
        self._pump()

    def _pump(self) -> None:
        with self._lock:
            if not self._queue or self._shipping:
                return
            self._shipping = True
            if self._shipper is not None:
                self._ship_cond.notify()
                return
            try:
                t = threading.Thread(target=self._ship_loop, name=f"distaff-{self.name}-ship", daemon=True)
                t.start()
                self._shipper = t
                return
            except RuntimeError:  # no new thread at interpreter exit (CPython 3.12+): ship from here
                pass
        self._drain()

    def _ship_loop(self) -> None:
        # The shipping thread: ships what is queued, then waits for more; it ends after a second
        # without work (the next submit starts another), so an engine's runner is not kept alive
        # by it.
        lock = self._lock
        while True:
            self._drain()
            with lock:
                if not self._shipping:
                    self._ship_cond.wait(1.0)
                if not self._shipping:
                    self._shipper = None
                    return

    def _drain(self) -> None:
        # Ships until nothing is queued or the window is full (a finishing job pumps again); then
        # clears self._shipping. A submit meanwhile only queues: this loop takes it.
        try:
            while True:
                with self._lock:
                    room = min(self.ahead - self._inflight, _DASK_SHIP_MAX)
                    jobs = []
                    queue = self._queue
                    while queue and len(jobs) < room:
                        job = queue.popleft()
                        if not job.stopped:
                            jobs.append(job)
                    if not jobs:
                        self._shipping = False
                        return
                    self._inflight += len(jobs)
                self._ship_batch(jobs)
                jobs = job = None
        except BaseException:  # noqa: BLE001 - never leave the runner without a shipper
            import logging

            logging.getLogger("distaff").exception("distaff: shipping to %s failed", self.name)
            with self._lock:
                self._shipping = False

    def _ship_batch(self, jobs: list) -> None:
        import uuid
        payloads, keys, kept = [], [], []
        for job in jobs:
            job.shipped()
            try:
                payloads.append(job.payload())
            except BaseException as exc:  # noqa: BLE001 - unserializable: that execution fails alone
                self._release()
                job.report(error=exc)
                continue
            keys.append(f"{job.name}-{uuid.uuid4().hex}")
            kept.append(job)
        if not kept:
            return
        try:
            if len(kept) == 1:
                futs = [self.target.submit(_remote.run, payloads[0], pure=False, key=keys[0])]
            else:
                futs = self.target.map(_remote.run, payloads, pure=False, key=keys)
        except BaseException as exc:  # noqa: BLE001 - the client is closed...
            for job in kept:
                self._release()
                self._report_error(job, exc)
            return
        del payloads
        for job, fut in zip(kept, futs):
            job.handle = fut
        with self._cond:
            jobs_by_key = self._jobs
            if not jobs_by_key:
                self._cond.notify()  # the collector watches for a closed client while jobs are out
            for job, fut in zip(kept, futs):
                jobs_by_key[fut.key] = job
        try:
            self.target.loop.add_callback(self._track, futs)
        except BaseException as exc:  # noqa: BLE001 - the client's loop is closed
            self._deliver(futs, {}, exc)
        for job in kept:
            if job.stopped:
                self.cancel(job)

    def prepare(self) -> None:
        """Starts the collector thread now, on the thread that submits the first body (CPython
        3.12+ refuses to start threads at interpreter exit, when a fire-and-forget body may be
        shipped; the shipping thread falls back to shipping from the submitter)."""
        with self._cond:
            self._start_collector()

    def _start_collector(self) -> None:
        # Under self._cond.
        if self._collecting:
            return
        try:
            threading.Thread(target=self._collect, name=f"distaff-{self.name}", daemon=True).start()
        except RuntimeError:  # no thread now (interpreter exit): the outcomes are settled on the loop
            return
        self._collecting = True

    # -- on the client's event loop: wait for the futures, fetch finished results in batches --
    #
    # Everything between a future's completion and the fetch of its result runs here, as
    # coroutines and timers of the loop that also runs the client (and a LocalCluster's scheduler):
    # a thread that waited for each completion (distributed.as_completed), polled for company and
    # fetched with a synchronous client.gather woke up and handed the interpreter lock back and
    # forth with the loop several times per batch, and the scheduler waited for it (py-spy, W10).
    # The collector thread is woken once per fetched batch.

    def _track(self, futs: list) -> None:
        import asyncio

        self._pending += len(futs)
        create_task = asyncio.get_running_loop().create_task
        tasks = self._waiting  # asyncio keeps only weak references to tasks
        for fut in futs:
            t = create_task(self._await_done(fut))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    async def _await_done(self, fut: Any) -> None:
        try:
            # What distributed's own wait() and as_completed await: the future's shared state, set
            # when it finishes, fails or is cancelled (also when the client closes).
            await fut._state.wait()
        except BaseException:  # noqa: BLE001 - the loop is closing: settled as it is below
            pass
        self._pending -= 1
        if fut.status == "finished":
            self._done.append(fut)
            self._maybe_fetch()
            return
        # Failed or cancelled: nothing to fetch, the error is on the future already.
        error = None
        if fut.status == "error":
            try:
                error = await fut.exception(asynchronous=True)
            except BaseException as exc:  # noqa: BLE001
                error = exc
        self._deliver([fut], {fut.key: (None, error)} if isinstance(error, BaseException) else {})
        self._maybe_fetch()  # the last one in flight failed: those that finished go now

    def _maybe_fetch(self) -> None:
        if self._fetching or not self._done:
            return
        import asyncio

        loop = asyncio.get_running_loop()
        now = time.monotonic()
        due = self._fetched_at + _DASK_LINGER
        # While others are in flight, let more finish first (see _DASK_LINGER); a lone body, or the
        # last one of a fan-out, waits for nothing.
        if self._pending > 0 and len(self._done) < _DASK_BATCH_MAX and now < due:
            if self._timer is None:
                self._timer = loop.call_at(loop.time() + (due - now), self._linger_over)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._fetching = True
        batch, self._done = self._done, []
        t = loop.create_task(self._fetch(batch))
        self._waiting.add(t)
        t.add_done_callback(self._waiting.discard)

    def _linger_over(self) -> None:
        self._timer = None
        self._maybe_fetch()

    async def _fetch(self, batch: list) -> None:
        results: dict = {}
        try:
            try:  # one batched transfer for every result in the batch
                values = await self.target.gather(batch, asynchronous=True)
                results = {f.key: (v, None) for f, v in zip(batch, values)}
            except BaseException:  # noqa: BLE001 - one was lost or released meanwhile: each on its own
                for f in batch:
                    try:
                        results[f.key] = ((await self.target.gather([f], asynchronous=True))[0], None)
                    except BaseException as exc:  # noqa: BLE001
                        results[f.key] = (None, exc)
        finally:
            self._fetched_at = time.monotonic()
            self._fetching = False
            self._deliver(batch, results)
            batch = results = None
            self._maybe_fetch()

    def _deliver(self, batch: list, results: dict, error: BaseException | None = None) -> None:
        # To the collector thread, which settles the executions (their done callbacks run there,
        # never on the client's loop, where a synchronous Dask call would block it).
        with self._cond:
            if self._collecting:
                self._batches.append((batch, results, error))
                self._cond.notify()
                return
        self._settle_batch(batch, results, error)  # no collector thread (interpreter exit)

    def _collect(self) -> None:
        closed_at = None
        while True:
            with self._cond:
                while not self._batches:
                    if not self._jobs:
                        closed_at = None
                        self._cond.wait()
                        continue
                    # Jobs are out. A closed client cancels their futures, and the client's loop
                    # delivers each cancellation (_await_done) — unless the loop stopped first (a
                    # client that owned its loop stops it in close()): then nothing would ever
                    # settle those executions. After a grace period the rest fail here.
                    if closed_at is None:
                        if getattr(self.target, "status", None) == "closed":
                            closed_at = time.monotonic()
                    elif time.monotonic() - closed_at >= _DASK_CLOSED_GRACE:
                        break
                    self._cond.wait(_DASK_CLOSED_POLL)
                if self._batches:
                    batch, results, error = self._batches.popleft()
                else:  # the client is closed: no outcome can come for these any more
                    batch = [job.handle for job in self._jobs.values() if job.handle is not None]
                    results, error, closed_at = {}, None, None
            # One batch per call: its jobs, futures and outcomes die with the call's frame, not
            # with the next batch (a finished execution must not stay alive in this thread).
            self._settle_batch(batch, results, error)
            batch = results = error = None

    def _settle_batch(self, batch: list, results: dict, lost: BaseException | None = None) -> None:
        """Settles the executions of finished futures: ``results`` maps a key to (packed outcome,
        error); a future without one was cancelled (or its client's loop stopped: ``lost``).
        Makes no call to the client (it may run on the client's loop, at interpreter exit)."""
        try:
            for fut in batch:
                with self._cond:
                    job = self._jobs.pop(fut.key, None)
                if job is None:
                    continue
                outcome, error = results.get(fut.key, (None, None))
                if outcome is None and error is None:
                    status = fut.status
                    if lost is not None:
                        error = lost
                    elif status == "cancelled":
                        error = concurrent.futures.CancelledError()
                    else:
                        error = RuntimeError(f"the Dask future of task {job.name!r} ended {status!r}")
                job.handle = None
                self._release()
                if error is None:
                    job.report(outcome=outcome)
                else:
                    self._report_error(job, error)
                job = outcome = error = None
        finally:
            # once per batch: the jobs that waited for the window go in one client.map
            if self._queue:
                self._pump()

    def _shut_down(self, exc: BaseException) -> str | None:
        if getattr(self.target, "status", None) in ("closing", "closed"):
            return f"the Dask client {self.name!r} was closed"
        if isinstance(exc, RuntimeError) and "at interpreter shutdown" in str(exc):
            # CPython 3.12+: a scheduler in this process (LocalCluster) cannot start the threads it
            # needs once the interpreter exits
            return f"the Dask client {self.name!r} cannot take work at interpreter exit ({exc})"
        return None

    def _stop(self, fut: Any) -> None:
        fut.cancel()


# The Dask collector fetches finished results at most every _DASK_LINGER seconds while other
# bodies are still in flight (at once when none is: a lone body or the last of a fan-out waits for
# nothing; and at once after a quiet spell: the wait counts from the previous fetch), up to
# _DASK_BATCH_MAX per fetch. Each fetch is a round trip client -> scheduler -> workers that costs
# this process (which runs a LocalCluster's scheduler) ~1 ms of CPU and interrupts the workers'
# bodies to serve the data; fetching each small batch as it finished (1-5 results on W9) cost
# ~1,000 round trips per 2,000 bodies. 20 ms rather than 10: W10's 200 results of ~10 ms bodies
# on 2 workers came in ~110 fetches of 1-3, now ~50 of ~4 (client CPU -15%).
_DASK_LINGER = 0.020
# A closed client's executions still without an outcome this long after it closed fail with
# ShutdownError (_collect): their cancellations were lost with the client's stopped loop. While
# bodies are out, the collector looks at the client's status every _DASK_CLOSED_POLL seconds.
_DASK_CLOSED_GRACE = 1.0
_DASK_CLOSED_POLL = 0.25
# At most this many jobs per client.map: the scheduler starts the first tasks while the shipping
# thread serializes the next batch (one map of the whole window kept the workers idle until the
# scheduler had taken in all of it).
_DASK_SHIP_MAX = 64
_DASK_BATCH_MAX = 1024

# The Ray collector waits for an eighth of what is in flight (or 20 ms) per round: one round per
# result made W9 (2k tiny bodies) 1.25-1.37x raw ray.get, each round scanning every ref in flight;
# this makes it 1.04-1.07x. A lone result waits at most the 20 ms (one in flight: no wait at all).
_RAY_BATCH = 8


class Ray(_Windowed):
    """Runs bodies as Ray tasks: ``ray.remote(...).options(num_cpus=..., **remote_options)``.

    Uses the Ray runtime of this process (``ray.init(...)``; Ray starts a local one on first use
    otherwise) and never shuts it down. Cancelling an execution (``cancel()``, ``timeout=``, a
    cancelled scope) calls ``ray.cancel(ref, force=True)`` on its task: a queued task never runs, a
    running one's worker process is killed and Ray replaces it.

    Args:
        num_cpus: CPUs each body reserves (Ray's scheduling unit; default 1).
        ahead: at most this many bodies submitted to Ray and unfinished; the rest wait here,
            unserialized (default 1024).
        **remote_options: passed to ``.options()`` (``num_gpus``, ``resources``, ``memory``,
            ``runtime_env``, ``max_retries`` ...).
    """

    def __init__(self, num_cpus: float = 1, *, ahead: int = 1024, name: str = "ray", **remote_options: Any) -> None:
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or num_cpus < 0:
            raise ValueError(f"num_cpus must be a non-negative number, not {num_cpus!r}")
        if isinstance(ahead, bool) or not isinstance(ahead, int) or ahead < 1:
            raise ValueError(f"ahead must be a positive int, not {ahead!r}")
        super().__init__(self, name, ahead)
        self.num_cpus = num_cpus
        self.remote_options = remote_options
        self._remote = None
        self._refs: dict = {}
        self._cond = threading.Condition()
        self._collecting = False

    def _start(self, job: Any) -> Any:
        fn = self._remote
        if fn is None:
            import ray

            fn = self._remote = ray.remote(_remote.run).options(num_cpus=self.num_cpus, **self.remote_options)
        # One bytes argument: passing the function and arguments for Ray to serialize measured
        # 15-35% slower for 2k tiny bodies (a function object as an argument is costly in Ray).
        return fn.remote(job.payload())

    def prepare(self) -> None:
        """Starts the collector thread now, on the thread that submits the first body (CPython
        3.12+ refuses to start threads at interpreter exit, when a fire-and-forget body may be
        shipped)."""
        with self._cond:
            self._start_collector()

    def _start_collector(self) -> None:
        # Under self._cond.
        if not self._collecting:
            try:
                threading.Thread(target=self._collect, name=f"distaff-{self.name}", daemon=True).start()
            except RuntimeError:  # no thread now (interpreter exit): the next body tries again
                return
            self._collecting = True

    def _watch(self, job: Any, ref: Any) -> None:
        with self._cond:
            self._start_collector()
            self._refs[ref] = job
            self._cond.notify()

    def _collect(self) -> None:
        # One thread per adapter: ray.wait over what is in flight, then one ray.get per ready batch
        # (a future per task would cost a thread hop and a fetch each).
        import ray

        while True:
            with self._cond:
                while not self._refs:
                    self._cond.wait()
                refs = list(self._refs)
            # an eighth of them ready (at least one); 20 ms at most, so refs submitted meanwhile join the next round
            try:
                ready, rest = ray.wait(refs, num_returns=max(1, len(refs) // _RAY_BATCH), timeout=0.02)
                if not ready:
                    continue
                if rest:
                    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                    ready += more
            except BaseException as exc:  # noqa: BLE001 - Ray was shut down under us (it raises SystemExit)
                with self._cond:
                    lost = [self._refs.pop(r) for r in refs if r in self._refs]
                err = RuntimeError(f"Ray failed or was shut down while the body ran: {type(exc).__name__}: {exc}")
                for job in lost:
                    self._finished(job, error=err)
                lost = job = err = None
                continue
            try:
                outs = ray.get(ready)
                results = [(r, o, None) for r, o in zip(ready, outs)]
            except BaseException:  # noqa: BLE001 - one failed or was cancelled: each on its own
                results = []
                for r in ready:
                    try:
                        results.append((r, ray.get(r), None))
                    except BaseException as exc:  # noqa: BLE001
                        if isinstance(exc, ray.exceptions.TaskCancelledError):
                            exc = concurrent.futures.CancelledError()
                        results.append((r, None, exc))
            for r, out, exc in results:
                with self._cond:
                    job = self._refs.pop(r, None)
                if job is not None:
                    self._finished(job, outcome=out, error=exc)
            # This frame lives as long as the adapter: drop the last round's jobs and outcomes now,
            # or they (and their executions) stay alive until the next round.
            refs = ready = rest = outs = results = job = out = exc = r = None

    def _stop(self, ref: Any) -> None:
        import ray

        with self._cond:
            job = self._refs.pop(ref, None)
        try:
            # force=True: a queued task is dropped, a running one's worker process is killed (Ray
            # starts another), as "processes" does. Without force Ray raises KeyboardInterrupt in
            # the body, which a body blocked in C (time.sleep, a lock, a socket) never sees
            # (ray-project/ray#32954) and a body may catch.
            ray.cancel(ref, force=True)
        finally:
            if job is not None:  # settled now: the cancelled task's outcome is not waited for
                self._finished(job, error=concurrent.futures.CancelledError())


def _pools_stopped_at_exit() -> bool:
    """concurrent.futures' exit hook (threading._register_atexit) has stopped its pools."""
    thread, process = sys.modules.get("concurrent.futures.thread"), sys.modules.get("concurrent.futures.process")
    return getattr(thread, "_shutdown", False) is True or getattr(process, "_global_shutdown", False) is True


def _observed(ex: Any) -> None:
    # Done callback: the execution's error was reported (logged) already.
    try:
        ex.exception(0)
    except BaseException:  # noqa: BLE001 - cancelled meanwhile
        pass


def _is_dask_client(obj: Any) -> bool:
    t = type(obj)
    return t.__name__ == "Client" and t.__module__.split(".")[0] == "distributed"


def check_target(obj: Any, label: str = "executor") -> None:
    """Raises TypeError unless obj can be an executor= value."""
    if isinstance(obj, str):
        if not obj:
            raise TypeError(f"{label} must be a non-empty name")
        return
    if isinstance(obj, (ProcessPool, _Windowed)) or _is_dask_client(obj):
        return
    if isinstance(obj, type):
        raise TypeError(f"{label} must be an executor instance, not the class {obj.__qualname__}")
    if not callable(getattr(obj, "submit", None)):
        raise TypeError(
            f"{label} must be a name registered on the engine, 'processes', a concurrent.futures.Executor, "
            f"a distributed.Client, distaff.executors.Ray(...) or an object with submit(fn, /, *args, **kwargs) "
            f"returning a future; got {type(obj).__qualname__}"
        )


def adapt(obj: Any, name: str | None) -> Any:
    """The runner for an executor object (see distaff/_elsewhere.py)."""
    check_target(obj)
    if isinstance(obj, (ProcessPool, _Windowed)):
        return obj
    if _is_dask_client(obj):
        return _Dask(obj, name)
    return _Futures(obj, name or type(obj).__name__, _is_thread_pool(obj))


def _is_stdlib_pool(obj: Any, module: str, cls: str) -> bool:
    """isinstance(obj, module.cls) for a concurrent.futures pool, without importing `module`: an
    instance means it is imported already, and importing it at interpreter exit raises "can't
    register atexit after shutdown" (a workflow still running at exit, first using a
    ProcessPoolExecutor)."""
    kind = getattr(sys.modules.get(module), cls, None)  # (None also while it is half-imported)
    return kind is not None and isinstance(obj, kind)


def _is_thread_pool(obj: Any) -> bool:
    return _is_stdlib_pool(obj, "concurrent.futures.thread", "ThreadPoolExecutor")


def _is_process_pool(obj: Any) -> bool:
    return _is_stdlib_pool(obj, "concurrent.futures.process", "ProcessPoolExecutor")
