"""DEBUG records on the logger ``distaff.executions``, one per state change of every execution.

Built on the observer seam like the traces (``_trace._Hub``): when an engine starts while that
logger is enabled for DEBUG, the engine is observed, and one drainer thread per process turns the
recorded events into log records every 50 ms (``_trace.live_subscribe``; never one Python call per
event on the workers). Each record has, besides the message, ``execution_id``, ``task_name``, ``workflow_id``,
``parent_id``, ``state``, ``event`` and ``worker`` attributes (``extra``), and the time of the
state change as its ``created`` time.
"""

from __future__ import annotations

import logging
import sys
import weakref
from typing import Any

from . import _core, _trace

logger = logging.getLogger("distaff.executions")
# The state changes: TaskCreated is pending (or waiting for dependencies), TaskQueued ready,
# TaskStarted running, then the terminal event. Suspensions leave the state `running`.
_LOGGED = {"TaskCreated", "TaskQueued", "TaskStarted", "TaskCompleted", "TaskFailed", "TaskCanceled"}
_STATE = {"TaskCreated": "pending", "TaskQueued": "queued", "TaskStarted": "running"}


class _Subscriber:
    def __init__(self, engine: Any) -> None:
        self.engine = weakref.ref(engine)
        self.key = id(engine)
        self.conv: _trace.Converter | None = None
        self.lookup = _trace._history_lookup(engine)

    def deliver(self, events: list, outcomes: list) -> None:
        if self.conv is None:
            self.conv = _trace.Converter(_trace._hubs[self.key].anchor, self.lookup)
        failed = False
        for e in self.conv.convert(events, outcomes):
            ev = e["event"]
            if ev not in _LOGGED:
                continue
            try:
                _emit(e, _STATE.get(ev) or e.get("state"))
            except Exception:  # noqa: BLE001 - a user's filter or handler raised: the next records still go out
                if not failed:  # said once per batch, as logging's handleError says a handler's error
                    failed = True
                    import traceback

                    sys.stderr.write("distaff: a filter or handler of the distaff.executions logger raised "
                                     "(the other records are still logged):\n")
                    traceback.print_exc(file=sys.stderr)


def _emit(e: dict, state: str) -> None:
    if e["event"] == "TaskCreated" and e.get("dependencies"):
        state = "waiting"
    msg = "execution %d (%s) %s"
    args: tuple = (e["id"], e["name"], state)
    if e.get("workflow_id"):
        msg += " [workflow %s]"
        args += (e["workflow_id"],)
    if e.get("error"):
        msg += ": %s"
        args += (e["error"],)
    record = logger.makeRecord(
        logger.name, logging.DEBUG, __file__, 0, msg, args, None, func=None,
        extra={"execution_id": e["id"], "task_name": e["name"], "workflow_id": e.get("workflow_id"),
               "parent_id": e.get("parent_id"), "state": state, "event": e["event"], "worker": e.get("worker")})
    # The record's time is the state change's, not the drain's.
    wall = _mono_to_wall(e["mono_ns"])
    record.created = wall
    record.msecs = (wall - int(wall)) * 1000
    record.relativeCreated = (wall - logging._startTime) * 1000
    logger.handle(record)


_offset: int | None = None


def _mono_to_wall(mono_ns: int) -> float:
    global _offset
    if _offset is None:
        _offset = _core.wall_time_ns() - _core.monotonic_ns()
    return (mono_ns + _offset) / 1e9


def engine_started(engine: Any) -> None:
    """Called by Engine(): observes it when ``distaff.executions`` is enabled for DEBUG now."""
    if logger.isEnabledFor(logging.DEBUG):
        _trace.live_subscribe(engine, _Subscriber(engine))
