"""executor=: bodies in distaff's process pool and in concurrent.futures executors (docs/executors.md).
Dask and Ray have modules of their own (test_executors_dask.py, test_executors_ray.py)."""

import concurrent.futures
import os
import pickle
import threading
import time

import pytest

import distaff
from distaff.executors import ProcessPool
from conftest import process_gone, run_python

pytest.importorskip("cloudpickle")


@pytest.fixture(scope="module")
def eng():
    """One engine and its "processes" pool (2 workers) for the module: workers start once."""
    e = distaff.Engine(processes=2)
    yield e
    e.shutdown(wait=True)


def pid_of(x=None):
    return os.getpid()


def wait_for_file(path, timeout=30.0):
    """In a worker process: blocks until path exists (the test's gate; a file, the only thing a
    separate process and the test share)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError("gate never opened")
        time.sleep(0.01)
    return True


def write_pid_then_wait(path, gate):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    return wait_for_file(gate, 60)


def read_when_there(path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    with open(path) as f:
        return int(f.read())



@distaff.task
def module_level_task(x):
    return x + 1


class CountsPickles:
    """Counts how often it is serialized (in this process): the payloads made so far."""

    count = 0
    lock = threading.Lock()

    def __reduce__(self):
        with CountsPickles.lock:
            CountsPickles.count += 1
        return (CountsPickles, ())


def test_body_runs_in_another_process_and_the_description_names_it(eng):
    t = eng.task(executor="processes")(pid_of)
    ex = t.submit()
    assert ex.result(timeout=60) != os.getpid()
    d = ex.description
    assert d["executor"] == "processes"
    assert d["ran_on"].endswith(f"pid {ex.result()}")


def test_execution_arguments_arrive_as_values_also_inside_containers(eng):
    local = eng.task(name="local")(lambda v: v)
    remote = eng.task(executor="processes", name="combine")(lambda a, xs, d: (a, xs, d))
    ex = remote.submit(local.submit(1), [local.submit(2), 3], {"k": local.submit(4)})
    assert ex.result(timeout=60) == (1, [2, 3], {"k": 4})


def test_an_exception_keeps_type_and_message_and_gains_the_remote_traceback(eng):
    @eng.task(executor="processes")
    def fails(x):
        raise KeyError(f"no {x}")

    ex = fails.submit("key")
    exc = ex.exception(timeout=60)
    assert type(exc) is KeyError and exc.args == ("no key",)
    note = "\n".join(exc.__notes__)
    assert "raised on executor 'processes'" in note and "pid" in note
    assert "in fails" in note and "KeyError: 'no key'" in note


def test_an_unserializable_argument_fails_that_execution_with_a_TypeError_naming_it(eng):
    @eng.task(executor="processes", retries=2)
    def uses(x, lock):
        return x

    ex = uses.submit(1, threading.Lock())
    exc = ex.exception(timeout=60)
    assert type(exc) is distaff.SerializationError and isinstance(exc, TypeError)
    assert isinstance(exc, distaff.Error)
    assert "'lock'" in str(exc) and "cannot be serialized" in str(exc)
    assert ex.description.get("attempts", 1) == 1  # not retried: another attempt would fail alike
    assert uses.submit(2, None).result(timeout=60) == 2  # the pool is fine


def test_a_result_that_cannot_be_serialized_fails_that_execution_with_a_SerializationError(eng):
    @eng.task(executor="processes", retries=2)
    def makes_lock(x):
        return threading.Lock() if x else x

    ex = makes_lock.submit(1)
    exc = ex.exception(timeout=60)
    assert type(exc) is distaff.SerializationError and isinstance(exc, TypeError)
    assert "the result (lock) cannot be serialized" in str(exc)
    assert ex.description.get("attempts", 1) == 1  # the body ran: not retried, it would fail alike
    assert makes_lock.submit(0).result(timeout=60) == 0  # the worker is fine


def test_tasks_pickle_by_reference_and_a_remote_body_may_use_distaff(eng):
    assert pickle.loads(pickle.dumps(module_level_task)) is module_level_task

    @eng.task(executor="processes")
    def calls_a_task(t, x):
        return t(x), t.submit(x + 1).result()  # on the default engine of the worker process

    assert calls_a_task(module_level_task, 1) == (2, 3)


def test_a_dying_worker_fails_only_its_execution_and_queued_work_runs(eng, tmp_path):
    gate = str(tmp_path / "gate")
    waiter = eng.task(executor="processes")(wait_for_file)

    @eng.task(executor="processes")
    def dies(code):
        os._exit(code)

    waiters = [waiter.submit(gate) for _ in range(2)]  # both workers busy
    doomed = dies.submit(7)  # queued
    waiters += [waiter.submit(gate) for _ in range(3)]  # queued behind the one that will die
    open(gate, "w").close()
    exc = doomed.exception(timeout=60)
    assert isinstance(exc, distaff.WorkerLostError) and "exit status 7" in str(exc)
    assert [w.result(timeout=60) for w in waiters] == [True] * 5
    assert eng.task(executor="processes")(pid_of)() != os.getpid()


def test_a_worker_that_dies_leaving_a_process_it_forked_is_reported_at_once(eng, tmp_path):
    # An outsider's find (session 18): the forked helper inherited the worker's pipes, so their EOF
    # (the only sign of death then) came when the helper exited; the execution and the worker's slot
    # waited for it. The pool now also watches the process itself (a pidfd).
    gate = str(tmp_path / "gate")

    @eng.task(executor="processes")
    def forks_a_helper_then_dies(gate):
        if os.fork() == 0:  # a helper that outlives the worker, holding its pipes
            wait_for_file(gate, timeout=60)
            os._exit(0)
        os._exit(3)

    try:
        exc = forks_a_helper_then_dies.submit(gate).exception(timeout=30)  # the helper still runs
        assert isinstance(exc, distaff.WorkerLostError) and "exit status 3" in str(exc)
        assert [eng.task(executor="processes")(pid_of)() for _ in range(3)]  # both slots work
    finally:
        open(gate, "w").close()


def test_a_segfaulting_worker_fails_only_its_execution(eng):
    @eng.task(executor="processes")
    def segfaults():
        import ctypes

        ctypes.string_at(0)

    exc = segfaults.submit().exception(timeout=60)
    assert isinstance(exc, distaff.WorkerLostError) and "SIGSEGV" in str(exc)
    assert eng.task(executor="processes")(pid_of)() != os.getpid()


def test_a_lost_worker_is_retried_when_retries_allow(eng, tmp_path):
    marker = str(tmp_path / "died-once")

    @eng.task(executor="processes", retries=1)
    def dies_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        return "second attempt"

    ex = dies_once.submit(marker)
    assert ex.result(timeout=60) == "second attempt"
    assert ex.description["attempts"] == 2
    assert "WorkerLostError" in ex.description["attempt_errors"][0]["type"]


def test_retries_resubmit_and_the_fallback_runs_locally(eng):
    @eng.task(executor="processes", retries=2, fallback=lambda x, exc: (x, type(exc).__name__, os.getpid()))
    def always_fails(x):
        raise ValueError(os.getpid())

    ex = always_fails.submit(5)
    assert ex.result(timeout=60) == (5, "ValueError", os.getpid())
    assert ex.description["attempts"] == 3
    assert len(ex.description["attempt_errors"]) == 3


def test_timeout_terminates_the_worker_running_the_body_and_the_pool_replaces_it(eng, tmp_path):
    pidfile, gate = str(tmp_path / "pid"), str(tmp_path / "never")
    t = eng.task(executor="processes", timeout=1.0)(write_pid_then_wait)
    ex = t.submit(pidfile, gate)
    pid = read_when_there(pidfile)
    assert isinstance(ex.exception(timeout=60), distaff.TimeoutError)
    assert process_gone(pid), "the worker running the timed-out body is still alive"
    assert eng.task(executor="processes")(pid_of)() != pid


def test_cancel_and_workflow_scope_cancellation_stop_the_remote_body(eng, tmp_path):
    t = eng.task(executor="processes")(write_pid_then_wait)
    gate = str(tmp_path / "never")
    ex = t.submit(str(tmp_path / "p1"), gate)
    pid = read_when_there(str(tmp_path / "p1"))
    assert ex.cancel()
    assert ex.cancelled()
    assert process_gone(pid)
    with eng.workflow_scope() as wid:
        ex2 = t.submit(str(tmp_path / "p2"), gate)
    pid2 = read_when_there(str(tmp_path / "p2"))
    assert eng.cancel_workflow(wid) == 1
    assert ex2.cancelled() and process_gone(pid2)


def test_waiting_executions_hold_no_fiber_and_the_pool_serializes_only_what_it_ships(tmp_path):
    gate = str(tmp_path / "gate")
    with distaff.Engine(processes=2) as e:
        t = e.task(executor="processes")(lambda g, c: wait_for_file(g))
        CountsPickles.count = 0
        try:
            exs = [t.submit(gate, CountsPickles()) for _ in range(500)]
            # wait until both workers hold a body: then nothing else may have been serialized
            pool = e._executors.runner("processes")
            deadline = time.monotonic() + 30
            while (sum(w.job is not None for w in pool._workers) < 2 or e.stats()["fibers"]) \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            assert e.stats()["fibers"] == 0
            assert CountsPickles.count == 2, CountsPickles.count
        finally:
            open(gate, "w").close()
        assert all(x.result(timeout=120) for x in exs)
        assert CountsPickles.count == 500


def test_a_concurrent_futures_executor_gets_at_most_its_window_of_payloads(tmp_path):
    gate = str(tmp_path / "gate")
    with concurrent.futures.ProcessPoolExecutor(2) as pp, distaff.Engine() as e:
        t = e.task(executor=pp)(lambda g, c: wait_for_file(g))
        CountsPickles.count = 0
        try:
            exs = [t.submit(gate, CountsPickles()) for _ in range(1000)]
            runner = e._executors.runner(pp)
            deadline = time.monotonic() + 30
            while CountsPickles.count < runner.ahead and time.monotonic() < deadline:
                time.sleep(0.01)
            assert CountsPickles.count == runner.ahead == 32
        finally:
            open(gate, "w").close()
        assert all(x.result(timeout=120) for x in exs)
        assert CountsPickles.count == 1000
        ex = e.task(executor=pp)(pid_of).submit()
        ex.result(timeout=60)
        assert ex.description["executor"] == "ProcessPoolExecutor"


class CountingPool(concurrent.futures.ProcessPoolExecutor):
    """A real ProcessPoolExecutor that counts the calls made to it."""

    calls = 0

    def submit(self, fn, /, *args, **kwargs):
        type(self).calls += 1
        return super().submit(fn, *args, **kwargs)


def tiny_or_fail(i):
    if i % 97 == 0:
        raise ValueError(f"body {i} fails")
    return i * 2


def sleep_ms(ms):
    time.sleep(ms / 1000)
    return ms


def test_tiny_bodies_with_a_backlog_travel_in_chunks_and_each_keeps_its_own_outcome():
    """2,000 tiny bodies through a user's ProcessPoolExecutor: once they are seen to be tiny, the
    backlog ships in chunks (far fewer executor calls than bodies; bench W9), and a body that
    raises fails only its own execution, with its type, message and remote traceback."""
    CountingPool.calls = 0
    with CountingPool(2) as pp, distaff.Engine() as e:
        t = e.task(executor=pp)(tiny_or_fail)
        exs = [t.submit(i) for i in range(2000)]
        out = distaff.gather(*exs, return_exceptions=True).result(timeout=120)
        for i, r in enumerate(out):
            if i % 97 == 0:
                assert isinstance(r, ValueError) and str(r) == f"body {i} fails", r
                assert any("remote traceback" in n for n in r.__notes__)
                assert exs[i].state == "failed"
            else:
                assert r == i * 2
        assert CountingPool.calls < 1000, CountingPool.calls


def test_bodies_that_take_time_are_not_chunked():
    """Bodies of 20 ms each: one executor call per body, so the work spreads over the workers."""
    CountingPool.calls = 0
    with CountingPool(2) as pp, distaff.Engine() as e:
        t = e.task(executor=pp)(sleep_ms)
        assert distaff.gather(*[t.submit(20) for _ in range(100)]).result(timeout=120) == [20] * 100
        assert CountingPool.calls == 100


def test_cancelling_queued_executions_while_chunks_are_in_flight_settles_each_once():
    """Tiny bodies with a backlog (chunks in flight) and half of the executions cancelled at once:
    each ends cancelled or succeeded exactly once, and the engine settles."""
    with CountingPool(2) as pp, distaff.Engine() as e:
        t = e.task(executor=pp)(tiny_or_fail)
        distaff.gather(*[t.submit(i + 1) for i in range(500)], return_exceptions=True).result(timeout=120)  # learn: tiny
        exs = [t.submit(i + 1) for i in range(3000)]
        cancelled = [x for x in exs[::2] if x.cancel()]
        for x in exs:
            distaff.wait([x], timeout=120)
        for i, x in enumerate(exs):
            if x in cancelled:
                assert x.cancelled()
            elif (i + 1) % 97 == 0:
                assert isinstance(x.exception(), ValueError)
            else:
                assert x.result() == (i + 1) * 2
        assert e.wait_idle(timeout=60)


def test_thread_pools_and_protocol_objects_work_and_engine_shutdown_leaves_them_running():
    class Inline:
        """The smallest executor: submit(fn, *args) returning a concurrent.futures.Future."""

        def submit(self, fn, /, *args, **kwargs):
            f = concurrent.futures.Future()
            f.set_result(fn(*args, **kwargs))
            return f

    with concurrent.futures.ThreadPoolExecutor(2) as tp:
        e = distaff.Engine(executors={"threads": tp, "inline": Inline()})
        unpicklable = threading.Lock()  # in-process: nothing is serialized
        assert e.task(executor="threads")(lambda lock: threading.current_thread().name)(unpicklable).startswith(
            "ThreadPoolExecutor")
        assert e.task(executor="inline")(lambda x: x * 2)(21) == 42
        ex = e.task(executor="inline")(lambda: 1).submit()
        ex.result()
        assert ex.description["executor"] == "inline"
        e.shutdown()
        assert tp.submit(lambda: 5).result() == 5


def test_the_engines_own_pool_is_shut_down_with_it():
    e = distaff.Engine(processes=1)
    assert e.task(executor="processes")(pid_of)() != os.getpid()
    pids = e._executors.runner("processes").pids()
    assert len(pids) == 1
    e.shutdown(wait=True)
    assert all(process_gone(p) for p in pids)
    with pytest.raises(distaff.ShutdownError):
        e.task(executor="processes")(pid_of).submit()


def test_bad_executor_values_fail_at_decoration_or_submit():
    with pytest.raises(TypeError, match="workflow orchestrates locally"):
        distaff.workflow(executor="processes")(lambda: 1)
    with pytest.raises(TypeError, match="submit"):
        distaff.task(executor=42)(lambda: 1)
    with pytest.raises(TypeError, match="class"):
        distaff.task(executor=concurrent.futures.ThreadPoolExecutor)(lambda: 1)
    with pytest.raises(ValueError, match="processes must be at least 1"):
        distaff.Engine(processes=0)
    with pytest.raises(TypeError, match="executors"):
        distaff.Engine(executors={"x": object()})
    with distaff.Engine() as e:
        with pytest.raises(ValueError, match="no executor named 'gpu'"):
            e.task(executor="gpu")(lambda: 1).submit()
        with pytest.raises(TypeError, match="missing 1 required positional argument"):
            e.task(executor="processes")(lambda x: x).submit()


def test_main_module_functions_lambdas_and_closures_run_and_exit_does_not_hang():
    r = run_python(
        """
        import os, distaff

        def square(x):
            return x * x

        def make_adder(n):
            return lambda x: x + n

        eng = distaff.Engine(processes=2)
        sq = eng.task(executor="processes")(square)
        add = eng.task(executor="processes", name="add")(make_adder(10))
        print("square:", sq(7), "closure:", add(5))
        # left running at exit: the engine waits for it, then stops its pool
        pending = sq.submit(9)
        pids = eng._executors.runner("processes").pids()
        print("pids", *pids)
        """,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "square: 49 closure: 15" in r.stdout
    pids = [int(p) for p in r.stdout.split("pids")[1].split()]
    assert all(process_gone(p, 10) for p in pids)


def test_10k_executions_in_flight_cost_under_2_kib_each():
    r = run_python(
        """
        import concurrent.futures, gc, distaff

        def rss_kib():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4

        class Held:
            # an executor that completes nothing until told: everything stays in flight
            def __init__(self):
                self.futures = []
            def submit(self, fn, /, *args, **kwargs):
                f = concurrent.futures.Future()
                self.futures.append((f, fn, args))
                return f

        held = Held()
        eng = distaff.Engine()
        t = eng.task(executor=held)(lambda i: i)
        [t.submit(i) for i in range(1000)]  # warm-up: pools, first allocations
        gc.collect()
        before = rss_kib()
        exs = [t.submit(i) for i in range(10_000)]
        while eng.stats()["queued"] or eng.stats()["fibers"]:
            pass
        gc.collect()
        per = (rss_kib() - before) / 10_000
        print(f"KiB per execution in flight: {per:.2f}; fibers {eng.stats()['fibers']}")
        i = 0
        while i < len(held.futures):  # complete them all (the window refills as they finish)
            f, fn, args = held.futures[i]
            f.set_result(fn(*args))
            i += 1
        assert [x.result() for x in exs] == list(range(10_000))
        assert per <= 2.0, per
        """,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fibers 0" in r.stdout


def test_shutdown_without_wait_lets_outstanding_remote_work_finish_then_stops_the_pool(tmp_path):
    gate = str(tmp_path / "gate")
    e = distaff.Engine(processes=1)
    ex = e.task(executor="processes")(wait_for_file).submit(gate)
    pool = e._executors.runner("processes")
    deadline = time.monotonic() + 30
    while not pool.pids() and time.monotonic() < deadline:
        time.sleep(0.01)
    pids = pool.pids()
    e.shutdown(wait=False)
    open(gate, "w").close()
    assert ex.result(timeout=60) is True  # the pool served it after shutdown(wait=False)
    assert all(process_gone(p) for p in pids)


def timed_nap(s):
    t0 = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the machine
    time.sleep(s)
    return t0, time.monotonic()


def test_concurrency_applies_to_remote_bodies_and_async_bodies_run_remotely(eng):
    one_at_a_time = eng.task(executor="processes", concurrency=1)(timed_nap)
    spans = sorted(distaff.gather(*[one_at_a_time.submit(0.2) for _ in range(3)]).result(timeout=60))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # never two at once

    @eng.task(executor="processes")
    async def remote_async(x):
        import asyncio

        await asyncio.sleep(0)
        return x * 2, os.getpid()

    value, pid = remote_async(21)
    assert value == 42 and pid != os.getpid()


def test_a_user_supplied_process_pool_is_left_running_by_the_engine():
    with ProcessPool(1, name="mine") as pool:
        with distaff.Engine(executors={"mine": pool}) as e:
            ex = e.task(executor="mine")(pid_of).submit()
            assert ex.result(timeout=60) != os.getpid()
            assert ex.description["executor"] == "mine"
        pids = pool.pids()
        assert pids and not any(process_gone(p, 0.2) for p in pids)  # the engine left it running
        with distaff.Engine() as e2:  # usable by another engine, passed directly
            assert e2.task(executor=pool)(pid_of)() == pids[0]
    assert all(process_gone(p) for p in pids)  # closed by its own with-block


def test_without_cloudpickle_importable_functions_still_run_and_a_lambda_says_what_to_install():
    r = run_python(
        """
        import sys
        sys.modules["cloudpickle"] = None  # as if it were not installed
        import operator, distaff

        with distaff.Engine(processes=1) as eng:
            print("importable:", eng.task(executor="processes")(operator.add)(2, 3))
            exc = eng.task(executor="processes", retries=3)(lambda: 1).submit().exception(timeout=60)
            print(type(exc).__name__, "|", exc)
        """,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "importable: 5" in r.stdout
    assert "ImportError | sending tuple to another process needs cloudpickle" in r.stdout
    assert "pip install 'distaff[processes]'" in r.stdout


# -- a busy worker dies with its parent (docs/reliability.md "Executors") ------------------------------

_SPIN_PARENT = """
import atexit, os, sys, distaff
import distaff.executors
pidfile, how, where = sys.argv[1:4]
distaff.executors.ProcessPool._parent_death = how

