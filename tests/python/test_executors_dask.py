"""executor=<distributed.Client>: bodies on a real Dask LocalCluster (2 worker processes), one per module."""

import os
import time

import pytest

import distaff

distributed = pytest.importorskip("distributed")
pytest.importorskip("cloudpickle")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=40)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def where(x):
    return x, os.getpid()


def test_bodies_run_on_the_cluster_with_values_for_execution_arguments(client):
    with distaff.Engine(executors={"dask": client}) as eng:
        local = eng.task(name="local")(lambda v: v)
        remote = eng.task(executor="dask")(lambda a, xs, d: (a + sum(xs) + d["k"], os.getpid()))
        ex = remote.submit(local.submit(1), [local.submit(2), 3], {"k": local.submit(4)})
        value, pid = ex.result(timeout=120)
        assert value == 10 and pid != os.getpid()
        assert pid in set(client.run(os.getpid).values())
        assert ex.description["executor"] == "dask"
        # a client passed directly works too, named by its scheduler
        ex2 = eng.task(executor=client)(where).submit(5)
        assert ex2.result(timeout=120)[0] == 5
        assert ex2.description["executor"].startswith("dask(tcp://")


def test_exceptions_keep_type_message_and_gain_the_remote_traceback_retries_and_fallback(client):
    with distaff.Engine() as eng:
        @eng.task(executor=client, retries=1, fallback=lambda exc: ("fallback", type(exc).__name__, os.getpid()))
        def fails():
            raise ZeroDivisionError("remote division")

        ex = fails.submit()
        assert ex.result(timeout=120) == ("fallback", "ZeroDivisionError", os.getpid())
        assert ex.description["attempts"] == 2

        exc = eng.task(executor=client)(lambda: 1 / 0).submit().exception(timeout=120)
        assert type(exc) is ZeroDivisionError
        assert "raised on executor 'dask(tcp://" in exc.__notes__[-1]


def _sleep_until(gate, limit):
    import os
    import time

    deadline = time.monotonic() + limit
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_timeout_cancels_the_dask_future_and_engine_shutdown_leaves_the_client_running(client, tmp_path):
    eng = distaff.Engine()
    gate = str(tmp_path / "gate")
    slow = eng.task(executor=client, timeout=0.5, name="slow_on_dask")(_sleep_until)
    ex = slow.submit(gate, 30)
    assert isinstance(ex.exception(timeout=60), distaff.TimeoutError)
    # the future was cancelled (asynchronously, by a message to the scheduler): the client lets
    # go of its key
    deadline = time.monotonic() + 30
    while [k for k in client.futures if str(k).startswith("slow_on_dask-")]:
        assert time.monotonic() < deadline, "the Dask future of the timed-out execution was not cancelled"
        time.sleep(0.05)
    eng.shutdown(wait=True)
    # the body runs on in its worker thread (nothing interrupts it): let it end, so that the
    # module's later tests do not queue behind it on that worker
    open(gate, "w").close()
    assert client.submit(lambda: 7).result() == 7  # not ours to close


