"""Workflow scopes and workflow_id tagging (AsyncFlow semantics, seed 002).

A scope tags every execution submitted inside it and, transitively, what those submit; a call-time
``workflow_id=`` tags one execution and wins over the scope; scopes are per engine and follow
contextvars (threads, fibers, asyncio tasks); cancelling a scope cancels what is unfinished in it.
"""

import asyncio
import re
import threading

import pytest

import distaff

from conftest import fiber_wait

WF_ID = re.compile(r"wf-[0-9a-f]{8}")


@pytest.fixture
def tag(engine):
    """tag(): a task returning the workflow_id its own execution carries."""

    @engine.task()
    def tag():
        return distaff.current_execution().workflow_id

    return tag


# -- the context manager ---------------------------------------------------------------------------


def test_scope_yields_the_given_id_or_generates_one(engine):
    with engine.workflow_scope("experiment-42") as wid:
        assert wid == "experiment-42"
    with engine.workflow_scope() as a, engine.workflow_scope() as b:
        assert WF_ID.fullmatch(a) and WF_ID.fullmatch(b) and a != b


def test_scope_is_an_async_context_manager(engine, tag):
    async def main():
        async with engine.workflow_scope("async-1") as wid:
            inside = await tag()
        async with engine.workflow_scope() as generated:
            pass
        return wid, inside, await tag(), generated

    wid, inside, outside, generated = asyncio.run(main())
    assert (wid, inside, outside) == ("async-1", "async-1", None)
    assert WF_ID.fullmatch(generated)


def test_scope_rejects_a_bad_id(engine):
    with pytest.raises(ValueError):
        engine.workflow_scope("")
    with pytest.raises(TypeError):
        engine.workflow_scope(42)


def test_executions_inside_are_tagged_and_outside_are_not(engine, tag):
    before = tag.submit()
    with engine.workflow_scope("run-1"):
        inside = tag.submit()
        plain = engine.submit(lambda: distaff.current_execution().workflow_id)
    after = tag.submit()
    assert [before.result(), inside.result(), plain.result(), after.result()] == [None, "run-1", "run-1", None]
    assert inside.workflow_id == "run-1" and inside.description["workflow_id"] == "run-1"
    assert before.workflow_id is None and before.description["workflow_id"] is None


def test_nested_scopes_restore_the_outer_one(engine, tag):
    with engine.workflow_scope("outer"):
        with engine.workflow_scope("inner"):
            assert tag() == "inner"
        assert tag() == "outer"
    assert tag() is None


def test_tagging_is_transitive(engine, tag, new_gate):
    gate = new_gate()

    @engine.task()
    def middle():
        return tag.submit().result(), tag()

    @engine.task()
    def top():
        fiber_wait(gate)  # runs after the `with` block below has exited
        return middle()

    with engine.workflow_scope("deep") as wid:
        ex = top.submit()
    gate.set()
    assert ex.result(timeout=30) == (wid, wid)


def test_tagging_is_transitive_through_async_bodies(engine, tag):
    @engine.task()
    async def async_middle():
        return await tag()

    @engine.task()
    def sync_top():
        return async_middle()

    with engine.workflow_scope("mixed"):
        assert sync_top() == "mixed"


# -- call-time workflow_id= -----------------------------------------------------------------------


def test_call_time_workflow_id_tags_one_execution(engine, tag):
    assert tag.submit(workflow_id="run-007").result() == "run-007"
    assert tag(workflow_id="run-007") == "run-007"
    assert tag() is None  # only that one


def test_call_time_workflow_id_wins_over_the_scope_and_is_transitive(engine, tag):
    @engine.task()
    def parent():
        return distaff.current_execution().workflow_id, tag()

    with engine.workflow_scope("scoped"):
        assert parent(workflow_id="explicit") == ("explicit", "explicit")
        assert parent() == ("scoped", "scoped")
        assert parent(workflow_id=None) == ("scoped", "scoped")  # None: as if not given


def test_call_time_workflow_id_is_stripped_before_the_body(engine):
    @engine.task()
    def kw(**kwargs):
        return kwargs

    @engine.task()
    def positional(x):
        return x

    assert kw(a=1, workflow_id="run-1") == {"a": 1}
    assert positional(5, workflow_id="run-1") == 5


def test_call_time_workflow_id_must_be_a_string(engine, tag):
    with pytest.raises(TypeError, match="workflow_id"):
        tag.submit(workflow_id=7)


