"""Issue 10: history-backed queries (executions(workflow_id) and graph() with workflow ids and
errors) and use_engine() routing."""

import asyncio
import contextvars
import threading

import pytest

import distaff
from conftest import collect


def _ids(items):
    return [e.id for e in items]


def test_executions_lists_finished_executions_whose_objects_are_gone(engine):
    @engine.task
    def step(i):
        return i

    with engine.workflow_scope("wf-3"):
        exs = [step.submit(i) for i in range(4)]
    distaff.wait(exs)
    ids = _ids(exs)
    del exs
    collect()
    listed = engine.executions(workflow_id="wf-3")
    assert _ids(listed) == ids
    assert all(isinstance(e, distaff.ExecutionRecord) for e in listed)
    rec = listed[0]
    assert rec.done() and not rec.cancelled() and rec.cancel() is False
    assert rec.state == "succeeded" and rec.workflow_id == "wf-3" and rec.name.endswith("step")
    assert rec.error is None
    assert "ExecutionRecord" in repr(rec)
    assert engine.executions(workflow_id="other") == []


def test_executions_prefers_live_objects_and_includes_unfinished(engine, new_gate):
    gate = new_gate()

    @engine.task
    def hold():
        gate.wait(30)
        return 1

    @engine.task
    def quick():
        return 2

    with engine.workflow_scope("mix") as wid:
        running = hold.submit()
        done = quick.submit()
        done.result(timeout=30)
        gone = quick.submit()
        gone.result(timeout=30)
    gone_id = gone.id
    del gone
    collect()
    listed = engine.executions(workflow_id=wid)
    assert _ids(listed) == sorted([running.id, done.id, gone_id])
    assert running in listed and done in listed  # the Execution objects themselves
    assert [type(e) for e in listed if e.id == gone_id] == [distaff.ExecutionRecord]
    gate.set()
    running.result(timeout=30)


def test_executions_without_id_lists_every_tagged_one(engine):
    @engine.task
    def t():
        return 0

    a = t.options(workflow_id="a").submit()
    b = t.options(workflow_id="b").submit()
    untagged = t.submit()
    distaff.wait([a, b, untagged])
    ids = {a.id, b.id}
    untagged_id = untagged.id
    del a, b, untagged
    collect()
    listed = _ids(engine.executions())
    assert ids <= set(listed) and untagged_id not in listed


def test_history_limit_bounds_what_executions_lists():
    with distaff.Engine(history=3) as eng:

        @eng.task
        def t(i):
            return i

        exs = [t.options(workflow_id="w").submit(i) for i in range(10)]
        distaff.wait(exs)
        ids = _ids(exs)
        del exs
        collect()
        assert _ids(eng.executions("w")) == ids[-3:]
        eng.clear_history()
        assert eng.executions("w") == []
    with distaff.Engine(history=0) as eng:
        with eng.workflow_scope("w"):
            ex = eng.submit(abs, -1)
        ex.result(timeout=30)
        del ex
        collect()
        assert eng.executions("w") == [] and eng.graph()["nodes"] == []