def test_cancel_of_a_running_body_ends_the_execution_at_once_the_worker_finishes_it_and_its_result_is_discarded(client, tmp_path):
    # What Dask can do (docs/executors.md): it runs a body in a worker thread, which nothing can
    # interrupt; the future is cancelled and the key released, the body runs on, its result is dropped.
    def gated(started, gate, finished):
        import os
        import time

        open(started, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        open(finished, "w").close()
        return "late"

    started, gate, finished = (str(tmp_path / n) for n in ("started", "gate", "finished"))
    with distaff.Engine() as eng:
        ex = eng.task(executor=client, name="gated_on_dask")(gated).submit(started, gate, finished)
        deadline = time.monotonic() + 60
        while not os.path.exists(started):
            assert time.monotonic() < deadline, "the body never started"
            time.sleep(0.01)
        assert ex.cancel() and ex.cancelled()  # the execution ends at once
        deadline = time.monotonic() + 30
        while [k for k in client.futures if str(k).startswith("gated_on_dask-")]:
            assert time.monotonic() < deadline, "the Dask future was not cancelled"
            time.sleep(0.01)
        assert not os.path.exists(finished)  # still running on its worker: not interrupted
        open(gate, "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(finished):  # the worker ran the body to its end
            assert time.monotonic() < deadline, "the body did not finish"
            time.sleep(0.01)
        assert ex.cancelled()  # its result was discarded
        assert eng.task(executor=client)(where).submit(1).result(timeout=60)[0] == 1


def test_a_trace_shows_the_bodies_on_the_dask_track(client, tmp_path):
    """engine.trace(): each body's time on the cluster is a slice on the `executor dask` tracks
    (docs/observability.md, "Bodies that run elsewhere")."""
    import json

    with distaff.Engine(executors={"dask": client}) as eng:
        sq = eng.task(executor="dask", name="sq")(lambda x: x * x)
        sq.submit(1).result(timeout=120)
        with eng.trace(tmp_path / "run.json"), eng.trace(tmp_path / "run.jsonl") as t:
            assert sum(e.result(timeout=120) for e in [sq.submit(i) for i in range(4)]) == 14
    back = [e for e in t.events if e["event"] == "TaskReturned"]
    assert len(back) == 4 and all(e["executor"] == "executor dask" and e["outcome"] == "succeeded" for e in back)
    doc = json.loads((tmp_path / "run.json").read_text())
    names = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    away = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "elsewhere"]
    assert len(away) == 4 and all(names[e["tid"]].split(" \u00b7 ")[0] == "executor dask" for e in away)
    assert all(e["args"]["executor"] == "executor dask" and e["args"]["attempt"] == 1 for e in away)


def odd_fails(i):
    if i % 7 == 3:
        raise ValueError(f"body {i}")
    return i * i


def test_bodies_submitted_together_ship_in_batches_and_each_keeps_its_own_outcome(client, request):
    """Jobs that queue while the shipping thread is busy go to the scheduler in one client.map
    (one update_graph per batch: W9 in docs/performance.md), and finished results come back in
    batched fetches; neither mixes up outcomes, and a failure fails only its own execution."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class CountGraphs(SchedulerPlugin):
        name = "distaff-test-count-graphs"

        def __init__(self):
            self.graphs, self.tasks = 0, 0

        def update_graph(self, scheduler, *, tasks=None, **kwargs):
            self.graphs += 1
            self.tasks += len(tasks or ())

    plugin = CountGraphs()
    scheduler = client.cluster.scheduler  # a LocalCluster's scheduler lives in this process
    scheduler.add_plugin(plugin)
    request.addfinalizer(lambda: scheduler.remove_plugin(name=plugin.name))
    n = 200
    with distaff.Engine() as eng:
        t = eng.task(executor=client)(odd_fails)
        exs = [t.submit(i) for i in range(n)]
        for i, ex in enumerate(exs):
            if i % 7 == 3:
                exc = ex.exception(timeout=120)
                assert type(exc) is ValueError and str(exc) == f"body {i}"
            else:
                assert ex.result(timeout=120) == i * i
    assert plugin.tasks == n
    # one per body without batching; the submitting loop outpaces a ship by far
    assert plugin.graphs <= n // 2, plugin.graphs


def test_done_callbacks_run_off_the_client_loop_and_may_call_dask_synchronously():
    """Results are awaited and fetched on the client's event loop, but the executions settle on
    distaff's collector thread: a done callback (run by the thread that finishes the execution)
    never runs on the loop, so it may make synchronous Dask calls. On the loop such a call would
    wait for the loop itself: a hang, hence a fresh interpreter with a deadline."""
    from conftest import run_python

    code = """
        import asyncio, threading
        import distaff
        from distributed import Client, LocalCluster

        def sq(x):
            return x * x

        def inc(x):
            return x + 1

        if __name__ == "__main__":
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=40)
            client = Client(cluster)
            got, done = [], threading.Event()
            n = 40

            def cb(ex):
                on_loop = asyncio._get_running_loop() is not None
                got.append((on_loop, client.submit(inc, ex.result(), pure=False).result(timeout=60)))
                if len(got) == n:
                    done.set()

            with distaff.Engine() as eng:
                t = eng.task(executor=client)(sq)
                for i in range(n):
                    t.submit(i).add_done_callback(cb)
                assert done.wait(120), len(got)
            assert not any(on_loop for on_loop, _ in got), got
            assert sorted(v for _, v in got) == sorted(i * i + 1 for i in range(n)), got
            print("CALLBACKS OK")
            client.close()
            cluster.close()
    """
    r = run_python(code, timeout=240)
    assert r.returncode == 0 and "CALLBACKS OK" in r.stdout, (r.stdout, r.stderr[-3000:])


def dies_if(i):
    if i == 3:
        os._exit(1)
    return i


def test_a_dask_level_failure_fails_its_execution_with_dasks_error_and_later_bodies_run():
    """A body whose Dask task fails as a task (here its worker process dies and the scheduler
    gives up: KilledWorker, allowed-failures=0) fails its execution with Dask's error, delivered
    like any outcome; the executions around it are not disturbed and later bodies run (on the
    worker the nanny restarted). (Tasks that were running or queued on the dying worker would
    count that death too: the failing body goes alone.)"""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=":0", silence_logs=50)
    c = distributed.Client(cluster)
    try:
        with distaff.Engine() as eng:
            t = eng.task(executor=c)(dies_if)
            assert [ex.result(timeout=120) for ex in [t.submit(i) for i in range(3)]] == [0, 1, 2]
            exc = t.submit(3).exception(timeout=120)
            assert type(exc).__name__ == "KilledWorker", repr(exc)
            assert [ex.result(timeout=120) for ex in [t.submit(i) for i in range(8) if i != 3]] == [0, 1, 2, 4, 5, 6, 7]
    finally:
        c.close()
        cluster.close()