def test_a_function_with_its_own_workflow_id_parameter_receives_it(engine):
    @engine.task()
    def report(name, workflow_id=None):
        return workflow_id, distaff.current_execution().workflow_id

    # The argument goes to the function; the execution is tagged only by an active scope.
    assert report("a", workflow_id="mine") == ("mine", None)
    assert report("a", "positional") == ("positional", None)
    with engine.workflow_scope("scope-7"):
        assert report("a", workflow_id="mine") == ("mine", "scope-7")
        assert report("a") == (None, "scope-7")


def test_a_workflow_id_parameter_can_still_be_tagged_with_options(engine):
    @engine.task()
    def report(workflow_id):
        return workflow_id, distaff.current_execution().workflow_id

    if not hasattr(report, "options"):
        pytest.skip("Task.options() is not available")
    assert report.options(workflow_id="tagged")("arg") == ("arg", "tagged")


# -- per engine, threads, fibers, asyncio tasks -------------------------------------------------


def test_scopes_are_per_engine(engine, tag):
    with distaff.Engine() as other:

        @other.task()
        def other_tag():
            return distaff.current_execution().workflow_id

        @engine.task()
        def crosses():
            return other_tag()  # another engine's task, from inside this engine's scope

        with engine.workflow_scope("mine"):
            assert tag() == "mine"
            assert other_tag() is None
            assert crosses() is None
            with other.workflow_scope("theirs"):
                assert other_tag() == "theirs"
                assert tag() == "mine"


def test_a_scope_does_not_leak_into_other_threads(engine, tag, new_gate):
    opened, done = new_gate(), new_gate()
    box = {}

    def scoped_thread():
        with engine.workflow_scope("thread-a"):
            box["a"] = tag()
            opened.set()
            done.wait(30)  # keep the scope open while the other thread submits

    t = threading.Thread(target=scoped_thread)
    t.start()
    assert opened.wait(30)
    box["b"] = tag()
    done.set()
    t.join(30)
    assert box == {"a": "thread-a", "b": None}


def test_scopes_are_per_fiber(engine, tag, new_gate):
    a_open, b_open = new_gate(), new_gate()

    @engine.task()
    def body(name, mine, other):
        with engine.workflow_scope(name):
            mine.set()
            fiber_wait(other)  # both scopes are open at once, possibly on one worker thread
            return tag()

    a = body.submit("fiber-a", a_open, b_open)
    b = body.submit("fiber-b", b_open, a_open)
    assert (a.result(timeout=30), b.result(timeout=30)) == ("fiber-a", "fiber-b")


def test_scopes_are_per_asyncio_task(engine, tag):
    async def one(name, mine, other):
        async with engine.workflow_scope(name):
            mine.set()
            await other.wait()  # both scopes are open at once on one loop
            return await tag()

    async def main():
        a, b = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(one("task-a", a, b), one("task-b", b, a), tag())

    assert asyncio.run(main()) == ["task-a", "task-b", None]


# -- @workflow ------------------------------------------------------------------------------------


def test_a_workflow_opens_its_own_scope(engine, tag):
    @engine.workflow()
    def flow():
        return distaff.current_execution().workflow_id, tag()

    own, child = flow()
    assert WF_ID.fullmatch(own) and child == own
    assert flow()[0] != own  # a new id per call


def test_a_workflow_inside_a_scope_or_a_workflow_uses_that_id(engine, tag):
    @engine.workflow()
    def inner():
        return tag()

    @engine.workflow()
    def outer():
        return distaff.current_execution().workflow_id, inner()

    own, nested = outer()
    assert nested == own
    with engine.workflow_scope("given"):
        assert outer() == ("given", "given")
    assert outer(workflow_id="explicit") == ("explicit", "explicit")


# -- listing executions -----------------------------------------------------------------------------


def test_executions_lists_the_live_executions_of_a_workflow(engine, tag, new_gate):
    gate = new_gate()

    @engine.task()
    def held():
        fiber_wait(gate)

    @engine.task()
    def parent():
        return [held.submit(), held.submit()]

    with engine.workflow_scope("listed") as wid:
        p = parent.submit()
        t = tag.submit()
    untagged = tag.submit()
    children = p.result(timeout=30)
    listed = engine.executions(workflow_id=wid)
    assert set(listed) == {p, t, *children}
    assert [e.id for e in listed] == sorted(e.id for e in listed)
    assert {p, t, *children} <= set(engine.executions())
    assert untagged not in engine.executions()
    assert engine.executions(workflow_id="nothing-here") == []
    with engine.workflow_scope(wid) as again:
        assert set(engine.workflow_scope(again).executions()) == set(listed)
    gate.set()
    untagged.result()


