"""Synchronous calls to an idle engine run their body on the calling (main) thread (issue 15, S1).

A plain task called as ``f(x)`` on the main thread, outside any body, while its engine has nothing
live, runs right there: no queue, no worker wake-up, no GIL hand-over. Everything a body may rely
on must hold there as on a worker fiber: its own thread state (threading.local, exception state,
recursion depth), current_execution(), children and nested waits, deadlock detection, cancel(),
Ctrl-C, shutdown refusals, fork, traces and history. Where a hang or a signal is involved the case
runs in a fresh interpreter with a deadline. docs/reliability.md names these tests.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import distaff
from conftest import run_python


@pytest.fixture
def eng():
    e = distaff.Engine(workers=1)
    yield e
    assert e.wait_idle(timeout=60)
    e.shutdown(wait=True)


def test_an_idle_engines_sync_call_runs_on_the_main_thread_with_a_state_of_its_own(eng):
    local = threading.local()
    local.mine = "caller"
    cv = __import__("contextvars").ContextVar("cv", default="unset")
    cv.set("caller")

    @eng.task()
    def body(x):
        ex = distaff.current_execution()
        seen = {
            "x": x,
            "ex": ex,
            "state": ex.state,
            "main": threading.get_ident() == threading.main_thread().ident,
            "local": getattr(local, "mine", None),
            "exc": sys.exc_info()[1],
            "cv": cv.get(),
        }
        local.mine = "body"
        cv.set("body")
        return seen

    try:
        raise KeyError("handled by the caller")
    except KeyError:
        seen = body(7)  # called while the caller handles an exception
    assert seen["x"] == 7 and seen["main"]  # ran here, on the main thread
    assert seen["ex"].name.endswith("body") and seen["state"] == "running"
    assert seen["ex"].state == "succeeded" and seen["ex"].result() == seen
    assert seen["local"] is None  # threading.local is per body, as on a fiber
    assert seen["exc"] is None  # so is the exception being handled
    assert seen["cv"] == "caller"  # a copy of the caller's context...
    assert cv.get() == "caller" and local.mine == "caller"  # ...isolated both ways
    assert distaff.current_execution() is None
    # A second call gets a clean state again (the cached state is cleared between calls).
    assert body(8)["local"] is None
    assert eng.stats()["submitted"] == 2 and eng.stats()["live"] == 0


def test_a_busy_engines_sync_call_goes_to_a_worker(eng, new_gate):
    gate = new_gate()

    @eng.task()
    def hold():
        gate.wait()

    @eng.task()
    def where():
        return threading.get_ident() == threading.main_thread().ident

    assert where()  # idle: here
    h = hold.submit()
    assert where() is False  # something is live: the call is queued as before
    gate.set()
    h.result()


def test_a_sync_call_body_submits_children_and_waits_on_them(eng):
    @eng.task()
    def leaf(i):
        return threading.get_ident(), i

    @eng.task()
    def parent(n):
        kids = [leaf.submit(i) for i in range(n)]
        nested = leaf(100)  # a nested synchronous call from a body: queued (not idle, not main code)
        return [k.result() for k in kids], nested, distaff.current_execution().id

    kids, nested, pid = parent(5)
    main = threading.main_thread().ident
    assert [i for _, i in kids] == list(range(5)) and nested[1] == 100
    assert all(t != main for t, _ in kids) and nested[0] != main  # the workers ran them
    edges = [e for e in eng.graph()["edges"] if e["kind"] == "parent" and e["source"] == pid]
    assert len(edges) == 6  # recorded as its children, as a worker body's are


def test_deadlock_detection_sees_a_sync_call_body(eng):
    @eng.task()
    def child(parent):
        return parent.result()

    @eng.task()
    def parent():
        return child.submit(distaff.current_execution()).result()

    with pytest.raises(distaff.DeadlockError):
        parent()

    @eng.task()
    def selfish():
        return distaff.current_execution().result()

    with pytest.raises(distaff.DeadlockError, match="itself"):
        selfish()


def test_a_sync_call_body_fails_and_retries_as_on_a_worker(eng):
    attempts = []

    @eng.task(retries=2, retry_delay=0)
    def flaky():
        attempts.append(threading.get_ident() == threading.main_thread().ident)
        if len(attempts) < 3:
            raise ValueError("again")
        return "ok"

    assert flaky() == "ok" and attempts == [True, True, True]

    @eng.task()
    def boom():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom") as info:
        boom()
    assert any("boom" in n for n in info.value.__notes__)  # the task's note, as on a worker
    (node,) = [n for n in eng.graph()["nodes"] if n["name"].endswith("boom")]
    assert node["state"] == "failed" and node["error"] == "ValueError: boom"


def test_cancel_from_another_thread_interrupts_a_sync_call_body(eng):
    started = threading.Event()
    box = {}

    @eng.task()
    def busy():
        box["ex"] = distaff.current_execution()
        started.set()
        while True:
            sum(range(10))

    @eng.task()
    def parked():
        box["ex"] = distaff.current_execution()
        started.set()
        distaff.sleep(60)

    for body in (busy, parked):
        started.clear()
        threading.Thread(target=lambda: (started.wait(), box["ex"].cancel()), daemon=True).start()
        with pytest.raises(distaff.CancelledError):
            body()
        assert box["ex"].state == "cancelled"


def test_a_sync_call_body_cannot_shut_down_or_wait_for_its_own_engine(eng):
    @eng.task()
    def stop():
        with pytest.raises(RuntimeError, match="own tasks"):
            eng.shutdown(wait=True)
        with pytest.raises(distaff.DeadlockError):
            eng.wait_idle(timeout=5)
        return "refused"

    assert stop() == "refused"


def test_a_trace_records_a_sync_call_body(eng, tmp_path):
    @eng.task()
    def inner(x):
        return x

    @eng.task()
    def outer(x):
        return inner.submit(x).result() + 1

    path = tmp_path / "run.jsonl"
    with eng.trace(path):
        assert outer(1) == 2
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kinds = {}
    for e in events:
        kinds.setdefault(e["name"].rsplit(".", 1)[-1], []).append(e["event"])
    out = kinds["outer"]
    assert out[0] == "TaskCreated" and "TaskStarted" in out and "TaskBodyEnded" in out
    assert out.count("TaskSuspended") == out.count("TaskResumed") >= 1  # waited on inner
    assert out.count("TaskCompleted") == 1 and out.count("TaskStarted") == 1 and out.count("TaskBodyEnded") == 1
    html = tmp_path / "run.html"
    with eng.trace(html):
        outer(2)
    assert html.stat().st_size > 0


def test_a_tracer_follows_a_sync_call_into_its_body():
    proc = run_python(
        """
        import sys, distaff
        eng = distaff.Engine()
        @eng.task()
        def body(x):
            y = x + 1
            return y
        seen = []
        def tracer(frame, event, arg):
            if frame.f_code.co_name == "body":
                seen.append(event)
            return tracer
        sys.settrace(tracer)
        assert body(1) == 2
        sys.settrace(None)
        print("events", ",".join(seen))
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "call" in proc.stdout and "return" in proc.stdout


