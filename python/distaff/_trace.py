"""Recording what an engine does: ``engine.trace(path)`` / ``distaff.trace(path)`` and the formats.

Built on the core's observer seam (cpp/include/distaff/observer.hpp): while something observes an
engine, its workers record every lifecycle event into per-worker buffers in C++; Python drains them
in batches (``_core.Recorder.drain``), never one Python call per event. One recorder per engine
(``_Hub``) is shared by everything that observes it at the same time (nested traces, logging).

The canonical form is the JSONL event log (one dict per event, AsyncFlow's event names); the Chrome
Trace Event Format (``.json``) and the HTML report (``.html``) are built from it, so a recorded
``.jsonl`` converts to both later (``python -m distaff trace|report``).
"""

from __future__ import annotations

import collections
import errno
import itertools
import json
import os
import threading
import time
import traceback
import warnings
import weakref
from typing import Any, Iterable

from . import _core, _quiet

FORMATS = (".json", ".jsonl", ".html")

# Core event kind -> JSONL event name. A submit of an execution with no gating dependency is also
# its TaskQueued; a finish is TaskCompleted, TaskFailed or TaskCanceled by its state.
_NAMES = {
    "submit": "TaskCreated",
    "ready": "TaskQueued",
    "start": "TaskStarted",
    "suspend": "TaskSuspended",
    "resume": "TaskResumed",
    "end": "TaskBodyEnded",
}
_FINISH = {"succeeded": "TaskCompleted", "failed": "TaskFailed", "cancelled": "TaskCanceled"}
EVENT_NAMES = ("TaskCreated", "TaskQueued", "TaskStarted", "TaskSuspended", "TaskResumed", "TaskBodyEnded",
               "TaskShipped", "TaskReturned", "TaskCompleted", "TaskFailed", "TaskCanceled")
_TRACEBACK_MAX = 20_000  # characters of a failure's traceback kept in the log
_START, _END, _FINISH_K = (_core.EVENT_KINDS.index(k) for k in ("start", "end", "finish"))
_SETTLE_S = 0.1


# -- the per-engine recorder ---------------------------------------------------------------------------

class _Hub:
    """The one ``_core.Recorder`` of an engine and the subscribers it delivers batches to."""

    def __init__(self, engine: Any) -> None:
        # No reference to the Engine object: a logged engine that is dropped can still go.
        self.anchor = (_core.monotonic_ns(), _core.wall_time_ns())
        self.recorder = _core.Recorder(engine._capsule)
        self.subscribers: list = []
        # Bodies that run elsewhere (an executor=, an async def body on an event loop): the runner
        # appends ("ship", t, id, where, attempt) as it hands a body over and ("return", t, id,
        # where, attempt, outcome, shipped_t) as its outcome comes back (elsewhere_log()). A deque:
        # appends from any thread while a flush pops.
        self.elsewhere: collections.deque = collections.deque()

    def flush(self) -> None:
        """Drains what was recorded and hands it to every subscriber. Caller holds _hubs_lock."""
        events = self.recorder.drain()
        outcomes = self.recorder.outcomes()
        contexts = self.recorder.contexts()
        pop = self.elsewhere.popleft
        elsewhere = [pop() for _ in range(len(self.elsewhere))]
        if contexts:  # first: a root's context comes with or before its submit event
            for s in list(self.subscribers):
                if hasattr(s, "contexts"):
                    s.contexts(contexts)
        if elsewhere:
            for s in list(self.subscribers):
                if hasattr(s, "elsewhere"):
                    s.elsewhere(elsewhere)
        if events or outcomes:
            for s in list(self.subscribers):
                s.deliver(events, outcomes)


_hubs: dict = {}  # id(engine) -> _Hub
_hubs_lock = threading.RLock()


def elsewhere_log(engine: Any) -> collections.deque | None:
    """Where a runner appends its ship and return records for ``engine`` (see _Hub.elsewhere), or
    None when nothing records the engine. Callers test ``_hubs`` first: empty, nothing records."""
    hub = _hubs.get(id(engine))
    return hub.elsewhere if hub is not None else None