def spin(path):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    while True:  # holds the GIL in a Python loop: never reads its pipe again
        pass

eng = distaff.Engine(processes=1)
ex = eng.task(executor="processes")(spin).submit(pidfile)
if where == "result":
    ex.result()
else:  # the main thread ends; distaff's exit hook (registered before this one) then waits for ex
    atexit.register(lambda: open(pidfile + ".exiting", "w").close())
"""


@pytest.mark.parametrize("how", ["pdeathsig", "watchdog"])
@pytest.mark.parametrize("sig,where", [("SIGKILL", "result"), ("SIGTERM", "result"), ("SIGTERM", "exit")])
def test_a_busy_worker_dies_when_its_parent_is_killed(tmp_path, how, sig, where):
    import signal
    import subprocess
    import sys

    pidfile = str(tmp_path / "pid")
    with open(tmp_path / "stderr", "w") as err:
        parent = subprocess.Popen([sys.executable, "-c", _SPIN_PARENT, pidfile, how, where],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    worker = None
    try:
        worker = read_when_there(pidfile, 60)
        if where == "exit":
            deadline = time.monotonic() + 30
            while not os.path.exists(pidfile + ".exiting"):
                assert time.monotonic() < deadline, (tmp_path / "stderr").read_text()
                time.sleep(0.01)
        assert parent.poll() is None, (tmp_path / "stderr").read_text()
        signum = getattr(signal, sig)
        parent.send_signal(signum)
        assert parent.wait(timeout=30) == -signum, (tmp_path / "stderr").read_text()
        assert process_gone(worker, 10), f"worker {worker} outlived its parent ({how}, {sig}, {where})"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if worker is not None and not process_gone(worker, 0):
            try:
                os.kill(worker, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_dropped_engine_lets_go_of_its_pool_once_no_execution_on_it_is_outstanding(tmp_path):
    r = run_python(
        """
        import gc, os, sys, threading, time, distaff

        def children():
            try:
                import psutil
                return [p.pid for p in psutil.Process().children()]
            except ImportError:
                me, kids = os.getpid(), []
                for d in os.listdir("/proc"):
                    if d.isdigit():
                        try:
                            with open(f"/proc/{d}/stat") as f:
                                fields = f.read().rsplit(")", 1)[1].split()
                        except OSError:
                            continue
                        if int(fields[1]) == me and fields[0] != "Z":
                            kids.append(int(d))
                return kids

        def managers():
            return [t for t in threading.enumerate() if t.name == "distaff-processes"]

        def settled(what):
            deadline = time.monotonic() + 30
            while children() or managers():
                if time.monotonic() > deadline:
                    print(what, "LEFT children", children(), "threads", len(managers()))
                    return
                gc.collect()
                time.sleep(0.01)
            print(what, "all gone")

        def once():
            e = distaff.Engine(processes=1)
            return e.task(executor="processes")(os.getpid)()

        pids = [once() for _ in range(4)]
        assert len(set(pids)) == 4 and os.getpid() not in pids, pids
        gc.collect()
        settled("dropped")

        # in flight: the execution holds its engine, whose pool finishes the body
        gate = GATE
        def wait_for(path):
            while not os.path.exists(path):
                time.sleep(0.01)
            return True

        def pending():
            e = distaff.Engine(processes=1)
            return e.task(executor="processes")(wait_for).submit(gate)
        ex = pending()
        gc.collect()
        deadline = time.monotonic() + 30
        while not (len(children()) == 1 and len(managers()) == 1) and time.monotonic() < deadline:
            time.sleep(0.01)
        print("in flight", len(children()), "worker", len(managers()), "manager")
        open(gate, "w").close()
        print("in flight result", ex.result(timeout=60))
        del ex
        gc.collect()
        settled("after the result")
        """.replace("GATE", repr(str(tmp_path / "gate"))),
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dropped all gone" in r.stdout, r.stdout
    assert "in flight 1 worker 1 manager" in r.stdout, r.stdout
    assert "in flight result True" in r.stdout and "after the result all gone" in r.stdout, r.stdout


def test_the_name_processes_is_reserved_for_the_engines_own_pool():
    with concurrent.futures.ThreadPoolExecutor(1) as tp:
        with pytest.raises(ValueError, match="'processes' is the name of the engine's own process pool"):
            distaff.Engine(executors={"processes": tp})
        with distaff.Engine(executors={"threads": tp}) as e:  # under another name it is fine
            ex = e.task(executor="threads")(pid_of).submit()
            assert ex.result(timeout=60) == os.getpid() and ex.description["executor"] == "threads"


def test_the_process_pool_used_from_an_atexit_hook_leaves_no_noise_at_exit():
    # The engine made in the hook is collected in the interpreter's last collection; its finalizer
    # imported a module there ("ImportError: sys.meta_path is None", printed as ignored).
    r = run_python("""
