"""Progress displays: ``progress=True`` on wait / as_completed / gather / join, and the
``distaff.progress()`` context manager (docs/observability.md, "Progress").

Off (the default) nothing here runs: the wait functions test one ``is not False`` and go on.
On, every display is an entry of one board: one daemon thread refreshes every active entry
(counting is a poll of the members' ``done()``, incremental: only unfinished ones are looked at
again), and the entry's own code path ends it — the wait returning or raising (timeout, Ctrl-C,
any exception), an ``as_completed`` iteration ending or its iterator dropped (or, kept unconsumed,
all its members done), a ``gather``/``join`` handle finishing — so a display never outlives what
it shows, and never holds up the program: the thread is a daemon and the board is closed at
interpreter exit.

Where it draws: stderr. On a terminal a live bar — rich's when rich is installed, else tqdm's,
else a plain one of distaff's own (``DISTAFF_PROGRESS=rich|tqdm|plain|auto|off`` picks; ``off``
turns every display off) — and when stderr is not a terminal (a CI log, a file, a pipe) plain
lines, one when a display starts, one when its counts changed at most every
``DISTAFF_PROGRESS_INTERVAL`` seconds (default 2), and a final one.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Any, Callable

from . import _core

_BACKENDS = ("auto", "rich", "tqdm", "plain", "off")
TTY_INTERVAL = 0.1  # seconds between redraws of a live bar
LINES_INTERVAL = 2.0  # default seconds between plain lines (non-terminal stderr)
_COST_FACTOR = 20  # counting may take at most 1/20 of the time between refreshes


def wanted(progress: Any, what: str) -> bool:
    """The ``progress=`` flag of ``what``: True or False (None counts as False)."""
    if progress is True:
        _backend()  # a bad DISTAFF_PROGRESS fails here, before anything is submitted or waited
        _lines_interval()
        return True
    if progress is None or progress is False:
        return False
    hint = ""
    if what == "join" and isinstance(progress, _core.Execution):
        hint = " (progress= is join()'s own option: give that member another name)"
    raise TypeError(f"{what}(progress=) must be True or False, not {type(progress).__name__}{hint}")


def _backend() -> str:
    value = os.environ.get("DISTAFF_PROGRESS", "auto").strip().lower() or "auto"
    if value not in _BACKENDS:
        raise ValueError(f"DISTAFF_PROGRESS must be one of {', '.join(_BACKENDS)}, not {value!r}")
    return value


def _lines_interval() -> float:
    raw = os.environ.get("DISTAFF_PROGRESS_INTERVAL")
    if raw is None or not raw.strip():
        return LINES_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"DISTAFF_PROGRESS_INTERVAL must be a number of seconds >= 0, not {raw!r}")
    return value


# ---------------------------------------------------------------------------------------------
# What is counted


class Snapshot:
    __slots__ = ("done", "total", "failed", "cancelled", "running", "pending")

    def __init__(self, done: int, total: int, failed: int = 0, cancelled: int = 0, running=None, pending=None):
        self.done, self.total, self.failed, self.cancelled = done, total, failed, cancelled
        self.running, self.pending = running, pending

    def details(self) -> str:
        parts = []
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.cancelled:
            parts.append(f"{self.cancelled} cancelled")
        if self.running:
            parts.append(f"{self.running} running")
        if self.pending:
            parts.append(f"{self.pending} pending")
        return ", ".join(parts)

    def key(self) -> tuple:
        return (self.done, self.total, self.failed, self.cancelled, self.running, self.pending)

    def as_dict(self) -> dict:
        d = {"done": self.done, "total": self.total, "failed": self.failed, "cancelled": self.cancelled}
        if self.running is not None:
            d["running"] = self.running
        if self.pending is not None:
            d["pending"] = self.pending
        return d


class Members:
    """Counts a fixed list of executions; each finished one is looked at once. ``end_when_done``:
    the display ends by itself once every member finished (an ``as_completed`` iterator someone
    keeps unconsumed); otherwise its owner ends it, with its own word for how (a gather that
    failed, a wait that timed out)."""

    def __init__(self, execs: list, end_when_done: bool = False) -> None:
        self.end_when_done = end_when_done
        self.total = len(execs)
        self.pending = list(execs)
        self.failed = 0
        self.cancelled = 0

    def __call__(self) -> Snapshot:
        still = []
        for e in self.pending:
            if e.done():
                state = e.state
                if state == "failed":
                    self.failed += 1
                elif state == "cancelled":
                    self.cancelled += 1
            else:
                still.append(e)
        self.pending = still
        return Snapshot(self.total - len(still), self.total, self.failed, self.cancelled)

    def all_done(self, snap: Snapshot) -> bool:
        return self.end_when_done and snap.done == snap.total


class EngineCounts:
    """An engine's executions from the block's start: those unfinished then plus those submitted
    since (``engine.stats()``: cheap, no per-execution work)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        s = engine.stats()
        # "finished" counts an execution as its state turns terminal (before its done-callbacks,
        # so before an awaiting coroutine resumes); "live" only drops after the callbacks, so an
        # execution the caller saw finish could still count as live here.
        self.finished0, self.submitted0 = s["finished"], s["submitted"]

    def __call__(self) -> Snapshot:
        s = self.engine.stats()
        total = self.submitted0 - self.finished0 + s["submitted"] - self.submitted0
        done = min(total, s["finished"] - self.finished0)
        running = min(s.get("fibers", 0), total - done)  # a finished body's fiber may still unwind
        return Snapshot(done, total, running=running, pending=total - done - running)

    def all_done(self, snap: Snapshot) -> bool:
        return False


