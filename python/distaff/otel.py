"""OpenTelemetry spans for executions: ``distaff.otel.instrument()`` (docs/observability.md).

Needs ``opentelemetry-api`` (``pip install distaff[otel]``) and an SDK or another API
implementation to export the spans. Built on the observer seam: the engine's workers record events
in C++, and one drainer thread turns them into spans every 50 ms, with the times the events
happened — never a Python call per event on the workers.

One span per execution, from its submission to its terminal state, named after the task:

- its parent is the span of the execution whose body submitted it, so traces nest like the calls;
  a root execution's parent is the span that was active where it was submitted (the caller's);
- attributes ``distaff.execution.id``, ``distaff.workflow_id``, ``distaff.task.name``,
  ``distaff.task.kind``, ``distaff.attempts``, ``distaff.state``;
- status ERROR, with the exception recorded, when it failed; a cancelled execution keeps status
  UNSET and has ``distaff.state`` = ``cancelled``.
"""

from __future__ import annotations

import threading
from typing import Any

from . import _trace

__all__ = ["instrument", "Instrumentation"]


def instrument(tracer_provider: Any = None, engine: Any = None) -> "Instrumentation":
    """Emits a span per execution of ``engine`` (default: the engine module-level tasks use here)
    through ``tracer_provider`` (default: the global one). Returns a handle whose
    ``uninstrument()`` stops it (what was recorded until then is still exported)."""
    try:
        from opentelemetry import trace as ot_trace
    except ImportError:
        raise ImportError("distaff.otel needs opentelemetry-api: pip install 'distaff[otel]'") from None
    if engine is None:
        from . import default_engine

        engine = default_engine()
    else:
        from ._engine import Engine

        if not isinstance(engine, Engine):
            raise TypeError(f"instrument() engine must be a distaff.Engine, not {type(engine).__name__}")
    if tracer_provider is not None and not callable(getattr(tracer_provider, "get_tracer", None)):
        raise TypeError(
            f"instrument() tracer_provider must be an OpenTelemetry TracerProvider (or None: the global one), "
            f"not {type(tracer_provider).__name__}"
        )
    with _instrumented_lock:
        current = _instrumented.get(id(engine))
        if current is not None and current.active:
            raise RuntimeError(
                "this engine is instrumented already (each execution would get two spans): "
                "call uninstrument() on the first handle before instrumenting it again"
            )
        tracer = (tracer_provider or ot_trace.get_tracer_provider()).get_tracer("distaff")
        inst = Instrumentation(engine, tracer)
        _instrumented[id(engine)] = inst
    _trace.live_subscribe(engine, inst)
    _exit_before_the_sdk()
    return inst


_exit_hook_registered = False


def _exit_before_the_sdk() -> None:
    """The SDK's TracerProvider shuts down (flushing its exporters) in an atexit hook it registers
    when it is created, usually after ``import distaff``; atexit hooks run last-registered first, so
    it ran before distaff's exit wait, and the spans of executions that ended in the last drain
    interval, or during the exit wait, were dropped ("Processor is already shutdown"). The first
    ``instrument()`` registers distaff's exit wait again, after the provider's hook, so that it runs
    first; the later run of the same hook finds nothing left to do.

    A provider created after ``instrument()`` registers its hook later still; so once more, as the
    interpreter begins to exit (threading's exit hooks run once the main thread's code is done and
    before any atexit hook), the exit wait is registered again: last, so first."""
    global _exit_hook_registered
    if _exit_hook_registered:
        return
    import atexit

    from . import _engine

    atexit.register(_engine._shutdown_at_exit)
    register_early = getattr(threading, "_register_atexit", None)  # CPython 3.9+ (concurrent.futures uses it)
    if register_early is not None:
        try:
            register_early(atexit.register, _engine._shutdown_at_exit)
        except RuntimeError:  # the interpreter is exiting already
            pass
    _exit_hook_registered = True


_instrumented: dict = {}  # id(engine) -> its Instrumentation (the active one, or the last one)
_instrumented_lock = threading.Lock()