def subscribe(engine: Any, subscriber: Any) -> _Hub:
    """Starts delivering ``engine``'s events to ``subscriber.deliver(events, outcomes)``."""
    if engine._capsule is None:
        from ._errors import ShutdownError

        raise ShutdownError("this engine was created before fork() in the parent process: nothing to record")
    with _hubs_lock:
        hub = _hubs.get(id(engine))
        if hub is None:
            hub = _hubs[id(engine)] = _Hub(engine)
        else:
            hub.flush()  # what happened before this subscriber came is not its business
        if hasattr(subscriber, "contexts"):
            hub.recorder.capture_contexts()  # roots' submitting contexts (OpenTelemetry parents)
        hub.subscribers.append(subscriber)
        return hub


def unsubscribe(engine: Any, subscriber: Any) -> None:
    """Delivers everything recorded so far, then stops delivering to ``subscriber``."""
    unsubscribe_key(id(engine), subscriber)


def unsubscribe_key(key: int, subscriber: Any) -> None:
    """unsubscribe() for an engine known by id() only (its Engine object may be gone)."""
    with _hubs_lock:
        hub = _hubs.get(key)
        if hub is None or subscriber not in hub.subscribers:
            return
        if len(hub.subscribers) == 1:
            hub.recorder.close()  # stop first (waits out events in flight), then the last drain
            hub.flush()
            del _hubs[key]
        else:
            hub.flush()
        hub.subscribers.remove(subscriber)


def flush(engine: Any) -> None:
    """Delivers what ``engine`` recorded so far to its subscribers (a periodic drainer calls it)."""
    with _hubs_lock:
        hub = _hubs.get(id(engine))
        if hub is not None:
            hub.flush()


# -- live subscribers: delivered every _LIVE_PERIOD_S by one drainer thread -----------------------------

_LIVE_PERIOD_S = 0.05
_live: dict = {}  # (id(engine), id(subscriber)) -> (weakref to the engine, subscriber)
_live_lock = threading.Lock()
_live_thread: threading.Thread | None = None


def live_subscribe(engine: Any, subscriber: Any) -> None:
    """subscribe(), plus a delivery every _LIVE_PERIOD_S while the engine runs (execution logging,
    OpenTelemetry), until live_unsubscribe() or the engine's shutdown (engine_stopped)."""
    global _live_thread
    with _live_lock:
        key = (id(engine), id(subscriber))
        if key in _live:
            return
        subscribe(engine, subscriber)
        _live[key] = (weakref.ref(engine), subscriber)
        if _live_thread is None or not _live_thread.is_alive():
            _live_thread = threading.Thread(target=_live_loop, name="distaff-observe", daemon=True)
            _live_thread.start()


def live_unsubscribe(engine_key: int, subscriber: Any) -> None:
    with _live_lock:
        found = _live.pop((engine_key, id(subscriber)), None)
    if found is not None:
        unsubscribe_key(engine_key, subscriber)


def engine_stopped(engine: Any) -> None:
    """The engine is shut down (joined): deliver what is left to its live subscribers, drop them."""
    with _live_lock:
        subs = [sub for (ekey, _s), (_r, sub) in _live.items() if ekey == id(engine)]
    for sub in subs:
        live_unsubscribe(id(engine), sub)


def _live_loop() -> None:
    global _live_thread
    while True:
        with _quiet.idle():
            time.sleep(_LIVE_PERIOD_S)
        with _live_lock:
            if not _live:
                _live_thread = None
                return
            entries = list(_live.items())
        flushed = set()
        for (ekey, _skey), (ref, sub) in entries:
            eng = ref()
            try:
                if eng is None or eng._joined:  # dropped, or shut down: what is left, then stop
                    live_unsubscribe(ekey, sub)
                elif ekey not in flushed:
                    flushed.add(ekey)
                    flush(eng)
            except Exception:  # a failing subscriber must not stop the others
                import logging

                logging.getLogger("distaff").exception("distaff: delivering recorded events failed")


# -- raw events to JSONL event dicts ------------------------------------------------------------------

_iso_cache: dict = {}