# -- cancelling a scope ---------------------------------------------------------------------------


def test_scope_cancel_cancels_what_has_not_started(engine, new_gate):
    gate = new_gate()

    @engine.task()
    def opener():
        fiber_wait(gate)

    @engine.task(wait=True)
    def pending(dep):
        return "ran"

    opened = opener.submit()  # untagged: outside the scope
    scope = engine.workflow_scope("to-cancel")
    with scope:
        a, b = pending.submit(opened), pending.submit(opened)
    elsewhere = pending.submit(opened)
    assert scope.cancel() == 2
    assert a.cancelled() and b.cancelled() and not elsewhere.cancelled()
    assert engine.cancel_workflow("to-cancel") == 0  # nothing left to cancel
    gate.set()
    assert elsewhere.result(timeout=30) == "ran"
    with pytest.raises(distaff.CancelledError):
        a.result()


def test_scope_cancel_on_error_cancels_when_an_exception_leaves_the_block(engine, new_gate):
    gate = new_gate()

    @engine.task()
    def opener():
        fiber_wait(gate)

    @engine.task(wait=True)
    def pending(dep):
        return "ran"

    opened = opener.submit()
    with pytest.raises(KeyError):
        with engine.workflow_scope(cancel_on_error=True):
            cancelled = pending.submit(opened)
            raise KeyError("leaving")
    with pytest.raises(KeyError):
        with engine.workflow_scope():  # the default: an error does not cancel
            kept = pending.submit(opened)
            raise KeyError("leaving")
    with engine.workflow_scope(cancel_on_error=True):  # no error: nothing cancelled
        clean = pending.submit(opened)
    assert cancelled.cancelled() and not kept.cancelled() and not clean.cancelled()
    gate.set()
    assert kept.result(timeout=30) == "ran" and clean.result(timeout=30) == "ran"


def test_scope_cancel_on_error_in_async_with(engine, new_gate):
    gate = new_gate()

    @engine.task()
    def opener():
        fiber_wait(gate)

    @engine.task(wait=True)
    def pending(dep):
        return "ran"

    async def main():
        opened = opener.submit()
        try:
            async with engine.workflow_scope(cancel_on_error=True):
                ex = pending.submit(opened)
                raise KeyError("leaving")
        except KeyError:
            return ex

    assert asyncio.run(main()).cancelled()
    gate.set()


def test_scope_cancel_cancels_running_executions_transitively(engine, new_gate):
    gate, started = new_gate(), new_gate()
    reached = []
    children = []

    @engine.task()
    def child():
        fiber_wait(gate)
        reached.append("child")

    @engine.task()
    def parent():
        children.append(child.submit())
        started.set()
        fiber_wait(gate)
        reached.append("parent")  # must never run: the wait above is interrupted

    with engine.workflow_scope() as wid:
        p = parent.submit()
    assert started.wait(30)
    assert engine.workflow_scope(wid).cancel() >= 1
    with pytest.raises(distaff.CancelledError):
        p.result(timeout=30)
    with pytest.raises(distaff.CancelledError):
        children[0].result(timeout=30)
    gate.set()
    assert engine.wait_idle(timeout=30)
    assert reached == []


def test_scope_cancel_cancels_a_running_async_body(engine):
    started, coroutine_cancelled = threading.Event(), threading.Event()

    @engine.task()
    async def waits_forever():
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            coroutine_cancelled.set()
            raise

    with engine.workflow_scope() as wid:
        ex = waits_forever.submit()  # on the engine's loop: no loop is running here
    assert started.wait(30)
    engine.cancel_workflow(wid)
    with pytest.raises(distaff.CancelledError):
        ex.result(timeout=30)
    # The coroutine itself is cancelled on its loop, not left running.
    assert coroutine_cancelled.wait(30)


def test_scope_cancel_leaves_pending_dependents_cancelled_not_failed(engine, new_gate):
    gate, started = new_gate(), new_gate()

    @engine.task()
    def first():
        started.set()
        fiber_wait(gate)

    @engine.task(wait=True)
    def later(dep):
        return "ran"

    with engine.workflow_scope() as wid:
        running = first.submit()
        queued = [later.submit(running) for _ in range(3)]
    assert started.wait(30)
    engine.cancel_workflow(wid)
    states = [e.state for e in queued]
    for e in queued:  # observed either way: no unobserved-failure log at teardown
        try:
            e.exception(timeout=30)
        except distaff.CancelledError:
            pass
    assert running.cancelled()
    assert states == ["cancelled"] * 3
