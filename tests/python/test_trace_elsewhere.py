"""Traces of bodies that run elsewhere: executor= bodies (distaff's process pool, a
concurrent.futures executor) and async def bodies on an event loop show as slices on a track of
their own per executor / loop, from when the body was shipped to when its outcome came back
(docs/observability.md). The report's rows in a real browser: test_report_browser.py."""

import asyncio
import collections
import concurrent.futures
import json
import os
import time

import pytest

import distaff
from distaff import _report, _trace

pytest.importorskip("cloudpickle")


def short(name):
    return name.rsplit(".", 1)[-1] if name else name


def place(track):
    """The executor / loop a track belongs to: bodies away at once get tracks "<place> · 2"..."""
    return track.split(" \u00b7 ")[0]


def wait_for_file(path, timeout=60.0):
    """In a worker process: blocks until path exists (a file is all a separate process and the
    test share)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError("gate never opened")
        time.sleep(0.005)
    return True


def announce_then_wait(started, gate):
    """In a worker process: says it started (a file), then waits for the gate."""
    open(started, "w").close()
    return wait_for_file(gate)


def validate_chrome_trace(doc):
    """The shape chrome://tracing and Perfetto's JSON importer need, and slices on one track that
    never partly overlap (a track is a thread: its complete events must nest)."""
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    by_tid = collections.defaultdict(list)
    for e in doc["traceEvents"]:
        assert e["ph"] in ("M", "X", "i", "s", "f"), e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int), e
        assert isinstance(e["name"], str), e
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name", "thread_sort_index") and "args" in e
            continue
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] > 0, e
            by_tid[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
        if e["ph"] in "sf":
            assert "id" in e and "cat" in e, e
    for tid, spans in by_tid.items():
        spans.sort()
        for (a0, b0), (a1, b1) in zip(spans, spans[1:]):
            assert b0 <= a1 + 1e-3 or b1 <= b0, (tid, (a0, b0), (a1, b1))  # after, or nested in it
    json.dumps(doc)  # plain JSON


def test_executor_and_event_loop_tracks_in_the_chrome_trace_the_log_and_the_report(tmp_path):
    threads = concurrent.futures.ThreadPoolExecutor(2)
    eng = distaff.Engine(workers=2, processes=2, executors={"threaded": threads})  # a registered name
    try:
        @eng.task()
        def local(i):
            distaff.sleep(0.001)
            return i

        @eng.task(executor="processes")
        def remote(i):
            time.sleep(0.02)
            return 2 * i

        @eng.task(executor="processes", retries=1)
        def flaky():
            raise ValueError("remote boom")

        @eng.task(executor="threaded")
        def threaded(i):
            time.sleep(0.005)
            return i

        @eng.task()
        async def fetch(i):
            await asyncio.sleep(0.01)
            child = local.submit(i)  # submitted on the loop: a parent arrow from the loop's track
            return await child

        @eng.workflow()
        def flow():
            parts = [local.submit(1), remote.submit(2), threaded.submit(3), fetch.submit(4)]
            bad = flaky.submit()
            total = sum(p.result() for p in parts)
            assert isinstance(bad.exception(), ValueError)
            return total

        remote.submit(0).result(timeout=120)  # the pool's processes are up before the trace
        json_path, log_path, html_path = tmp_path / "run.json", tmp_path / "run.jsonl", tmp_path / "run.html"
        with eng.trace(json_path), eng.trace(log_path) as t, eng.trace(html_path):
            with eng.workflow_scope("wf-x"):
                root = flow.submit()
                assert root.result(timeout=120) == 1 + 4 + 3 + 4
        ids = {short(e["name"]): e["id"] for e in t.events if e["event"] == "TaskCreated"}
        ids.pop("local")  # two of them

        # -- the event log: TaskShipped / TaskReturned, in time order, with the executor --------------
        events = t.events
        assert [e["mono_ns"] for e in events] == sorted(e["mono_ns"] for e in events)
        away = [e for e in events if e["event"] in ("TaskShipped", "TaskReturned")]
        got = collections.Counter((short(e["name"]), e["event"], e["executor"], e["attempt"],
                                   e.get("outcome")) for e in away)
        loop = "asyncio loop (distaff-event-loop)"
        assert got == {
            ("remote", "TaskShipped", "executor processes", 1, None): 1,
            ("remote", "TaskReturned", "executor processes", 1, "succeeded"): 1,
            ("flaky", "TaskShipped", "executor processes", 1, None): 1,
            ("flaky", "TaskReturned", "executor processes", 1, "failed"): 1,
            ("flaky", "TaskShipped", "executor processes", 2, None): 1,
            ("flaky", "TaskReturned", "executor processes", 2, "failed"): 1,
            ("threaded", "TaskShipped", "executor threaded", 1, None): 1,
            ("threaded", "TaskReturned", "executor threaded", 1, "succeeded"): 1,
            ("fetch", "TaskShipped", loop, 1, None): 1,
            ("fetch", "TaskReturned", loop, 1, "succeeded"): 1,
        }, got
        assert all(e["workflow_id"] == "wf-x" for e in away)
        # Shipped after its body started on a worker, back before the execution finished.
        for name in ("remote", "flaky", "threaded", "fetch"):
            mine = [e for e in events if e["id"] == ids[name]]
            at = {e["event"]: e["mono_ns"] for e in reversed(mine)}  # the first of each
            last_back = max(e["mono_ns"] for e in mine if e["event"] == "TaskReturned")
            assert at["TaskStarted"] <= at["TaskShipped"] <= at["TaskReturned"] <= last_back
            finished = next(e["mono_ns"] for e in mine if e["event"] in ("TaskCompleted", "TaskFailed"))
            assert last_back <= finished
            for e in mine:
                if e["event"] == "TaskReturned":
                    assert e["shipped_mono_ns"] < e["mono_ns"]
        assert _trace.read_jsonl(str(log_path)) == json.loads(json.dumps(events))

        # -- the Chrome trace: a track per executor, one slice per submission -------------------------
        doc = json.loads(json_path.read_text())
        validate_chrome_trace(doc)
        evs = doc["traceEvents"]
        names = {e["tid"]: e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
        assert {"executor processes", "executor threaded", loop} <= set(names.values()), names
        assert any(n.startswith("worker ") for n in names.values())
        slices = [e for e in evs if e["ph"] == "X"]
        elsewhere = collections.defaultdict(list)
        for s in slices:
            assert set(s["args"]) >= {"id", "name", "kind", "workflow_id", "parent_id", "state", "attempts", "error"}
            assert s["args"]["workflow_id"] == "wf-x"
            if not names[s["tid"]].startswith("worker "):
                elsewhere[short(s["name"])].append(s)
        assert sorted(elsewhere) == ["fetch", "flaky", "remote", "threaded"]
        (r,) = elsewhere["remote"]
        assert place(names[r["tid"]]) == "executor processes" and r["args"]["executor"] == "executor processes"
        assert r["args"]["outcome"] == "succeeded" and r["args"]["state"] == "succeeded" and r["dur"] >= 20_000 * 0.9
        flaky_slices = sorted(elsewhere["flaky"], key=lambda s: s["ts"])
        assert [s["args"]["attempt"] for s in flaky_slices] == [1, 2]
        assert all(s["args"]["outcome"] == "failed" and s["args"]["error"] == "ValueError: remote boom"
                   and s["args"]["attempts"] == 2 for s in flaky_slices)
        assert place(names[elsewhere["threaded"][0]["tid"]]) == "executor threaded"
        (f,) = elsewhere["fetch"]
        assert place(names[f["tid"]]) == loop and f["dur"] >= 10_000 * 0.9
        # The slice is the interval from shipped to returned, as in the log.
        t0 = min(e.get("shipped_mono_ns") or e["mono_ns"] for e in events)
        ret = next(e for e in events if e["event"] == "TaskReturned" and e["id"] == ids["remote"])
        assert abs(r["ts"] - (ret["shipped_mono_ns"] - t0) / 1000) < 0.01
        assert abs(r["ts"] + r["dur"] - (ret["mono_ns"] - t0) / 1000) < 0.01
        # Arrows: every flow start and end lies in a slice on its track; each body that went elsewhere
        # has one from the worker that handed it over; fetch's child has one from the loop's track.
        for e in (e for e in evs if e["ph"] in "sf"):
            assert any(x["tid"] == e["tid"] and x["ts"] <= e["ts"] <= x["ts"] + x["dur"] for x in slices), e
        ships = [e for e in evs if e["ph"] == "f" and e["cat"] == "ship"]
        assert sorted(place(names[e["tid"]]) for e in ships) == sorted(
            ["executor processes", "executor processes", "executor threaded", loop])
        starts = {e["id"]: e for e in evs if e["ph"] == "s"}
        from_loop = [e for e in evs if e["ph"] == "f" and e["cat"] == "parent" and place(names[starts[e["id"]]["tid"]]) == loop]
        assert len(from_loop) == 1
        assert names[from_loop[0]["tid"]].startswith("worker ")  # fetch's child ran on a worker
        # The converter of a recorded log makes the same trace.
        assert _trace.chrome_trace(_trace.read_jsonl(str(log_path))) == json.loads(json.dumps(_trace.chrome_trace(events)))

        # -- the report carries the same rows ---------------------------------------------------------
        data = _report._data(events)
        assert set(data["tracks"]) == {n for n in names.values() if not n.startswith(("worker ", "other"))}
        rm = {short(x["name"]): x["rm"] for x in data["executions"] if "rm" in x}
        assert sorted(rm) == ["fetch", "flaky", "remote", "threaded"]
        assert [a[3:] for a in rm["flaky"]] == [[1, "failed"], [2, "failed"]]
        html = html_path.read_text()
        assert '"tracks":[' in html and "executor processes" in html
    finally:
        eng.shutdown(wait=True)
        threads.shutdown()


def test_a_body_still_away_or_stopped_when_the_trace_ends(tmp_path):
    """A body not back when the block ends is a slice to the end of the recording (outcome "not
    back"); one stopped by its execution's timeout ends with outcome "cancelled" when it was."""
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    eng = distaff.Engine(processes=2)
    try:
        slow = eng.task(executor="processes", name="slow")(announce_then_wait)
        stopped = eng.task(executor="processes", name="stopped", timeout=0.3)(wait_for_file)
        with eng.trace(tmp_path / "run.json"), eng.trace(tmp_path / "run.jsonl") as t:
            ex = slow.submit(started, gate)
            st = stopped.submit(str(tmp_path / "never"))
            with pytest.raises(TimeoutError):
                st.result(timeout=120)
            wait_for_file(started)  # the slow body runs in a process: it was shipped inside the block
        open(gate, "w").close()
        assert ex.result(timeout=120) is True
        ev = collections.Counter((short(e["name"]), e["event"], e.get("outcome")) for e in t.events
                                 if e["event"] in ("TaskShipped", "TaskReturned"))
        assert ev[("stopped", "TaskShipped", None)] == 1 and ev[("stopped", "TaskReturned", "cancelled")] == 1
        doc = json.loads((tmp_path / "run.json").read_text())
        validate_chrome_trace(doc)
        names = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
        away = {short(e["name"]): e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "elsewhere"}
        assert away["stopped"]["args"]["outcome"] == "cancelled"
        assert place(names[away["stopped"]["tid"]]) == "executor processes"
        assert ev[("slow", "TaskShipped", None)] == 1 and not ev[("slow", "TaskReturned", "succeeded")]
        assert away["slow"]["args"]["outcome"] == "not back" and away["slow"]["args"]["state"] == "running"
        last = max(e["ts"] + e.get("dur", 0) for e in doc["traceEvents"] if e["ph"] in "Xi")
        assert abs(away["slow"]["ts"] + away["slow"]["dur"] - last) < 1.0  # to the end of the recording
    finally:
        eng.shutdown(wait=True)


def test_an_async_body_submitted_from_a_running_loop_is_on_that_loops_track(tmp_path):
    """An async def body submitted from a running loop runs there: its track is named after the
    loop's thread, and what it submits has its parent arrow from that track."""
    eng = distaff.Engine(workers=1)
    try:
        @eng.task()
        def leaf(i):
            return i

        state = {"in": 0, "all_in": None}

        @eng.task()
        async def step(i):
            state["in"] += 1  # on the one loop: no race
            if state["in"] == 3:
                state["all_in"].set()
            await state["all_in"].wait()  # all three are on the loop at once
            return await leaf.submit(i)

        async def main():
            state["all_in"] = asyncio.Event()
            with eng.trace(tmp_path / "run.json"), eng.trace(tmp_path / "run.jsonl") as t:
                assert await asyncio.gather(*(step.submit(i) for i in range(3))) == [0, 1, 2]
            return t

        t = asyncio.run(main())
        here = "asyncio loop (MainThread)"
        back = [e for e in t.events if e["event"] == "TaskReturned"]
        assert len(back) == 3 and all(e["executor"] == here and e["outcome"] == "succeeded" for e in back)
        doc = json.loads((tmp_path / "run.json").read_text())
        validate_chrome_trace(doc)
        evs = doc["traceEvents"]
        names = {e["tid"]: e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
        steps = [e for e in evs if e["ph"] == "X" and e["cat"] == "elsewhere"]
        assert len(steps) == 3 and {place(names[e["tid"]]) for e in steps} == {here}
        # Three bodies on the loop at once: three tracks of it, none of whose slices overlap.
        assert len({e["tid"] for e in steps}) == 3
        starts = {e["id"]: e for e in evs if e["ph"] == "s"}
        from_loop = [e for e in evs if e["ph"] == "f" and e["cat"] == "parent"
                     and place(names[starts[e["id"]]["tid"]]) == here]
        assert len(from_loop) == 3  # step -> leaf, each from its slice on the loop's track
    finally:
        eng.shutdown()


def test_each_attempt_of_an_async_body_is_a_slice_on_its_loops_track(tmp_path):
    """Retries of an async def body go through the elsewhere mechanism, as an executor's do: one
    TaskShipped / TaskReturned pair per attempt, numbered, on the loop's track."""
    eng = distaff.Engine(workers=1)
    try:
        calls = []

        @eng.task(retries=2)
        async def flaky():
            calls.append(1)
            await asyncio.sleep(0)
            if len(calls) < 3:
                raise ValueError(f"try {len(calls)}")
            return "ok"

        with eng.trace(tmp_path / "run.json"), eng.trace(tmp_path / "run.jsonl") as t:
            assert flaky.submit().result(timeout=60) == "ok"
        loop = "asyncio loop (distaff-event-loop)"
        away = [(e["event"], e["executor"], e["attempt"], e.get("outcome")) for e in t.events
                if e["event"] in ("TaskShipped", "TaskReturned")]
        assert away == [
            ("TaskShipped", loop, 1, None), ("TaskReturned", loop, 1, "failed"),
            ("TaskShipped", loop, 2, None), ("TaskReturned", loop, 2, "failed"),
            ("TaskShipped", loop, 3, None), ("TaskReturned", loop, 3, "succeeded"),
        ], away
        doc = json.loads((tmp_path / "run.json").read_text())
        validate_chrome_trace(doc)
        slices = sorted((e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "elsewhere"),
                        key=lambda e: e["ts"])
        assert [(s["args"]["attempt"], s["args"]["outcome"]) for s in slices] == [
            (1, "failed"), (2, "failed"), (3, "succeeded")]
    finally:
        eng.shutdown()
