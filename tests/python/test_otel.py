"""distaff.otel.instrument(): a span per execution, tested with the SDK's in-memory exporter."""

import pytest

import distaff

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the test extra installs opentelemetry-sdk")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402

from distaff import otel  # noqa: E402


@pytest.fixture
def provider():
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


def short(name):
    return name.rsplit(".", 1)[-1]


def test_spans_nest_like_the_calls_and_carry_the_attributes(provider):
    tp, exporter = provider
    eng = distaff.Engine()

    @eng.task()
    def leaf(i):
        return i

    @eng.task(retries=1)
    def bad():
        raise ValueError("nope")

    @eng.workflow()
    def flow():
        total = sum(leaf.submit(i).result() for i in range(3))
        try:
            bad.submit().result()
        except ValueError:
            pass
        return total

    handle = otel.instrument(tracer_provider=tp, engine=eng)
    caller = tp.get_tracer("test")
    with caller.start_as_current_span("request") as request:
        with eng.workflow_scope("wf-otel"):
            assert flow.submit().result() == 3
    eng.shutdown()  # delivers what is left
    handle.uninstrument()
    spans = {short(s.name): s for s in exporter.get_finished_spans() if s.name != "request"}
    by_id = {s.attributes["distaff.execution.id"]: s for s in exporter.get_finished_spans() if s.name != "request"}
    assert len(by_id) == 5 and set(spans) == {"flow", "leaf", "bad"}
    root = spans["flow"]
    # The caller's active span is the root's parent; the children's parent is the root's span.
    assert root.parent is not None and root.parent.span_id == request.get_span_context().span_id
    assert root.context.trace_id == request.get_span_context().trace_id
    for s in by_id.values():
        assert s.attributes["distaff.workflow_id"] == "wf-otel"
        assert s.context.trace_id == request.get_span_context().trace_id
        if s is not root:
            assert s.parent.span_id == root.context.span_id
        assert s.start_time <= s.end_time
        assert root.start_time <= s.start_time and s.end_time <= root.end_time
    failed = spans["bad"]
    assert failed.status.status_code == StatusCode.ERROR and "ValueError: nope" in failed.status.description
    assert failed.attributes["distaff.attempts"] == 2 and failed.attributes["distaff.state"] == "failed"
    (exc_event,) = [e for e in failed.events if e.name == "exception"]
    assert exc_event.attributes["exception.type"] == "ValueError"
    assert spans["leaf"].status.status_code == StatusCode.UNSET
    assert spans["leaf"].attributes["distaff.task.name"].endswith("leaf")
    assert spans["leaf"].attributes["distaff.attempts"] == 1  # no retries=: it ran once


def test_uninstrument_stops_the_spans(provider):
    tp, exporter = provider
    eng = distaff.Engine()
    try:
        handle = otel.instrument(tracer_provider=tp, engine=eng)
        eng.submit(lambda: 1).result()
        handle.uninstrument()
        n = len(exporter.get_finished_spans())
        assert n == 1
        eng.submit(lambda: 2).result()
        eng.wait_idle()
        assert len(exporter.get_finished_spans()) == n
        handle.uninstrument()  # idempotent
    finally:
        eng.shutdown()


def test_bad_engine_argument():
    with pytest.raises(TypeError, match="distaff.Engine"):
        otel.instrument(engine=object())


def test_bad_tracer_provider_is_a_type_error():
    with pytest.raises(TypeError, match="TracerProvider"):
        otel.instrument(tracer_provider="x", engine=distaff.Engine())


def test_instrumenting_an_engine_twice_is_refused_until_uninstrumented(provider):
    """Two active instrumentations would give every execution two spans."""
    tp, exporter = provider
    eng = distaff.Engine()
    try:
        first = otel.instrument(tracer_provider=tp, engine=eng)
        with pytest.raises(RuntimeError, match="instrumented already"):
            otel.instrument(tracer_provider=tp, engine=eng)
        first.uninstrument()
        second = otel.instrument(tracer_provider=tp, engine=eng)
        eng.submit(lambda: 1).result()
        eng.shutdown()
        second.uninstrument()
        assert len(exporter.get_finished_spans()) == 1
    finally:
        eng.shutdown()