def test_graph_nodes_carry_workflow_id_and_error(engine):
    @engine.task
    def bad(x):
        raise ValueError(f"bad input {x}")

    @engine.task
    def good(x):
        return x

    @engine.workflow
    def flow():
        ok = good.submit(1)
        err = bad.submit(2)
        distaff.wait([ok, err])
        err.exception()
        return ok.result()

    ex = flow.options(workflow_id="flow-1").submit()
    assert ex.result(timeout=30) == 1
    untagged = good.submit(5)
    untagged.result(timeout=30)
    engine.wait_idle(30)
    nodes = {n["id"]: n for n in engine.graph()["nodes"]}
    failed = [n for n in nodes.values() if n["state"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["error"] == "ValueError: bad input 2"
    assert failed[0]["workflow_id"] == "flow-1"
    assert nodes[untagged.id]["workflow_id"] is None and "error" not in nodes[untagged.id]
    assert "error" not in nodes[ex.id]
    only = engine.graph(workflow_id="flow-1")
    assert {n["workflow_id"] for n in only["nodes"]} == {"flow-1"}
    assert len(only["nodes"]) == 3
    assert {e["target"] for e in only["edges"]} <= {n["id"] for n in only["nodes"]}
    assert engine.graph(workflow_id="nothing")["nodes"] == []
    with pytest.raises(TypeError, match="workflow_id"):
        engine.graph(workflow_id=3)


def test_graph_error_text_is_short_and_survives_bad_str(engine):
    class NoStr(Exception):
        def __str__(self):
            raise RuntimeError("no str for you")

    @engine.task
    def long_msg():
        raise KeyError("x" * 5000)

    @engine.task
    def bad_str():
        raise NoStr()

    @engine.task
    def empty():
        raise RuntimeError()

    for t in (long_msg, bad_str, empty):
        t.submit().exception(timeout=30)
    engine.wait_idle(30)
    errors = {n["name"].rsplit(".", 1)[-1]: n.get("error") for n in engine.graph()["nodes"]}
    assert errors["long_msg"].startswith("KeyError: 'xxx") and len(errors["long_msg"]) < 600
    assert errors["long_msg"].endswith("...")
    assert errors["bad_str"] == "NoStr"
    assert errors["empty"] == "RuntimeError"


def test_history_does_not_keep_the_exception_alive(engine):
    import weakref

    class Boom(Exception):
        pass

    refs = []

    @engine.task
    def boom():
        e = Boom("gone")
        refs.append(weakref.ref(e))
        raise e

    ex = boom.submit()
    assert isinstance(ex.exception(timeout=30), Boom)
    del ex
    engine.wait_idle(30)
    collect()
    assert refs[0]() is None
    assert [n["error"] for n in engine.graph()["nodes"]] == ["Boom: gone"]


# -- use_engine --------------------------------------------------------------------------------------


@distaff.task
def _leaf(x):
    return x + 1


@distaff.workflow
def _nested(x):
    return _leaf(x) * 10


def test_use_engine_routes_module_level_tasks_and_nested_calls():
    eng = distaff.Engine()
    try:
        with distaff.use_engine(eng) as routed:
            assert routed is eng
            assert distaff.default_engine() is eng
            before = eng.stats()["submitted"]
            assert _nested(1) == 20
            assert eng.stats()["submitted"] - before == 2  # the workflow and its nested task
        assert distaff.default_engine() is not eng
    finally:
        eng.shutdown()


def test_use_engine_follows_asyncio_tasks_and_copied_contexts():
    eng = distaff.Engine()
    try:

        async def main():
            async with distaff.use_engine(eng):
                inner = asyncio.create_task(asyncio.sleep(0, result=distaff.default_engine()))
            return await inner

        assert asyncio.run(main()) is eng

        seen = []
        with distaff.use_engine(eng):
            ctx = contextvars.copy_context()
            plain = threading.Thread(target=lambda: seen.append(distaff.default_engine()))
        t = threading.Thread(target=ctx.run, args=(lambda: seen.append(distaff.default_engine()),))
        t.start()
        t.join()
        plain.start()
        plain.join()
        assert seen[0] is eng  # copied context: routed
        assert seen[1] is not eng  # a plain thread starts with an empty context (Python's rule)
    finally:
        eng.shutdown()


def test_use_engine_nests_and_leaves_bound_tasks_alone():
    a, b = distaff.Engine(), distaff.Engine()
    try:
        bound = a.task(lambda: 1)
        with distaff.use_engine(a):
            with distaff.use_engine(b):
                assert distaff.default_engine() is b
                before = a.stats()["submitted"]
                bound()
                assert a.stats()["submitted"] == before + 1
            assert distaff.default_engine() is a
    finally:
        a.shutdown()
        b.shutdown()


def test_use_engine_body_submitting_after_the_block_still_routes(new_gate):
    eng = distaff.Engine()
    gate = new_gate()
    try:

        @distaff.workflow
        def later():
            gate.wait(30)
            return _leaf.submit(1)  # the block has ended by now: the body's context still routes

        with distaff.use_engine(eng):
            ex = later.submit()
        before = eng.stats()["submitted"]
        gate.set()
        assert ex.result(timeout=30) == 2
        assert eng.stats()["submitted"] == before + 1
    finally:
        eng.shutdown()


def test_use_engine_rejects_non_engines():
    with pytest.raises(TypeError, match="distaff.Engine"):
        distaff.use_engine("default")


def test_executions_after_an_asyncflow_style_run():
    # The case: after a seed-style AsyncFlow run, executions(workflow_id="wf-3") was [].
    eng = distaff.Engine()
    try:

        @eng.task
        async def step():
            await asyncio.sleep(0.01)
            return 1

        @eng.task(resolve=True)
        async def combine(a, b):
            return a + b

        async def run_wf(i):
            async with eng.workflow_scope(f"wf-{i}"):
                assert await combine(step(), step()) == 2

        async def main():
            await asyncio.gather(*[run_wf(i) for i in range(5)])

        asyncio.run(main())
        collect()
        listed = eng.executions(workflow_id="wf-3")
        assert len(listed) == 3
        assert {e.state for e in listed} == {"succeeded"}
        assert sorted(e.name.rsplit(".", 1)[-1] for e in listed) == ["combine", "step", "step"]
    finally:
        eng.shutdown()
