"""Executions as arguments, wait=, returned Executions, parents and the graph."""

import threading

import pytest

import distaff

from conftest import fiber_wait


def test_executions_reach_the_body_as_executions(engine):
    @engine.task()
    def value():
        return 21

    @engine.task()
    def double(ex):
        assert isinstance(ex, distaff.Execution)
        return ex.result() * 2

    assert double(value.submit()) == 42


def test_wait_true_starts_only_after_dependencies(engine):
    gate = threading.Event()
    order = []

    @engine.task()
    def slow():
        gate.wait(30)
        order.append("dep")
        return 1

    @engine.task(wait=True)
    def after(a, b=None):
        order.append("dependent")
        assert a.done()
        return a.result()

    dep = slow.submit()
    ex = after.submit(dep)
    assert ex.description["state"] == "waiting"
    gate.set()
    assert ex.result() == 1
    assert order == ["dep", "dependent"]


def test_wait_names_only_gate_named_parameters(engine):
    gate = threading.Event()

    @engine.task()
    def blocked():
        fiber_wait(gate)
        return "b"

    @engine.task()
    def quick():
        return "q"

    @engine.task(wait="first")
    def f(first, second):
        # `first` gates the start; `second` may still be running.
        return first.result(), second.done()

    q = quick.submit()
    q.result()
    b = blocked.submit()
    ex = f.submit(q, b)
    assert ex.result() == ("q", False)
    gate.set()
    b.result()


def test_keyword_and_nested_execution_arguments_are_dependencies(engine):
    @engine.task()
    def val(x):
        return x

    @engine.task(wait=True)
    def total(items, *, extra):
        assert all(i.done() for i in items) and extra["k"].done()
        return sum(i.result() for i in items) + extra["k"].result()

    ex = total.submit([val.submit(1), val.submit(2)], extra={"k": val.submit(3)})
    assert ex.result() == 6
    assert len(ex.description["dependencies"]) == 3


def test_failed_dependency_fails_the_dependent_without_running_it(engine):
    ran = []

    @engine.task()
    def bad():
        raise ValueError("boom")

    @engine.task(wait=True)
    def dependent(x):
        ran.append(1)

    dep = bad.submit()
    ex = dependent.submit(dep)
    with pytest.raises(distaff.DependencyError) as info:
        ex.result()
    msg = str(info.value)
    assert "bad" in msg and str(dep.id) in msg and "boom" in msg
    assert isinstance(info.value.__cause__, ValueError)
    assert ran == []


def test_cancelled_dependency_fails_the_dependent(engine):
    gate = threading.Event()
    started = threading.Event()

    def block():
        started.set()
        gate.wait(30)

    blockers = [engine.submit(block) for _ in range(engine.workers)]
    started.wait(30)

    @engine.task()
    def dep():
        return 1

    @engine.task(wait=True)
    def dependent(x):
        return x.result()

    d = dep.submit()
    ex = dependent.submit(d)
    assert d.cancel()
    gate.set()
    with pytest.raises(distaff.DependencyError, match="cancelled"):
        ex.result()
    for b in blockers:
        b.result()


def test_returned_execution_is_followed(engine):
    @engine.task()
    def leaf(x):
        return x + 1

    @engine.task()
    def fails():
        raise LookupError("deep")

    @engine.workflow()
    def wf(x):
        return leaf.submit(x)

    @engine.workflow()
    def wf2(x):
        return wf.submit(x)  # two hops

    @engine.workflow()
    def wf_fail():
        return fails.submit()

    assert wf(1) == 2 and wf2(5) == 6
    with pytest.raises(LookupError, match="deep"):
        wf_fail()


def test_the_seed_process_order_workflow(engine):
    @engine.task()
    def load_user(uid):
        return {"id": uid}

    @engine.task()
    def load_product(pid):
        return {"id": pid}

    @engine.task(wait=True)
    def create_order(user, product):
        return {"user": user.result()["id"], "product": product.result()["id"]}

    @engine.workflow()
    def process_order(uid, pid):
        u = load_user.submit(uid)
        p = load_product.submit(pid)
        return create_order.submit(u, p)

    assert process_order(1, 2) == {"user": 1, "product": 2}
    engine.wait_idle()
    g = engine.graph()
    names = {n["id"]: n["name"].rsplit(".", 1)[-1] for n in g["nodes"]}
    edges = {(names[e["source"]], names[e["target"]], e["kind"]) for e in g["edges"] if e["source"] in names}
    assert ("process_order", "load_user", "parent") in edges
    assert ("process_order", "create_order", "parent") in edges
    assert ("load_user", "create_order", "dependency") in edges
    assert ("load_product", "create_order", "dependency") in edges


def test_parent_is_recorded(engine):
    @engine.task()
    def child():
        return distaff.current_execution().description["parent_id"]

    @engine.workflow()
    def parent():
        me = distaff.current_execution()
        return me.id, child()

    pid, childs_parent = parent()
    assert pid == childs_parent
    assert distaff.current_execution() is None