def test_a_cancelled_execution_that_never_ran_has_zero_attempts(provider):
    tp, exporter = provider
    eng = distaff.Engine(workers=1)
    gate = __import__("threading").Event()
    try:
        handle = otel.instrument(tracer_provider=tp, engine=eng)
        blocker = eng.submit(gate.wait)
        queued = eng.submit(lambda: 1)
        assert queued.cancel()
        gate.set()
        blocker.result(timeout=30)
        eng.shutdown()
        handle.uninstrument()
        by_id = {s.attributes["distaff.execution.id"]: s for s in exporter.get_finished_spans()}
        assert by_id[queued.id].attributes["distaff.attempts"] == 0
        assert by_id[blocker.id].attributes["distaff.attempts"] == 1
    finally:
        gate.set()
        eng.shutdown()


@pytest.mark.parametrize("order", ["provider first", "instrument first"])
@pytest.mark.parametrize("processor", ["BatchSpanProcessor", "SimpleSpanProcessor"])
def test_spans_of_the_last_executions_are_exported_at_a_normal_exit(processor, order):
    # The SDK's provider shuts down in an atexit hook registered when it is created, which ran
    # before distaff's exit wait: the span of an execution that ended just before the script did
    # (`leaf`), and of one that ended during the exit wait (`late`), were dropped (0 spans with a
    # BatchSpanProcessor; "Processor is already shutdown" with a SimpleSpanProcessor). With the
    # provider created after instrument() (an outsider's find), a short script exported no span.
    from conftest import run_python

    provider = f"""
tp = TracerProvider()
tp.add_span_processor({processor}(ConsoleSpanExporter(
    formatter=lambda s: f"SPAN {{s.name}} {{s.attributes.get('distaff.state')}}\\n")))
trace.set_tracer_provider(tp)
"""
    setup = (provider + "distaff.otel.instrument()\n" if order == "provider first"
             else "distaff.otel.instrument()\n" + provider)
    r = run_python(f"""
import distaff, distaff.otel
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import {processor}, ConsoleSpanExporter
{setup}
@distaff.task()
def leaf(i):
    return i

@distaff.task()
def late():
    distaff.sleep(0.2)
    return 2

@distaff.workflow()
def flow():
    return [leaf.submit(i) for i in range(2)]

print("result", leaf(1), flow(), flush=True)
late.submit()
""", timeout=120)
    assert r.returncode == 0, r.stderr
    spans = sorted(ln for ln in r.stdout.splitlines() if ln.startswith("SPAN"))
    assert spans == ["SPAN flow succeeded", "SPAN late succeeded"] + ["SPAN leaf succeeded"] * 3, r.stdout + r.stderr
    assert "already shutdown" not in r.stderr, r.stderr


def test_children_nest_under_a_workflow_whose_body_is_still_running_when_spans_are_made(provider):
    # The drainer made the root's parent by entering the context the root was submitted with; while
    # the root's body still ran in that context, entering it raised ("already entered"), the whole
    # batch was dropped with a logged traceback, and the leaves lost their parent.
    import threading as _threading

    tp, exporter = provider
    eng = distaff.Engine()
    handle = otel.instrument(tp, engine=eng)
    release = _threading.Event()

    @eng.task()
    def leaf(i):
        return i

    @eng.workflow()
    def wf():
        xs = [leaf.submit(i) for i in range(3)]
        total = sum(x.result() for x in xs)
        release.wait(30)  # still running while the drainer delivers the first batch
        return total

    from opentelemetry.sdk.trace import SpanProcessor

    leaves_ended = _threading.Semaphore(0)

    class CountLeaves(SpanProcessor):
        def on_end(self, span):
            if short(span.name) == "leaf":
                leaves_ended.release()

    tp.add_span_processor(CountLeaves())
    ex = wf.submit()
    for _ in range(3):
        assert leaves_ended.acquire(timeout=30), "the leaves' spans never arrived"
    release.set()
    assert ex.result(timeout=30) == 3
    handle.uninstrument()
    eng.shutdown()
    spans = exporter.get_finished_spans()
    (w,) = [s for s in spans if short(s.name) == "wf"]
    leaves = [s for s in spans if short(s.name) == "leaf"]
    assert len(leaves) == 3
    assert all(s.parent is not None and s.parent.span_id == w.context.span_id for s in leaves)