import atexit, distaff

@atexit.register
def late():
    try:
        print("result", distaff.task(executor="processes")(abs).submit(-6).result(timeout=60))
    except distaff.ShutdownError:
        print("result refused")  # 3.12+: no new thread (the pool's manager) at interpreter exit
""", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "result 6" in r.stdout or "result refused" in r.stdout, r.stdout + r.stderr
    assert "Exception ignored" not in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("where", ["thread pool", "process pool"])
@pytest.mark.parametrize("submitter", ["a thread", "asyncio.run"])
def test_an_executor_body_submitted_from_a_plain_thread_needs_no_free_worker(where, submitter):
    # The hand-off to the executor runs on the submitting thread during submit() (SubmitFlag.HERE,
    # docs/internals/sync-calls.md, "Bodies shipped here"): with the engine's only worker held by a
    # blocking body and growth off, an executor body submitted from a thread of the program's, or
    # from a coroutine under asyncio.run on the main thread, still runs. A body with an Execution
    # argument waits for its dependency and a worker to hand it over, as before.
    proc = run_python(
        f"""
        import asyncio, threading
        from concurrent.futures import ThreadPoolExecutor
        import distaff
        from distaff.executors import ProcessPool

        def square(x):
            return x * x

        if __name__ == "__main__":
            pool = ThreadPoolExecutor(2) if {where!r} == "thread pool" else ProcessPool(1)
            gate, held = threading.Event(), threading.Event()
            with distaff.Engine(workers=1, max_workers=1) as eng:
                @eng.task()
                def hold():
                    held.set()
                    gate.wait(60)
                    return 1

                sq = eng.task(executor=pool)(square)
                h = hold.submit()
                held.wait(30)
                out = []
                if {submitter!r} == "a thread":
                    t = threading.Thread(target=lambda: out.append(sq.submit(7).result(timeout=30)))
                    t.start()
                    t.join(60)
                else:
                    async def main():
                        return await sq(7)
                    out.append(asyncio.run(main()))
                print("shipped", *out, flush=True)
                later = sq.submit(h)  # waits for h, then for a worker to hand it over
                gate.set()
                print("after", later.result(timeout=30), flush=True)
            if {where!r} == "thread pool":
                pool.shutdown()
        """,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["shipped", "49", "after", "1"], proc.stdout


def test_a_ctrl_c_in_a_slow_executor_submit_on_the_main_thread_stops_the_program():
    # An outsider's find: with the hand-off on the main thread, a KeyboardInterrupt landing in the
    # executor's own submit() (here a slow one, as an RPC client's can be) was stored as that
    # execution's error and the submit loop went on. The main thread under Python's default
    # SIGINT handler hands executor bodies to a worker (the interrupt lands in distaff's submit,
    # as any Ctrl-C in a loop of calls does).
    proc = run_python(
        """
        import os, signal, threading, time
        from concurrent.futures import ThreadPoolExecutor
        import distaff

        class Slow(ThreadPoolExecutor):
            def submit(self, fn, /, *a, **k):
                t = time.perf_counter()
                while time.perf_counter() - t < 0.002:
                    pass
                return super().submit(fn, *a, **k)

        def inc(x):
            return x + 1

        pool = Slow(2)
        t = distaff.task(executor=pool)(inc)
        es = []
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            for i in range(2_000_000):
                es.append(t.submit(i))
            print("not interrupted", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        errors = {type(e.exception(timeout=60)).__name__ for e in es[:50] if not e.cancelled()}
        print(sorted(errors), flush=True)
        os._exit(0)
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "interrupted", proc.stdout
    assert "KeyboardInterrupt" not in proc.stdout, proc.stdout


def test_cancelling_thousands_of_executor_bodies_pumps_the_window_without_a_thread_per_call():
    # distaff's own cancels pump the runner's window on the cancelling thread; only a call the
    # executor cancelled itself (its shutdown, which holds its lock) pumps from a thread of its own.
    proc = run_python(
        """
        import threading
        from concurrent.futures import ThreadPoolExecutor
        import distaff

        pumps = []
        start = threading.Thread.start
        def counting_start(self):
            if self.name.endswith("-pump"):
                pumps.append(self.name)
            return start(self)
        threading.Thread.start = counting_start

        pool = ThreadPoolExecutor(2)
        gate = threading.Event()

        def f(i):
            gate.wait(30)
            return i

        with distaff.Engine() as eng:
            g = eng.task(executor=pool)(f)
            exs = [g.submit(i) for i in range(3000)]
            for e in exs:
                e.cancel()
            gate.set()
            distaff.wait(exs, timeout=30)
            print(all(e.cancelled() for e in exs), len(pumps), g.submit(5).result(timeout=30), flush=True)
            pool.shutdown(wait=False, cancel_futures=True)
        """,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "0", "5"], proc.stdout
