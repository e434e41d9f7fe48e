"""engine.trace(path) / distaff.trace(path): the event log, the Chrome trace, the report, the CLI.
(The report in a real browser: test_report_browser.py.)"""

import asyncio
import collections
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
from distaff import _trace

LIFECYCLE = ("TaskCreated", "TaskQueued", "TaskStarted", "TaskBodyEnded")
TERMINAL = ("TaskCompleted", "TaskFailed", "TaskCanceled")


def short(name):
    return name.rsplit(".", 1)[-1] if name else name


def by_id(events):
    out = collections.defaultdict(list)
    for e in events:
        out[e["id"]].append(e)
    return out


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def eng():
    e = distaff.Engine(workers=2)
    yield e
    e.shutdown()


def test_jsonl_events_of_a_workflow_with_dependencies_a_retry_and_a_failure(eng, tmp_path):
    gate = threading.Event()

    @eng.task()
    def leaf(i):
        return i

    @eng.task(retries=1)
    def flaky():
        raise ValueError("boom")

    @eng.task(wait=True)
    def combine(a, b):
        return a.result() + b.result()

    @eng.workflow()
    def flow():
        a, b = leaf.submit(1), leaf.submit(2)
        f = flaky.submit()
        c = combine.submit(a, b)
        assert c.result() == 3  # suspends the workflow on c
        gate.set()
        return f

    path = tmp_path / "run.jsonl"
    with eng.trace(path) as t:
        with eng.workflow_scope("wf-a"):
            root = flow.submit()
        with pytest.raises(ValueError, match="boom"):
            root.result()
    assert gate.is_set()
    events = read_jsonl(path)
    assert events == json.loads(json.dumps(t.events))  # the file is what the trace holds
    assert all(set(e) >= {"event", "id", "name", "workflow_id", "parent_id", "worker", "timestamp", "mono_ns"}
               for e in events)
    assert [e["mono_ns"] for e in events] == sorted(e["mono_ns"] for e in events)
    ids = by_id(events)
    names = {i: short(evs[0]["name"]) for i, evs in ids.items()}
    assert sorted(names.values()) == ["combine", "flaky", "flow", "leaf", "leaf"]
    assert {e["workflow_id"] for e in events} == {"wf-a"}
    root_id = root.id
    for i, evs in ids.items():
        kinds = [e["event"] for e in evs]
        assert kinds[0] == "TaskCreated" and kinds.count("TaskCreated") == 1
        assert kinds.count("TaskStarted") == 1 and kinds.count("TaskBodyEnded") == 1
        assert sum(kinds.count(k) for k in TERMINAL) == 1
        assert kinds.count("TaskSuspended") == kinds.count("TaskResumed")
        if i != root_id:
            assert evs[0]["parent_id"] == root_id and evs[0]["worker"] is not None  # submitted by the body
    assert ids[root_id][0]["worker"] is None  # submitted from the main thread
    assert ids[root_id][0]["kind"] == "workflow"
    # The dependent is queued only when its dependencies are done; its record names them.
    (comb,) = [evs for evs in ids.values() if short(evs[0]["name"]) == "combine"]
    leaves = sorted(i for i, n in names.items() if n == "leaf")
    assert sorted(comb[0]["dependencies"]) == leaves
    queued = next(e for e in comb if e["event"] == "TaskQueued")
    for leaf_id in leaves:
        done = next(e for e in ids[leaf_id] if e["event"] == "TaskCompleted")
        assert done["mono_ns"] <= queued["mono_ns"]
    # The workflow waited on combine: suspended blocked on it, resumed on the same worker.
    susp = [e for e in ids[root_id] if e["event"] == "TaskSuspended"]
    assert comb[0]["id"] in [e["blocked_on"] for e in susp]
    res = [e for e in ids[root_id] if e["event"] == "TaskResumed"]
    assert {e["worker"] for e in susp} == {e["worker"] for e in res}
    # The failure: error, traceback and attempts (two: one retry).
    (fl,) = [evs for evs in ids.values() if short(evs[0]["name"]) == "flaky"]
    failed = fl[-1] if fl[-1]["event"] == "TaskFailed" else next(e for e in fl if e["event"] == "TaskFailed")
    assert failed["state"] == "failed" and failed["error"] == "ValueError: boom" and failed["attempts"] == 2
    assert "raise ValueError(\"boom\")" in failed["traceback"] and "Traceback" in failed["traceback"]
    # As it was when the execution failed: the test's own root.result() re-raised the same object
    # afterwards, which adds its frame to the exception's __traceback__ but not to this one.
    assert "root.result()" not in failed["traceback"]
    # The root forwards to the failed execution: it fails with the same error.
    assert next(e for e in ids[root_id] if e["event"] == "TaskFailed")["error"] == "ValueError: boom"