_CTRL_C = """
import os, signal, sys, threading, time, faulthandler
import distaff
faulthandler.dump_traceback_later(30, exit=True)
mode = sys.argv[1]
box = {}

@distaff.task
def child():
    while True:
        distaff.sleep(0.01)

@distaff.task
def body():
    box["ex"] = distaff.current_execution()
    box["main"] = threading.get_ident() == threading.main_thread().ident
    if mode == "busy":
        print("ready", flush=True)
        while True:
            sum(range(10))
    elif mode == "wait":
        box["child"] = child.submit()
        print("ready", flush=True)
        box["child"].result()
    else:
        print("ready", flush=True)
        distaff.sleep(1000)

try:
    body()
    print("not interrupted", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
print("inline", box["main"], flush=True)
print("state", box["ex"].state, flush=True)
if "child" in box:
    try:
        box["child"].result(timeout=10)
    except distaff.CancelledError:
        pass
    print("child", box["child"].state, flush=True)
@distaff.task
def double(x):
    return 2 * x
print("double", double(21), flush=True)
"""


@pytest.mark.parametrize("mode", ["busy", "wait", "sleep"])
def test_ctrl_c_in_a_sync_call_body_on_the_main_thread_cancels_it_with_its_tree(mode):
    proc = subprocess.Popen([sys.executable, "-c", _CTRL_C, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.1)  # into the loop / the wait (an earlier signal is delivered there too)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert "interrupted" in out.splitlines() and lines["inline"] == "True"
    assert lines["state"] == "cancelled"
    if mode == "wait":
        assert lines["child"] == "cancelled"  # the tree went with it
    assert lines["double"] == "42"  # the engine is still usable
    assert elapsed < 10


def test_a_child_forked_by_a_sync_call_body_ends_with_the_body():
    proc = run_python(
        """
        import os, sys, threading, distaff

        @distaff.task
        def forker():
            assert threading.get_ident() == threading.main_thread().ident  # ran inline
            pid = os.fork()
            if pid == 0:
                print("child body", flush=True)
                return "child"
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)

        print("parent got", forker(), flush=True)
        print("parent continues", flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines.count("child body") == 1
    assert "parent got 0" in lines and lines.count("parent continues") == 1  # the child never ran it


def test_engine_shutdown_from_another_thread_cancels_a_running_sync_call_body():
    proc = run_python(
        """
        import threading, distaff
        eng = distaff.Engine()
        started = threading.Event()

        @eng.task()
        def busy():
            started.set()
            while True:
                sum(range(10))

        def stop():
            started.wait()
            eng.shutdown(wait=True, cancel_running=True)
            print("shut down", flush=True)

        t = threading.Thread(target=stop)
        t.start()
        try:
            busy()
        except distaff.CancelledError:
            print("cancelled", flush=True)
        t.join(30)
        print("joined", not t.is_alive(), flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cancelled" in proc.stdout and "joined True" in proc.stdout