def _iso(wall_ns: int) -> str:
    """ISO 8601 UTC with microseconds; the seconds part is cached (events come in bursts)."""
    sec = wall_ns // 1_000_000_000
    head = _iso_cache.get(sec)
    if head is None:
        if len(_iso_cache) > 4096:
            _iso_cache.clear()
        import datetime as _dt  # on first use (0.4 MiB of RSS at import)

        head = _iso_cache[sec] = _dt.datetime.fromtimestamp(sec, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{head}.{(wall_ns // 1000) % 1_000_000:06d}Z"


def _error_text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = "(str() failed)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_LINKS = {
    "cause": "\nThe above exception was the direct cause of the following exception:\n\n",
    "context": "\nDuring handling of the above exception, another exception occurred:\n\n",
}


def _traceback_text(exc: BaseException, chain: Any = None) -> str:
    """The traceback text of a failure as it was when the execution failed: ``chain`` is the
    recorder's snapshot ``((exception, traceback, link), ...)`` from ``exc`` down its chain, taken
    at completion, since the objects change afterwards (a caller's ``result()`` re-raises the same
    exception, which adds its frames and may give it a context)."""
    try:
        if isinstance(chain, tuple) and chain:
            parts = []
            for e, tb, link in reversed(chain):
                if link:
                    parts.append(_LINKS[link])
                parts.extend(traceback.format_exception(type(e), e, tb, chain=False))
            text = "".join(parts)
        else:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        text = _error_text(exc)
    return text if len(text) <= _TRACEBACK_MAX else text[:_TRACEBACK_MAX] + "\n... (cut)\n"


class Converter:
    """Turns drained batches into JSONL event dicts, remembering each execution's identity (name,
    workflow, parent) from its submit so every later event carries it."""

    def __init__(self, anchor: tuple, lookup: Any = None) -> None:
        self.mono0, self.wall0 = anchor
        self.info: dict = {}  # id -> (name, kind, workflow_id, parent_id)
        self.lookup = lookup  # id -> (name, kind, workflow_id, parent_id) | None, for executions submitted earlier
        # Outcomes by id, kept across batches: a drain can take an outcome (appended by complete()
        # with the GIL) one batch before the finish event it belongs to (recorded by a worker while
        # the drain ran without the GIL); never the other way round.
        self.extra: dict = {}
        # The exception of each failure converted, for a consumer that wants the object (OTel);
        # only kept when keep_exceptions is set, and the consumer pops them.
        self.keep_exceptions = False
        self.exceptions: dict = {}

    def _who(self, id_: int) -> tuple:
        who = self.info.get(id_)
        if who is None:
            who = (self.lookup(id_) if self.lookup else None) or (None, None, None, None)
            self.info[id_] = who
        return who

    def convert(self, events: Iterable, outcomes: Iterable, elsewhere: Iterable = ()) -> list:
        extra = self.extra  # id -> (id, exc, attempts)
        for o in outcomes:
            extra[o[0]] = o
        kinds = _core.EVENT_KINDS
        out = []
        append = out.append
        wall_off = self.wall0 - self.mono0
        for kind, t, worker, id_, detail in events:
            k = kinds[kind]
            base = {"event": None, "id": id_, "name": None, "kind": None, "workflow_id": None, "parent_id": None,
                    "worker": worker if worker >= 0 else None, "timestamp": _iso(t + wall_off), "mono_ns": t}
            if k == "submit":
                name, ekind, parent, deps, wf, state = detail
                self.info[id_] = (name, ekind, wf, parent or None)
                base.update(event="TaskCreated", name=name, kind=ekind, workflow_id=wf, parent_id=parent or None,
                            dependencies=list(deps))
                append(base)
                if state == "pending":  # nothing gates it: queued as it is created
                    q = dict(base, event="TaskQueued")
                    del q["dependencies"]
                    append(q)
                continue
            name, ekind, wf, parent = self._who(id_)
            base.update(name=name, kind=ekind, workflow_id=wf, parent_id=parent)
            if k == "finish":
                base["event"] = _FINISH[detail]
                base["state"] = detail
                row = extra.pop(id_, None)
                attempts = row[2] if row else None
                base["attempts"] = attempts
                if row is not None and row[1] is not None:
                    base["error"] = _error_text(row[1])
                    base["traceback"] = _traceback_text(row[1], row[3])
                    if self.keep_exceptions:
                        self.exceptions[id_] = row[1]
            else:
                base["event"] = _NAMES[k]
                if k == "suspend":
                    base["blocked_on"] = detail or None
            append(base)
        if elsewhere:
            n = len(out)
            for rec in elsewhere:
                k, t, id_, where, attempt = rec[:5]
                name, ekind, wf, parent = self._who(id_)
                e = {"event": "TaskShipped" if k == "ship" else "TaskReturned", "id": id_, "name": name,
                     "kind": ekind, "workflow_id": wf, "parent_id": parent, "worker": None,
                     "timestamp": _iso(t + wall_off), "mono_ns": t, "executor": where, "attempt": attempt}
                if k == "return":
                    e["outcome"] = rec[5]
                    e["shipped_mono_ns"] = rec[6]
                append(e)
            if len(out) > n:
                # Two runs, each in time order (the runner's records come from several threads:
                # sorted first): the sort merges them.
                out[n:] = sorted(out[n:], key=_mono)
                out.sort(key=_mono)
        return out


# The event names this version knows (what executions() folds; others are ignored).
_EXECUTION_EVENTS = frozenset(("TaskCreated", "TaskQueued", "TaskStarted", "TaskSuspended", "TaskResumed",
                               "TaskBodyEnded", "TaskShipped", "TaskReturned", "TaskCompleted", "TaskFailed",
                               "TaskCanceled"))


def recording_end(events: list, end: int | None = None) -> int | None:
    """When the recording stopped: ``end`` when known (a trace writing its own files), else (a log
    converted later) its last event's time."""
    times = [e["mono_ns"] for e in events if e["event"] in _EXECUTION_EVENTS]
    if end is not None:
        times.append(end)
    return max(times, default=None)


def _mono(e: dict) -> int:
    return e["mono_ns"]


def _history_lookup(engine: Any) -> Any:
    """id -> identity from the engine's history, for executions submitted before recording began."""
    table: dict | None = None
    ref = weakref.ref(engine)

    def lookup(id_: int) -> tuple | None:
        nonlocal table
        if table is None:
            table = {}
            eng = ref()
            try:
                for (i, name, kind, parent, _deps, _st, _s, _b, _f, wid, _err) in eng._core.history():
                    table[i] = (name, kind, wid, parent or None)
            except Exception:
                pass
        return table.get(id_)

    return lookup


# -- the trace context manager ------------------------------------------------------------------------

def _check_path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"trace() needs a file path (str or os.PathLike), not {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"trace() writes .json (Chrome trace / Perfetto), .jsonl (event log) or .html (report); "
                         f"got {path!r}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"trace(): the directory {parent!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "trace() writes a file, and this path is a directory", path)
    # Tried for real (access() says yes to root on a read-only mount such as /sys): a file that
    # cannot be written fails here, at the call, not after the work at the block's exit.
    probe = _tmp_name(path)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:
        raise type(e)(e.errno, f"trace() cannot write here: {e.strerror}", path) from None
    try:
        os.unlink(probe)
    except OSError:
        pass
    return path


class Trace:
    """Records everything an engine does inside the block and writes ``path`` when the block exits
    (also when it exits by an exception, a failed workflow or Ctrl-C). The suffix picks the format:
    ``.json`` (Chrome Trace Event Format: Perfetto, chrome://tracing), ``.jsonl`` (one event per
    line) or ``.html`` (a self-contained report). After the block, ``events`` holds the event dicts.
    Not reentrant; nesting traces (on one engine or several) is fine."""

    def __init__(self, path: Any, engine: Any) -> None:
        self.path = _check_path(path)
        self.engine = engine
        self.events: list = []
        self._raw: list = []
        self._outcomes: list = []
        self._elsewhere: list = []
        self._hub: _Hub | None = None
        self._active = False
        self._running: set = set()
        self._finished: set = set()
        self._stopped_ns: int | None = None

    def deliver(self, events: list, outcomes: list) -> None:
        self._raw.extend(events)
        self._outcomes.extend(outcomes)
        # Bodies that finished their execution but whose fiber has not ended yet (the `end` comes
        # right after the body returns, on its worker): see _settle.
        for kind, _t, _w, id_, _d in events:
            if kind == _START:
                self._running.add(id_)
            elif kind == _END:
                self._running.discard(id_)
                self._finished.discard(id_)
            elif kind == _FINISH_K and id_ in self._running:
                self._finished.add(id_)

    def elsewhere(self, records: list) -> None:
        self._elsewhere.extend(records)

    def _settle(self) -> None:
        """Waits a little (at most _SETTLE_S) for the bodies whose execution finished to return, so
        the block that waited for a result records the end of the body that produced it too."""
        deadline = time.monotonic() + _SETTLE_S
        while True:
            flush(self.engine)
            if not self._finished or time.monotonic() >= deadline:
                return
            _core.sleep(0.0005)  # in a body, suspends only its fiber: the others can end meanwhile

    def __enter__(self) -> "Trace":
        if self._active:
            raise RuntimeError("this trace is already recording")
        self._hub = subscribe(self.engine, self)
        self._active = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._stop():
            self._write(exc_info[1])

    def _stop(self) -> bool:
        """Stops recording (settling the bodies that are ending); False if it was not recording."""
        if not self._active:
            return False
        self._active = False
        try:
            self._settle()
        finally:
            # The end of the recording in the .json and .html: a body still running or elsewhere
            # runs to it (the .jsonl has no line for it: converted later, a log ends at its last event).
            self._stopped_ns = _core.monotonic_ns()
            unsubscribe(self.engine, self)
        return True

    def _write(self, error: BaseException | None) -> None:
        """Converts what was recorded into ``events`` and writes the file."""
        conv = Converter(self._hub.anchor, _history_lookup(self.engine))
        self.events = conv.convert(self._raw, self._outcomes, self._elsewhere)
        self._raw, self._outcomes, self._elsewhere = [], [], []
        try:
            write(self.events, self.path, self._stopped_ns)
        except Exception as e:
            if error is None:
                raise
            # The block's own exception goes on (what the program is about); the trace's failure is
            # told beside it, not instead of it.
            note = f"distaff: trace() could not write {self.path!r}: {_error_text(e)}"
            try:
                error.add_note(note)
            except Exception:
                pass
            warnings.warn(note, RuntimeWarning, stacklevel=3)

    async def __aenter__(self) -> "Trace":
        return self.__enter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        # Converting and writing a big trace takes seconds: off the loop, so its other tasks go on.
        if self._stop():
            import asyncio

            await asyncio.to_thread(self._write, exc_info[1])


# -- writers ------------------------------------------------------------------------------------------

def write(events: list, path: str, end: int | None = None) -> None:
    """Writes ``events`` (JSONL event dicts) to ``path`` in the format its suffix names."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"unknown trace format {suffix!r}: use one of {', '.join(FORMATS)}")
    # A name of its own per writer (two traces of one path at once each write whole files, the
    # last one replacing the other), created exclusively, removed on any failure (Ctrl-C too).
    tmp = _tmp_name(path)
    try:
        f = open(tmp, "x", encoding="utf-8")
    except OSError as e:
        raise type(e)(e.errno, e.strerror, path) from None  # the user's path, not the temporary one
    try:
        with f:
            if suffix == ".jsonl":
                dumps = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":")).encode
                f.writelines(dumps(e) + "\n" for e in events)
            elif suffix == ".json":
                json.dump(chrome_trace(events, end), f, ensure_ascii=False, default=str)
            else:
                from . import _report

                f.write(_report.render(events, end=end))
        os.replace(tmp, path)  # a reader never sees half a file
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename == tmp:
            raise type(e)(e.errno, e.strerror, path) from None
        raise


_tmp_serial = itertools.count()


def _tmp_name(path: str) -> str:
    """A temporary name beside ``path`` that no other writer (thread, process) uses."""
    return f"{path}.tmp-{os.getpid()}-{threading.get_ident()}-{next(_tmp_serial)}"


def read_jsonl(path: str) -> list:
    """The event dicts of a ``.jsonl`` event log (a last line cut short by a crash is skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError as exc:
                if not raw.endswith("\n") and out:
                    break  # the last line, cut short (the writer died mid-line): skipped
                raise ValueError(f"{path}:{n}: not a JSON event line ({exc.msg} at column {exc.colno})") from None
            except RecursionError:  # nested deeper than the parser goes: no event is
                raise ValueError(f"{path}:{n}: not a distaff event (JSON nested too deeply)") from None
            if isinstance(e, dict) and "traceEvents" in e:
                raise ValueError(f"{path}:{n}: a Chrome trace (the .json a trace writes), not the event log: "
                                 "convert the .jsonl one")
            if not isinstance(e, dict) or "event" not in e or "id" not in e or "mono_ns" not in e:
                raise ValueError(f"{path}:{n}: not a distaff event (needs 'event', 'id' and 'mono_ns')")
            for key, ok, what in _FIELDS:
                v = e.get(key)
                if (v is not None or key in _REQUIRED) and not ok(v):
                    raise ValueError(f"{path}:{n}: {key!r} must be {what}, not {json.dumps(v)[:40]}")
            out.append(e)
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


# What each field of an event line must be when present (None/null is "absent"); an event name this
# version does not know is kept and ignored, so a newer log still converts.
_REQUIRED = ("event", "id", "mono_ns")
_FIELDS = (
    ("event", _is_str, "an event name"),
    ("id", _is_int, "an execution id (an integer)"),
    ("mono_ns", _is_int, "a monotonic time in integer nanoseconds"),
    ("shipped_mono_ns", _is_int, "a monotonic time in integer nanoseconds"),
    ("worker", _is_int, "a worker index (an integer)"),
    ("parent_id", _is_int, "an execution id (an integer)"),
    ("dependencies", lambda v: isinstance(v, list) and all(map(_is_int, v)), "a list of execution ids"),
    ("attempts", _is_int, "an integer"),
    ("attempt", _is_int, "an integer"),
    ("timestamp", _is_str, "an ISO 8601 time"),
    ("name", _is_str, "a string"),
    ("kind", _is_str, "a string"),
    ("workflow_id", _is_str, "a string"),
    ("state", _is_str, "a string"),
    ("error", _is_str, "a string"),
    ("traceback", _is_str, "a string"),
    ("executor", _is_str, "a string"),
    ("outcome", _is_str, "a string"),
    ("blocked_on", _is_int, "an execution id (an integer)"),
)


# -- the execution model both the Chrome trace and the report are built from --------------------------

def executions(events: list, end: int | None = None) -> tuple[list, int]:
    """Folds events into one dict per execution: identity, state, error, times (ns, monotonic), the
    intervals it ran ``[(worker, start, end)]``, the intervals its body spent elsewhere
    ``remote: [(where, shipped, returned, attempt, outcome)]`` (an executor, an event loop; outcome
    None: not back when the recording stopped), the time it was submitted and on which worker.
    Returns (executions in id order, the earliest timestamp)."""
    exs: dict = {}
    events = [e for e in events if e["event"] in _EXECUTION_EVENTS]  # an unknown name is ignored
    t0 = min((e.get("shipped_mono_ns") or e["mono_ns"] for e in events), default=0)
    for e in events:
        id_ = e["id"]
        x = exs.get(id_)
        if x is None:
            x = exs[id_] = {"id": id_, "name": e.get("name"), "kind": e.get("kind"), "workflow_id": e.get("workflow_id"),
                            "parent_id": e.get("parent_id"), "dependencies": [], "state": "running",
                            "attempts": None, "error": None, "traceback": None, "submitted": None,
                            "submit_worker": None, "started": None, "finished": None, "slices": [],
                            "remote": [], "_open": None, "_away": None}
        ev, t, w = e["event"], e["mono_ns"], e.get("worker")
        if ev == "TaskCreated":
            x["submitted"] = t
            x["submit_worker"] = w
            x["dependencies"] = e.get("dependencies") or []
            x["state"] = "pending"
        elif ev in ("TaskStarted", "TaskResumed"):
            if ev == "TaskStarted":
                x["started"] = t
                x["state"] = "running"
            x["_open"] = (w, t)
        elif ev in ("TaskSuspended", "TaskBodyEnded"):
            if x["_open"] is not None:
                ow, ot = x["_open"]
                x["slices"].append((ow, ot, t))
                x["_open"] = None
        elif ev == "TaskShipped":
            if x["_away"] is None:
                x["_away"] = {}
            x["_away"][e.get("attempt")] = (e.get("executor"), t)
        elif ev == "TaskReturned":
            away = x["_away"].pop(e.get("attempt"), None) if x["_away"] else None
            shipped = e.get("shipped_mono_ns")
            if shipped is None:
                shipped = away[1] if away else t
            x["remote"].append((e.get("executor"), shipped, t, e.get("attempt"), e.get("outcome")))
        elif ev in ("TaskCompleted", "TaskFailed", "TaskCanceled"):
            x["finished"] = t
            x["state"] = e.get("state") or {"TaskCompleted": "succeeded", "TaskFailed": "failed"}.get(ev, "cancelled")
            x["attempts"] = e.get("attempts")
            x["error"] = e.get("error")
            x["traceback"] = e.get("traceback")
    end = recording_end(events, end) or 0
    for x in exs.values():
        if x["_open"] is not None:  # still running when the recording stopped
            ow, ot = x["_open"]
            x["slices"].append((ow, ot, max(end, ot)))
        if x["_away"]:  # still elsewhere when the recording stopped
            for attempt, (where, ts) in x["_away"].items():
                x["remote"].append((where, ts, max(end, ts), attempt, None))
        if x["remote"]:
            x["remote"].sort(key=lambda r: r[1])
        del x["_open"], x["_away"]
    return [exs[k] for k in sorted(exs)], t0


def remote_tracks(exs: list) -> tuple[list, dict]:
    """Lays the intervals bodies spent elsewhere out on tracks: per place (``executor processes``,
    ``asyncio loop (MainThread)``...), as many tracks as it had bodies away at once, none of whose
    intervals overlap (a track is a thread in the Chrome trace, whose slices must nest). Returns
    (track names, {(execution id, index in its ``remote``): track index})."""
    by_place: dict = {}
    for x in exs:
        for i, r in enumerate(x["remote"]):
            by_place.setdefault(r[0] or "elsewhere", []).append((r[1], r[2], x["id"], i))
    names: list = []
    where: dict = {}
    for place in sorted(by_place):
        lanes: list = []  # [end of the last interval, track index]
        for a, b, id_, i in sorted(by_place[place]):
            for lane in lanes:
                if lane[0] <= a:
                    break
            else:
                lane = [0, len(names)]
                lanes.append(lane)
                names.append(place if len(lanes) == 1 else f"{place} \u00b7 {len(lanes)}")
            lane[0] = b
            where[(id_, i)] = lane[1]
    return names, where


_REMOTE_TID = 1_000_000  # the first executor track's tid (workers are 1.., other threads 0)


def chrome_trace(events: list, end: int | None = None) -> dict:
    """The Chrome Trace Event Format (JSON object form): one track per worker (and one for the
    other threads), a slice per interval an execution ran, tracks per executor (and event loop) with
    a slice per interval a body spent there, flow arrows parent→child, dependency→dependent and
    worker→executor, an instant for executions that never ran."""
    exs, t0 = executions(events, end)
    by_id = {x["id"]: x for x in exs}

    def us(t: int) -> float:
        return (t - t0) / 1000.0

    def tid(w: Any) -> int:
        return 0 if w is None else int(w) + 1

    out: list = [{"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "distaff engine"}},
                 {"ph": "M", "name": "thread_name", "pid": 1, "tid": 0, "args": {"name": "other threads"}},
                 {"ph": "M", "name": "thread_sort_index", "pid": 1, "tid": 0, "args": {"sort_index": -1}}]
    workers = sorted({s[0] for x in exs for s in x["slices"] if s[0] is not None})
    for w in workers:
        out.append({"ph": "M", "name": "thread_name", "pid": 1, "tid": tid(w), "args": {"name": f"worker {w}"}})
        out.append({"ph": "M", "name": "thread_sort_index", "pid": 1, "tid": tid(w), "args": {"sort_index": w}})
    tracks, track_of = remote_tracks(exs)
    for k, name in enumerate(tracks):
        out.append({"ph": "M", "name": "thread_name", "pid": 1, "tid": _REMOTE_TID + k, "args": {"name": name}})
        out.append({"ph": "M", "name": "thread_sort_index", "pid": 1, "tid": _REMOTE_TID + k,
                    "args": {"sort_index": _REMOTE_TID + k}})
    # Every slice of an execution, local or elsewhere, as (tid, start, end): for the arrows.
    spans: dict = {}
    for x in exs:
        args = {"id": x["id"], "name": x["name"], "kind": x["kind"], "workflow_id": x["workflow_id"],
                "parent_id": x["parent_id"], "state": x["state"], "attempts": x["attempts"], "error": x["error"]}
        label = x["name"] or f"execution {x['id']}"
        n = len(x["slices"])
        sp = spans[x["id"]] = []
        for i, (w, a, b) in enumerate(x["slices"]):
            sl_args = args if n == 1 else dict(args, interval=f"{i + 1}/{n}")
            out.append({"ph": "X", "name": label, "cat": x["kind"] or "execution", "pid": 1, "tid": tid(w),
                        "ts": us(a), "dur": max(us(b) - us(a), 0.001), "args": sl_args})
            sp.append((tid(w), a, b))
        for i, (where, a, b, attempt, outcome) in enumerate(x["remote"]):
            t = _REMOTE_TID + track_of[(x["id"], i)]
            out.append({"ph": "X", "name": label, "cat": "elsewhere", "pid": 1, "tid": t, "ts": us(a),
                        "dur": max(us(b) - us(a), 0.001),
                        "args": dict(args, executor=where, attempt=attempt, outcome=outcome or "not back")})
            sp.append((t, a, b))
        sp.sort(key=lambda s: s[1])
        if not x["slices"] and not x["remote"] and x["finished"] is not None:
            out.append({"ph": "i", "s": "t", "name": f"{label} ({x['state']}, never ran)", "cat": x["kind"] or "execution",
                        "pid": 1, "tid": 0, "ts": us(x["finished"]), "args": args})
    flow = 0

    def arrow(kind: str, src_tid: int, src_ts: float, dst_tid: int, dst_ts: float) -> None:
        nonlocal flow
        flow += 1
        out.append({"ph": "s", "id": flow, "name": kind, "cat": kind, "pid": 1, "tid": src_tid, "ts": src_ts})
        out.append({"ph": "f", "bp": "e", "id": flow, "name": kind, "cat": kind, "pid": 1, "tid": dst_tid, "ts": dst_ts})

    for x in exs:
        sp = spans[x["id"]]
        if not sp:
            continue
        first_tid, first_a, _ = sp[0]
        parent = by_id.get(x["parent_id"])
        if parent is not None and x["submitted"] is not None:
            if x["submit_worker"] is not None:
                arrow("parent", tid(x["submit_worker"]), us(x["submitted"]), first_tid, us(first_a))
            else:  # submitted by a body elsewhere (an async def body on a loop): from that slice
                t = x["submitted"]
                src = next((s for s in spans[parent["id"]] if s[0] >= _REMOTE_TID and s[1] <= t <= s[2]), None)
                if src is not None:
                    arrow("parent", src[0], us(t), first_tid, us(first_a))
        for d in x["dependencies"]:
            dep = by_id.get(d)
            if dep is not None and spans[dep["id"]]:
                t, a, b = max(spans[dep["id"]], key=lambda s: s[2])
                arrow("dependency", t, max(us(a), us(b) - 0.001), first_tid, us(first_a))
        if x["remote"] and x["slices"]:
            # worker -> executor: from the slice that handed the body over (or the last one before
            # it was shipped) to its first interval elsewhere
            w, a, b = x["slices"][0]
            for s in x["slices"]:
                if s[1] <= x["remote"][0][1]:
                    w, a, b = s
            ship = x["remote"][0][1]  # remote is in time order
            arrow("ship", tid(w), us(min(max(ship, a), b)), _REMOTE_TID + track_of[(x["id"], 0)], us(ship))
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"producer": "distaff", "executions": len(exs)}}