class Instrumentation:
    """The handle ``instrument()`` returns."""

    def __init__(self, engine: Any, tracer: Any) -> None:
        from opentelemetry import context as ot_context
        from opentelemetry import trace as ot_trace
        from opentelemetry.trace import Status, StatusCode

        self._ot_trace, self._ot_context = ot_trace, ot_context
        self._error = lambda text: Status(StatusCode.ERROR, text)
        self._engine_key = id(engine)
        self._tracer = tracer
        # The anchor (monotonic and wall time at the same instant) is the hub's, known once
        # live_subscribe() created it: set at the first delivery.
        self._conv = _trace.Converter((0, 0), _trace._history_lookup(engine))
        self._conv.keep_exceptions = True
        self._anchor_set = False
        self._spans: dict = {}     # id -> open span
        self._parents: dict = {}   # id -> Context the root's span is parented on
        self._ended: dict = {}     # id -> span context of an ended span (children submitted late)
        self._ran: set = set()     # ids whose body started (their span is open)
        self.active = True

    # -- from the hub -------------------------------------------------------------------------
    def contexts(self, rows: list) -> None:
        get = self._ot_context.get_current
        for id_, ctx in rows:
            try:
                self._parents[id_] = ctx.run(get)
            except RuntimeError:
                # The context is entered: the root's body runs in it right now (on a fiber or a
                # loop). A copy holds the same values and can be entered here.
                self._parents[id_] = ctx.copy().run(get)

    def deliver(self, events: list, outcomes: list) -> None:
        if not self._anchor_set:
            self._conv.mono0, self._conv.wall0 = _trace._hubs[self._engine_key].anchor
            self._anchor_set = True
        for e in self._conv.convert(events, outcomes):
            ev, id_ = e["event"], e["id"]
            wall_ns = e["mono_ns"] + self._conv.wall0 - self._conv.mono0
            if ev == "TaskCreated":
                self._open(e, wall_ns)
            elif ev == "TaskStarted":
                self._ran.add(id_)
            elif ev in ("TaskCompleted", "TaskFailed", "TaskCanceled"):
                span = self._spans.pop(id_, None)
                if span is None:  # submitted before instrument(): a span from its first event seen
                    span = self._open(e, wall_ns, register=False)
                # Events carry attempts only for tasks with retries=; every other body ran once
                # (or never: cancelled or abandoned before it started, then 0).
                attempts = e.get("attempts")
                if attempts is None:
                    ran = id_ in self._ran or e["state"] == "succeeded"
                    attempts = 1 if ran else 0
                self._ran.discard(id_)
                span.set_attribute("distaff.attempts", attempts)
                span.set_attribute("distaff.state", e["state"])
                if ev == "TaskFailed":
                    span.set_status(self._error(e.get("error") or "failed"))
                    exc = self._conv.exceptions.pop(id_, None)
                    if exc is not None:
                        span.record_exception(exc, timestamp=wall_ns)
                    else:
                        span.add_event("exception", {"exception.message": e.get("error") or ""}, timestamp=wall_ns)
                span.end(end_time=wall_ns)
                self._ended[id_] = span.get_span_context()
                if len(self._ended) > 100_000:  # children of long-finished parents are rare
                    self._ended.clear()

    def _open(self, e: dict, wall_ns: int, register: bool = True) -> Any:
        ot_trace = self._ot_trace
        id_, parent = e["id"], e.get("parent_id")
        ctx = None
        if parent is not None:
            p = self._spans.get(parent)
            if p is not None:
                ctx = ot_trace.set_span_in_context(p)
            elif parent in self._ended:
                ctx = ot_trace.set_span_in_context(ot_trace.NonRecordingSpan(self._ended[parent]))
        else:
            ctx = self._parents.pop(id_, None)
        if ctx is None:
            ctx = self._ot_context.Context()  # a new trace, not whatever the drainer thread has
        attrs = {"distaff.execution.id": id_, "distaff.task.name": e.get("name") or "",
                 "distaff.task.kind": e.get("kind") or "task"}
        if e.get("workflow_id"):
            attrs["distaff.workflow_id"] = e["workflow_id"]
        span = self._tracer.start_span(e.get("name") or f"execution {id_}", context=ctx, start_time=wall_ns,
                                       attributes=attrs)
        if register:
            self._spans[id_] = span
        return span

    def uninstrument(self) -> None:
        """Stops making spans; what was recorded until now becomes spans first."""
        if not self.active:
            return
        self.active = False
        _trace.live_unsubscribe(self._engine_key, self)
        for span in self._spans.values():  # still running: ended now, marked so
            span.set_attribute("distaff.state", "running")
            span.end()
        self._spans.clear()