class WorkflowCounts:
    """A workflow's executions: the finished ones in the engine's history plus the live tagged
    ones (``engine.executions(workflow_id)``'s sources), by state."""

    def __init__(self, engine: Any, workflow_id: str) -> None:
        self.engine, self.workflow_id = engine, workflow_id

    def __call__(self) -> Snapshot:
        counts = {"succeeded": 0, "failed": 0, "cancelled": 0, "running": 0, "waiting": 0, "pending": 0}
        seen = set()
        for row in self.engine._core.history(self.workflow_id):
            seen.add(row[0])
            counts[row[5]] = counts.get(row[5], 0) + 1
        for e in self.engine._live_executions(self.workflow_id):
            if e.id not in seen:
                state = e.state
                counts[state] = counts.get(state, 0) + 1
        done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
        total = sum(counts.values())
        return Snapshot(
            done, total, counts["failed"], counts["cancelled"], running=counts["running"],
            pending=counts["pending"] + counts["waiting"],
        )

    def all_done(self, snap: Snapshot) -> bool:
        return False


# ---------------------------------------------------------------------------------------------
# How it is drawn


def _elapsed(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _text(entry: "Entry", snap: Snapshot, outcome: str | None) -> str:
    details = snap.details()
    text = f"{entry.desc}: {snap.done}/{snap.total} done"
    if details:
        text += f" ({details})"
    text += f", {_elapsed(time.monotonic() - entry.started)}"
    if outcome:
        text += f" - {outcome}"
    return text


class LinesRenderer:
    """Not a terminal: a line when an entry starts, when its counts changed (at most every
    interval) and when it ends."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.interval = _lines_interval()

    def add(self, entry: "Entry", snap: Snapshot) -> None:
        entry.last_line = snap.key()
        entry.last_time = time.monotonic()
        self._write(entry, snap, None)

    def update(self, entry: "Entry", snap: Snapshot) -> None:
        key = snap.key()
        now = time.monotonic()
        if key != entry.last_line and now - entry.last_time >= self.interval:
            entry.last_line, entry.last_time = key, now
            self._write(entry, snap, None)

    def finish(self, entry: "Entry", snap: Snapshot, outcome: str) -> None:
        self._write(entry, snap, outcome)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _write(self, entry: "Entry", snap: Snapshot, outcome: str | None) -> None:
        self.file.write(f"[distaff] {_text(entry, snap, outcome)}\n")
        self.file.flush()


class PlainBar:
    """A terminal without rich or tqdm: one redrawn line per live entry (ANSI cursor moves),
    finished entries printed once above them."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.live: dict = {}  # entry -> its current line
        self.drawn = 0  # live lines on screen, the cursor at the end of the last one
        self.finished: list = []

    def _bar(self, entry: "Entry", snap: Snapshot, outcome: str | None) -> str:
        import shutil  # on first use (its bz2/lzma imports cost 0.5 MiB of RSS at import)

        width = shutil.get_terminal_size((80, 24)).columns
        text = _text(entry, snap, outcome)
        bar_width = max(10, min(30, width // 4))  # one width for every row: the bars line up
        filled = bar_width if snap.total and snap.done >= snap.total else (bar_width * snap.done // snap.total if snap.total else 0)
        line = f"[{'#' * filled}{'.' * (bar_width - filled)}] {text}"
        return line[: width - 1]

    def add(self, entry: "Entry", snap: Snapshot) -> None:
        self.live[entry] = self._bar(entry, snap, None)

    def update(self, entry: "Entry", snap: Snapshot) -> None:
        self.live[entry] = self._bar(entry, snap, None)

    def finish(self, entry: "Entry", snap: Snapshot, outcome: str) -> None:
        self.live.pop(entry, None)
        self.finished.append(self._bar(entry, snap, outcome))

    def flush(self) -> None:
        out = []
        if self.drawn:
            out.append("\r")
            if self.drawn > 1:
                out.append(f"\x1b[{self.drawn - 1}A")
        for line in self.finished:
            out.append(line + "\x1b[K\n")
        self.finished = []
        lines = list(self.live.values())
        out.append("\n".join(x + "\x1b[K" for x in lines))
        if not lines:
            out.append("\x1b[J")  # a live line fewer: clear what is below
        self.drawn = len(lines)
        self.file.write("".join(out))
        self.file.flush()

    def close(self) -> None:
        if self.drawn:
            self.file.write("\n")
            self.file.flush()
            self.drawn = 0


class RichRenderer:
    """rich's Progress, one task row per entry; refreshed by the board's thread (no refresh
    thread of rich's own, no redirection of sys.stdout/stderr)."""

    def __init__(self, file: Any) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[details]}"),
            TimeElapsedColumn(),
            console=Console(file=file),
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.progress.start()
        self.tasks: dict = {}

    def add(self, entry: "Entry", snap: Snapshot) -> None:
        self.tasks[entry] = self.progress.add_task(entry.desc, total=snap.total, completed=snap.done, details=snap.details())

    def update(self, entry: "Entry", snap: Snapshot) -> None:
        self.progress.update(self.tasks[entry], total=snap.total, completed=snap.done, details=snap.details())

    def finish(self, entry: "Entry", snap: Snapshot, outcome: str) -> None:
        details = snap.details()
        details = f"{details} - {outcome}" if details else outcome
        self.progress.update(self.tasks.pop(entry), total=snap.total, completed=snap.done, details=details)

    def flush(self) -> None:
        self.progress.refresh()

    def close(self) -> None:
        self.progress.stop()


class TqdmRenderer:
    """tqdm, one bar per entry."""

    def __init__(self, file: Any) -> None:
        import tqdm

        self.tqdm = tqdm.tqdm
        self.file = file
        self.bars: dict = {}

    def add(self, entry: "Entry", snap: Snapshot) -> None:
        import shutil

        self.bars[entry] = self.tqdm(
            total=snap.total, desc=entry.desc, file=self.file, leave=True, mininterval=0, miniters=1,
            ncols=shutil.get_terminal_size((80, 24)).columns,  # tqdm's own query says 0 on a sizeless pty
        )
        self.update(entry, snap)

    def update(self, entry: "Entry", snap: Snapshot) -> None:
        bar = self.bars[entry]
        bar.total = snap.total
        bar.n = snap.done
        bar.set_postfix_str(snap.details(), refresh=False)
        bar.refresh()

    def finish(self, entry: "Entry", snap: Snapshot, outcome: str) -> None:
        self.update(entry, snap)
        bar = self.bars.pop(entry)
        details = snap.details()
        bar.set_postfix_str(f"{details} - {outcome}" if details else outcome, refresh=True)
        bar.close()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _renderer(file: Any) -> Any:
    """The renderer for this stderr: plain lines unless it is a terminal."""
    backend = _backend()
    isatty = getattr(file, "isatty", None)
    tty = False
    try:
        tty = bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"
    except (ValueError, OSError):  # a closed file
        tty = False
    if not tty:
        return LinesRenderer(file)
    if backend in ("auto", "rich"):
        try:
            return RichRenderer(file)
        except ImportError:
            if backend == "rich":
                raise RuntimeError("DISTAFF_PROGRESS=rich but rich is not installed (pip install rich)") from None
    if backend in ("auto", "tqdm"):
        try:
            return TqdmRenderer(file)
        except ImportError:
            if backend == "tqdm":
                raise RuntimeError("DISTAFF_PROGRESS=tqdm but tqdm is not installed (pip install tqdm)") from None
    return PlainBar(file)


# ---------------------------------------------------------------------------------------------
# The board: every active display, one refresh thread


class Entry:
    """One display: a description and a count source; ``stop()`` ends it (idempotent)."""

    __slots__ = ("desc", "source", "started", "closed", "last", "last_line", "last_time", "__weakref__")

    def __init__(self, desc: str, source: Callable) -> None:
        self.desc = desc
        self.source = source
        self.started = time.monotonic()
        self.closed = False
        self.last: Snapshot | None = None
        self.last_line = None
        self.last_time = 0.0

    def stop(self, outcome: str = "done") -> None:
        _board.remove(self, outcome)

    def snapshot(self) -> Snapshot | None:
        with _board.lock:
            if not self.closed:
                self.last = self.source()
            return self.last


class _Board:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.entries: list = []
        self.renderer: Any = None
        self.file: Any = None
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()
        self.cost = 0.0
        self.closed = False  # at interpreter exit: no new displays

    def add(self, desc: str, source: Callable) -> Entry | None:
        entry = Entry(desc, source)
        with self.lock:
            if self.closed or _backend() == "off":
                return None
            file = sys.stderr
            if file is None:
                return None
            if self.renderer is None:  # else displays are on: join them where they draw
                self.renderer = _renderer(file)
                self.file = file
            snap = entry.last = source()
            try:
                self.renderer.add(entry, snap)
                self.entries.append(entry)
                self.renderer.flush()
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, name="distaff-progress", daemon=True)
                    self.thread.start()
            except BaseException as exc:
                # A renderer error drops the displays; Ctrl-C (or any BaseException) arriving here,
                # before the caller's `with` took the entry, ends this display and goes on.
                entry.closed = True
                if isinstance(exc, Exception):
                    self._broken()
                    return None
                if entry in self.entries:
                    self.entries.remove(entry)
                try:  # its first line may be out already
                    self.renderer.finish(entry, snap, outcome_of(exc))
                    self.renderer.flush()
                    if not self.entries:
                        self._close_renderer()
                except Exception:
                    self._broken()
                raise
        return entry

    def remove(self, entry: Entry, outcome: str) -> None:
        with self.lock:
            if entry.closed:
                return
            entry.closed = True
            try:
                entry.last = entry.source()
            except Exception:  # a counting error must not replace the wait's own outcome
                pass
            if entry in self.entries:
                self.entries.remove(entry)
                try:
                    self.renderer.finish(entry, entry.last, outcome)
                    self.renderer.flush()
                    if not self.entries:
                        self._close_renderer()
                except Exception:
                    self._broken()
            self.wake.set()

    def _close_renderer(self) -> None:
        renderer, self.renderer, self.file = self.renderer, None, None
        if renderer is not None:
            renderer.close()

    def _broken(self) -> None:
        """A renderer that raised (a closed stderr, a terminal gone): drop every display quietly."""
        for e in self.entries:
            e.closed = True
        self.entries = []
        self.renderer, self.file = None, None

    def _interval(self) -> float:
        if isinstance(self.renderer, LinesRenderer):
            base = max(0.02, self.renderer.interval)
        else:
            base = TTY_INTERVAL
        return max(base, _COST_FACTOR * self.cost)

    def _run(self) -> None:
        while True:
            with self.lock:
                interval = self._interval()
            self.wake.wait(interval)
            self.wake.clear()
            with self.lock:
                if not self.entries:
                    self.thread = None
                    return
                t0 = time.perf_counter()
                finished = []
                try:
                    for entry in list(self.entries):
                        snap = entry.last = entry.source()
                        if getattr(entry.source, "all_done", None) and entry.source.all_done(snap):
                            finished.append(entry)
                        else:
                            self.renderer.update(entry, snap)
                    self.renderer.flush()
                except Exception:
                    self._broken()
                self.cost = time.perf_counter() - t0
            for entry in finished:
                self.remove(entry, "done")

    def shutdown(self) -> None:
        """At interpreter exit: end every display (and refuse new ones)."""
        with self.lock:
            self.closed = True
            entries = list(self.entries)
        for e in entries:
            self.remove(e, "interpreter exiting")


    def after_fork_in_child(self) -> None:
        """The refresh thread is not in the child: the parent's displays are not the child's."""
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self.entries, self.renderer, self.file, self.thread = [], None, None, None


_board = _Board()
atexit.register(_board.shutdown)
os.register_at_fork(after_in_child=_board.after_fork_in_child)


def start(desc: str, source: Callable) -> Entry | None:
    return _board.add(desc, source)


def outcome_of(exc: BaseException | None) -> str:
    if exc is None:
        return "done"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, GeneratorExit):
        return "stopped"
    aio = sys.modules.get("asyncio")  # (never imported: no asyncio CancelledError can exist)
    if aio is not None and isinstance(exc, getattr(aio, "CancelledError", ())):
        return "cancelled"
    return f"stopped by {type(exc).__name__}"


class track:  # noqa: N801 - a context manager used like a function
    """``with track(execs, "wait"):`` — a display over ``execs`` for the block."""

    __slots__ = ("entry", "desc", "execs", "outcome", "end_when_done")

    def __init__(self, execs: list, desc: str, end_when_done: bool = False) -> None:
        self.execs, self.desc, self.end_when_done = execs, desc, end_when_done
        self.entry = None
        self.outcome = "done"  # the block's own word for a normal end ("timed out", "first completed")

    def __enter__(self) -> "track":
        self.entry = start(self.desc, Members(self.execs, self.end_when_done))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.entry is not None:
            self.entry.stop(outcome_of(exc) if exc is not None else self.outcome)


def track_handle(handle: Any, members: list, desc: str) -> None:
    """A display over a gather/join handle's members, ended when the handle finishes."""
    entry = start(desc, Members(members))
    if entry is None:
        return

    def finished(h: Any) -> None:
        entry.stop(h.state if h.state != "succeeded" else "done")

    handle._add_done_callback(finished)


class progress:  # noqa: N801 - a context manager used like a function
    """``with distaff.progress():`` — a live display of a workflow's counts while the block runs.

    ``workflow_id``: the workflow to count (its finished executions in the engine's history and
    its live ones, by state); default: the workflow scope active here, else every execution of
    the engine (those unfinished when the block starts plus those submitted in it). ``engine``:
    default the default engine. Draws like ``progress=True`` on ``distaff.wait``; ends with the
    block, also on an exception or Ctrl-C. ``snapshot()`` returns the current counts as a dict.
    An async context manager too.
    """

    def __init__(self, workflow_id: str | None = None, *, engine: Any = None) -> None:
        from . import _engine, _validate

        _validate.workflow_id(workflow_id)
        if engine is not None and not isinstance(engine, _engine.Engine):
            raise TypeError(f"engine must be a distaff.Engine, not {type(engine).__name__}")
        _backend()
        _lines_interval()
        self._engine_arg = engine
        self.workflow_id = workflow_id
        self._entry: Entry | None = None
        self._source: Any = None

    def __enter__(self) -> "progress":
        from . import _engine

        if self._source is not None:
            raise RuntimeError("this distaff.progress() is already in use: make a new one")
        engine = self._engine_arg if self._engine_arg is not None else _engine.default_engine()
        wid = self.workflow_id if self.workflow_id is not None else engine._scope.get()
        if wid is None:
            self._source, desc = EngineCounts(engine), "engine"
        else:
            self._source, desc = WorkflowCounts(engine, wid), f"workflow {wid}"
        self.workflow_id = wid
        self._entry = start(desc, self._source)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._entry is not None:
            self._entry.stop(outcome_of(exc))

    async def __aenter__(self) -> "progress":
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)

    def snapshot(self) -> dict:
        """The counts now: done, total, failed, cancelled, running, pending."""
        if self._source is None:
            raise RuntimeError("distaff.progress().snapshot() needs the block to have started")
        if self._entry is not None:
            snap = self._entry.snapshot()
        else:
            with _board.lock:
                snap = self._source()
        return snap.as_dict()