def test_a_trace_of_100k_executions_has_100k_of_each_lifecycle_event(eng, tmp_path):
    @eng.task()
    def noop():
        return None

    n = 100_000
    path = tmp_path / "big.jsonl"
    with eng.trace(path):
        exs = [noop.submit() for _ in range(n)]
        distaff.wait(exs)
    counts = collections.Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            counts[json.loads(line)["event"]] += 1
    for k in LIFECYCLE + ("TaskCompleted",):
        assert counts[k] == n, (k, counts)
    assert counts["TaskFailed"] == counts["TaskCanceled"] == 0


def test_chrome_trace_tracks_slices_flows_and_args(eng, tmp_path):
    @eng.task()
    def child():
        distaff.sleep(0.001)
        return 1

    @eng.task(wait=True)
    def after(c):
        return c.result()

    @eng.workflow()
    def flow():
        c = child.submit()
        distaff.sleep(0.001)  # the workflow suspends: two slices on its worker
        return after.submit(c).result()

    path = tmp_path / "run.json"
    with eng.trace(path):
        with eng.workflow_scope("wf-c"):
            assert flow.submit().result() == 1
    doc = json.loads(path.read_text())
    evs = doc["traceEvents"]
    threads = {e["tid"]: e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    assert threads[0] == "other threads" and all(threads[t] == f"worker {t - 1}" for t in threads if t)
    slices = [e for e in evs if e["ph"] == "X"]
    per_name = collections.Counter(short(e["name"]) for e in slices)
    assert per_name["flow"] >= 2 and per_name["child"] == 2 and per_name["after"] == 1
    for s in slices:
        assert s["tid"] in threads and s["dur"] > 0
        assert set(s["args"]) >= {"id", "name", "kind", "workflow_id", "parent_id", "state", "attempts", "error"}
        assert s["args"]["workflow_id"] == "wf-c" and s["args"]["state"] == "succeeded"
    flows = collections.Counter((e["ph"], e["cat"]) for e in evs if e["ph"] in "sf")
    assert flows[("s", "parent")] == flows[("f", "parent")] == 2  # flow -> child, flow -> after
    assert flows[("s", "dependency")] == flows[("f", "dependency")] == 1  # child -> after
    # Every flow start lies inside a slice on its track (Perfetto binds it to that slice).
    for s in (e for e in evs if e["ph"] == "s"):
        assert any(x["tid"] == s["tid"] and x["ts"] <= s["ts"] <= x["ts"] + x["dur"] for x in slices), s


def test_the_trace_is_written_when_a_workflow_fails_or_is_cancelled(eng, tmp_path):
    started = threading.Event()

    @eng.task()
    def blocked():
        started.set()
        distaff.sleep(60)

    @eng.workflow()
    def failing():
        blocked.submit()
        raise RuntimeError("workflow broke")

    path = tmp_path / "fail.jsonl"
    with pytest.raises(RuntimeError, match="workflow broke"):
        with eng.trace(path):
            with eng.workflow_scope("wf-f"):
                failing.submit().result()
    events = read_jsonl(path)
    assert any(e["event"] == "TaskFailed" and e["error"] == "RuntimeError: workflow broke" for e in events)
    assert started.wait(30)
    path2 = tmp_path / "cancel.jsonl"
    with eng.trace(path2):
        assert eng.cancel_workflow("wf-f") == 1
    ev2 = read_jsonl(path2)
    cancelled = [e for e in ev2 if e["event"] == "TaskCanceled"]
    assert [short(e["name"]) for e in cancelled] == ["blocked"]  # named from the history, submitted before
    assert cancelled[0]["workflow_id"] == "wf-f"


def test_ctrl_c_during_a_wait_still_writes_the_trace(tmp_path):
    path = tmp_path / "int.jsonl"
    code = textwrap.dedent(f"""
        import sys, threading, distaff
        eng = distaff.Engine()
        started = threading.Event()

        @eng.task()
        def slow():
            started.set()
            distaff.sleep(60)

        with eng.trace({str(path)!r}):
            done = [eng.submit(lambda i=i: i).result() for i in range(3)]
            e = slow.submit()
            started.wait()
            print("ready", flush=True)
            e.result()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode in (-signal.SIGINT, 130, 1), (p.returncode, err)
    assert "KeyboardInterrupt" in err
    events = read_jsonl(path)
    kinds = collections.Counter(e["event"] for e in events)
    assert kinds["TaskCompleted"] == 3 and kinds["TaskCreated"] == 4
    assert any(e["event"] == "TaskStarted" and short(e["name"]) == "slow" for e in events)


def test_recording_is_per_engine_and_traces_nest(tmp_path):
    a, b = distaff.Engine(), distaff.Engine()
    try:
        with a.trace(tmp_path / "outer.jsonl") as outer:
            a.submit(lambda: 1).result()
            with a.trace(tmp_path / "inner.jsonl") as inner, b.trace(tmp_path / "b.jsonl") as tb:
                ea = a.submit(lambda: 2)
                eb = b.submit(lambda: 3)
                assert ea.result() + eb.result() == 5
            a.submit(lambda: 4).result()
        # Executions created inside each block (the body of the one before may still end inside
        # the next block: that event belongs to it, as it happened there).
        ids = lambda t: {e["id"] for e in t.events if e["event"] == "TaskCreated"}  # noqa: E731
        assert ids(inner) == {ea.id} and ids(tb) == {eb.id}
        assert ea.id in ids(outer) and eb.id not in ids(outer) and len(ids(outer)) == 3
        assert {e["id"] for e in tb.events} == {eb.id}
        assert _trace._hubs == {}  # nothing observes either engine any more
        with a.trace(tmp_path / "again.json"):  # and recording can start again
            a.submit(lambda: 5).result()
    finally:
        a.shutdown()
        b.shutdown()


def test_distaff_trace_uses_the_default_engine_and_async_with(tmp_path):
    @distaff.task()
    def double(x):
        return 2 * x

    with distaff.trace(tmp_path / "d.jsonl") as t:
        assert double(21) == 42
    assert [e["event"] for e in t.events if short(e["name"]) == "double"][-2:] == ["TaskCompleted", "TaskBodyEnded"]

    async def main():
        async with distaff.trace(tmp_path / "a.jsonl") as ta:
            assert await double.submit(2) == 4
        return ta

    ta = asyncio.run(main())
    assert any(e["event"] == "TaskCompleted" for e in ta.events)


def test_bad_trace_arguments_fail_at_the_call(eng, tmp_path):
    with pytest.raises(ValueError, match=r"\.json.*\.jsonl.*\.html"):
        eng.trace(tmp_path / "run.txt")
    with pytest.raises(TypeError, match="file path"):
        eng.trace(42)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        eng.trace(tmp_path / "missing" / "run.json")
    with pytest.raises(TypeError, match="distaff.Engine"):
        distaff.trace(tmp_path / "x.json", engine="engine")
    t = eng.trace(tmp_path / "x.json")
    with t:
        with pytest.raises(RuntimeError, match="already recording"):
            t.__enter__()


def test_html_report_is_self_contained(eng, tmp_path):
    @eng.task()
    def bad():
        raise KeyError("</script><b>x</b>")

    path = tmp_path / "r.html"
    with eng.trace(path):
        with pytest.raises(KeyError):
            bad()
    html = path.read_text()
    assert "<script src" not in html and "<link" not in html and "http://" not in html.replace(
        "http://www.w3.org/2000/svg", "")
    assert "https://" not in html
    assert html.count("</script>") == 2  # the error text cannot close the data block


def test_cli_converts_a_recorded_log(eng, tmp_path):
    @eng.task()
    def work(i):
        if i == 2:
            raise ValueError("two")
        return i

    log = tmp_path / "run.jsonl"
    with eng.trace(log):
        for i in range(4):
            try:
                work(i)
            except ValueError:
                pass
    run = lambda *a: subprocess.run([sys.executable, "-m", "distaff", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=120, cwd=tmp_path)
    r = run("report", str(log), "-o", str(tmp_path / "out.html"))
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "out.html").read_text()
    assert "ValueError: two" in html and "distaff-data" in html
    r = run("trace", str(log))
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "run.json").read_text())
    assert sum(1 for e in doc["traceEvents"] if e["ph"] == "X" and short(e["name"]) == "work") == 4
    r = run("--help")
    assert r.returncode == 0 and "report" in r.stdout and "trace" in r.stdout
    r = run()
    assert r.returncode == 2 and "report" in r.stdout
    r = run("report", str(tmp_path / "nope.jsonl"))
    assert r.returncode == 1 and "nope.jsonl" in r.stderr
    (tmp_path / "bad.jsonl").write_text('{"not": "an event"}\n')
    r = run("trace", str(tmp_path / "bad.jsonl"))
    assert r.returncode == 1 and "bad.jsonl:1: not a distaff event" in r.stderr
    r = run("trace", str(log), "-o", str(tmp_path / "x.html"))
    assert r.returncode == 2 and "writes a .json file" in r.stderr
    # The Chrome trace given instead of the log: says so.
    r = run("report", str(tmp_path / "run.json"), "-o", str(tmp_path / "y.html"))
    assert r.returncode == 1 and "a Chrome trace" in r.stderr and ".jsonl" in r.stderr, r.stderr
    # A last line cut short (the writer died mid-line) is skipped; one cut short inside is an
    # error naming the place.
    text = log.read_text()
    (tmp_path / "cut.jsonl").write_text(text + text.splitlines()[0][:25])
    r = run("report", str(tmp_path / "cut.jsonl"), "-o", str(tmp_path / "cut.html"))
    assert r.returncode == 0, r.stderr
    (tmp_path / "cut.jsonl").write_text(text.splitlines()[0][:25] + "\n" + text)
    r = run("report", str(tmp_path / "cut.jsonl"), "-o", str(tmp_path / "cut.html"))
    assert r.returncode == 1 and "cut.jsonl:1: not a JSON event line" in r.stderr and "column" in r.stderr, r.stderr
    # Bytes that are not UTF-8: one line naming the file and the line; a missing output directory:
    # one line naming the output — no traceback either way.
    (tmp_path / "binary.jsonl").write_bytes(b'{"a": 1}\n\xff\xfe\n')
    r = run("report", str(tmp_path / "binary.jsonl"))
    assert r.returncode == 1 and "binary.jsonl:2: not UTF-8 text" in r.stderr and "Traceback" not in r.stderr
    r = run("report", str(log), "-o", str(tmp_path / "no-such-dir" / "x.html"))
    assert r.returncode == 1 and "cannot write" in r.stderr and "x.html" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("line, complaint", [
    ('{"event":"TaskStarted","id":1,"mono_ns":"5"}', "'mono_ns' must be a monotonic time in integer nanoseconds"),
    ('{"event":"TaskStarted","id":1,"mono_ns":null}', "'mono_ns' must be a monotonic time"),
    ('{"event":"TaskStarted","id":[1],"mono_ns":5}', "'id' must be an execution id"),
    ('{"event":"TaskStarted","id":true,"mono_ns":5}', "'id' must be an execution id"),
    ('{"event":"TaskStarted","id":1,"mono_ns":5,"worker":"w"}', "'worker' must be a worker index"),
    ('{"event":7,"id":1,"mono_ns":5}', "'event' must be an event name"),
    ('{"event":"TaskCreated","id":1,"mono_ns":5,"dependencies":["a"]}', "'dependencies' must be a list"),
    ("[" * 100_000 + "]" * 100_000, "not a distaff event (JSON nested too deeply)"),
], ids=lambda v: v[:60] if isinstance(v, str) else v)
def test_cli_names_the_line_and_field_of_a_malformed_event(tmp_path, line, complaint):
    # Each of these gave a Python traceback (KeyError, TypeError, ValueError) from deep in the
    # conversion; now one line naming the file, the line and the field, exit status 1.
    log = tmp_path / "m.jsonl"
    log.write_text('{"event":"TaskCreated","id":1,"mono_ns":1}\n' + line + "\n")
    for command, suffix in (("report", ".html"), ("trace", ".json")):
        r = subprocess.run([sys.executable, "-m", "distaff", command, str(log), "-o", str(tmp_path / ("out" + suffix))],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"m.jsonl:2: {complaint}" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_converts_minimal_lines_and_unknown_event_names(tmp_path):
    # Only 'event', 'id' and 'mono_ns' are required (no 'timestamp'); an event name this version
    # does not know is kept and ignored, so a log from a newer version still converts.
    log = tmp_path / "m.jsonl"
    log.write_text('{"event":"TaskCreated","id":1,"mono_ns":5}\n{"event":"TaskFromTheFuture","id":1,"mono_ns":6}\n')
    for command, suffix in (("report", ".html"), ("trace", ".json")):
        r = subprocess.run([sys.executable, "-m", "distaff", command, str(log), "-o", str(tmp_path / ("out" + suffix))],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "wrote" in r.stdout, r.stdout + r.stderr
    # Ignored: it makes no execution of its own (an outsider's find: a phantom "running" one, and
    # its time moved the origin).
    log.write_text('{"event":"TaskCreated","id":2,"mono_ns":5,"name":"x"}\n{"event":"TaskCompleted","id":2,"mono_ns":9}\n'
                   '{"event":"FutureEvent","id":1,"mono_ns":1}\n')
    exs, t0 = _trace.executions(_trace.read_jsonl(str(log)))
    assert [(x["id"], x["state"]) for x in exs] == [(2, "succeeded")] and t0 == 5


def report_data(html: str) -> dict:
    start = html.index('<script id="distaff-data" type="application/json">') + len('<script id="distaff-data" type="application/json">')
    return json.loads(html[start:html.index("</script>", start)])


def test_two_traces_of_one_path_at_once_each_write_a_whole_file(eng, tmp_path):
    # An outsider's find: both writers used one temporary name; the file came out corrupt and one
    # trace failed with FileNotFoundError.
    @eng.task()
    def noop(i):
        return i

    path = tmp_path / "same.jsonl"
    both_recorded = threading.Barrier(2)
    errors = []

    def run():
        try:
            with eng.trace(path):
                distaff.wait([noop.submit(i) for i in range(5000)])
                both_recorded.wait(30)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    events = read_jsonl(path)  # whole: every line parses
    assert sum(e["event"] == "TaskCompleted" for e in events) >= 5000
    assert os.listdir(tmp_path) == ["same.jsonl"]


def test_a_body_not_back_when_the_block_ends_runs_to_the_end_of_the_recording(eng, tmp_path):
    # An outsider's find: its slice ended at the last event (0 ms long), and the report's span too.
    from concurrent.futures import ThreadPoolExecutor

    entered, gate = threading.Event(), threading.Event()

    def body():
        entered.set()
        gate.wait(30)

    with ThreadPoolExecutor(1) as pool:
        away = eng.task(executor=pool)(body)
        try:
            with eng.trace(tmp_path / "run.json") as t, eng.trace(tmp_path / "run.html"):
                away.submit()
                assert entered.wait(30)
                time.sleep(0.2)  # the block goes on 200 ms after the last event
        finally:
            gate.set()
    slices = [e for e in json.loads((tmp_path / "run.json").read_text())["traceEvents"] if e.get("cat") == "elsewhere"]
    assert len(slices) == 1 and slices[0]["args"]["outcome"] == "not back"
    assert slices[0]["dur"] >= 200_000  # µs
    data = report_data((tmp_path / "run.html").read_text())
    (rm,) = data["executions"][0]["rm"]
    assert rm[4] is None and rm[2] - rm[1] >= 200e6 and data["end"] >= rm[2]
    assert all(e["event"].startswith("Task") for e in t.events)  # no event of its own for the end


def test_a_path_that_cannot_be_written_fails_at_the_call(eng, tmp_path):
    (tmp_path / "adir.json").mkdir()
    with pytest.raises(IsADirectoryError, match="adir.json"):
        eng.trace(tmp_path / "adir.json")
    with pytest.raises(OSError, match="cannot write here"):
        eng.trace("/proc/distaff-run.jsonl")  # refused even to root
    assert sorted(os.listdir(tmp_path)) == ["adir.json"]  # the check left nothing behind


def test_a_failed_write_at_the_exit_goes_beside_the_blocks_own_exception_and_leaves_no_file(eng, tmp_path):
    import shutil

    @eng.task()
    def bad():
        raise ValueError("the real problem")

    sub = tmp_path / "sub"
    sub.mkdir()
    with pytest.warns(RuntimeWarning, match="could not write"):
        with pytest.raises(ValueError, match="the real problem") as err:
            with eng.trace(sub / "run.jsonl"):
                shutil.rmtree(sub)  # gone by the exit
                bad()
    assert any("could not write" in n and "run.jsonl" in n for n in err.value.__notes__)
    # A block that ended well gets the write's error, naming the user's path; no temporary file
    # is left behind (the path became a directory: the final rename fails).
    path = tmp_path / "run.json"
    with pytest.raises(OSError) as err:
        with eng.trace(path):
            path.mkdir()
            (path / "keep").write_text("x")
    assert str(path) in str(err.value) and ".tmp-" not in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["run.json"]


def test_an_interrupt_while_the_trace_is_written_leaves_no_temporary_file(eng, tmp_path, monkeypatch):
    from distaff import _report

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(_report, "render", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with eng.trace(tmp_path / "run.html"):
            pass
    assert os.listdir(tmp_path) == []


def test_a_failures_recorded_traceback_is_the_one_it_failed_with(eng, tmp_path):
    # An outsider's find: the text was formatted at the block's exit, from exception objects the
    # caller had re-raised since (result() adds the caller's frames, an except block a context).
    @eng.task(timeout=0.05)
    def slow():
        distaff.sleep(30)

    @eng.task()
    def boom():
        raise KeyError("boom")

    @eng.task(wait=True)
    def dependent(x):
        return x

    def caller_frame(ex):
        return ex.result()

    with eng.trace(tmp_path / "run.jsonl") as t:
        s = slow.submit()
        b = boom.submit()
        d = dependent.submit(b)
        distaff.wait([s, d])
        for ex in (s, b, d):
            with pytest.raises(Exception):
                try:
                    raise OSError("unrelated")
                except OSError:
                    caller_frame(ex)
    tbs = {short(e["name"]): e["traceback"] for e in t.events if e["event"] == "TaskFailed"}
    assert set(tbs) == {"slow", "boom", "dependent"}
    for text in tbs.values():
        assert "caller_frame" not in text and "unrelated" not in text, text
    assert "TimeoutError" in tbs["slow"]
    assert 'raise KeyError("boom")' in tbs["boom"]
    assert 'raise KeyError("boom")' in tbs["dependent"] and "direct cause" in tbs["dependent"]
    assert tbs["dependent"].rstrip().splitlines()[-2].startswith("distaff._errors.DependencyError")


def test_async_with_trace_writes_off_the_loop(eng, tmp_path, monkeypatch):
    # Writing a big trace takes seconds: the loop's other tasks go on meanwhile. The write here
    # finishes only once a task on the loop has run during it.
    ran_during_the_write = threading.Event()
    real_write = _trace.write

    def write(*a, **k):
        assert ran_during_the_write.wait(30), "the loop was blocked during the write"
        return real_write(*a, **k)

    monkeypatch.setattr(_trace, "write", write)

    async def main():
        async def other():
            while not ran_during_the_write.is_set():
                await asyncio.sleep(0)
                if writing:
                    ran_during_the_write.set()

        writing = False
        side = asyncio.ensure_future(other())
        trace = eng.trace(tmp_path / "run.jsonl")
        async with trace:
            await eng.task()(lambda: 1).submit()
            writing = True
        await side

    asyncio.run(main())
    assert (tmp_path / "run.jsonl").exists()
