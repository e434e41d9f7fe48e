"""executor=distaff.executors.Ray(...): bodies as Ray tasks on a real local Ray (ray.init(num_cpus=2))."""

import os
import sys
import time

import pytest

import distaff
from distaff.executors import Ray

from conftest import process_gone

pytest.importorskip("cloudpickle")
if sys.version_info < (3, 12):
    ray = pytest.importorskip("ray")  # on 3.11 it must be installed (the test extra has it)
else:
    ray = pytest.importorskip("ray", reason="no Ray wheel for this CPython (Ray runs on 3.11 in CI)")


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_bodies_run_as_ray_tasks_with_values_for_execution_arguments(ray_runtime):
    with distaff.Engine(executors={"ray": Ray(num_cpus=1)}) as eng:
        local = eng.task(name="local")(lambda v: v)
        remote = eng.task(executor="ray")(lambda a, xs: (a + sum(xs), os.getpid()))
        ex = remote.submit(local.submit(1), [local.submit(2), 3])
        value, pid = ex.result(timeout=120)
        assert value == 6 and pid != os.getpid()
        assert ex.description["executor"] == "ray"




def test_exceptions_keep_their_type_and_timeout_and_cancel_kill_the_running_ray_task(ray_runtime, tmp_path):
    # defined here, so cloudpickle ships it by value: Ray workers do not import this test module
    def sleeps(pidfile):
        import os
        import time

        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(pidfile + ".tmp", pidfile)
        time.sleep(600)  # blocked in C: ray.cancel without force=True never interrupts it

    def pid_in(path):
        deadline = time.monotonic() + 60
        while not os.path.exists(path):
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.01)
        with open(path) as f:
            return int(f.read())

    with distaff.Engine() as eng:
        exc = eng.task(executor=Ray())(lambda: {}["missing"]).submit().exception(timeout=120)
        assert type(exc) is KeyError and "raised on executor 'ray'" in exc.__notes__[-1]

        slow = eng.task(executor=Ray(), timeout=1.0)(sleeps)
        ex = slow.submit(str(tmp_path / "p1"))
        pid = pid_in(str(tmp_path / "p1"))
        assert isinstance(ex.exception(timeout=60), distaff.TimeoutError)
        assert process_gone(pid), "the timed-out Ray task's worker process still runs"

        ex2 = eng.task(executor=Ray())(sleeps).submit(str(tmp_path / "p2"))
        pid2 = pid_in(str(tmp_path / "p2"))
        assert ex2.cancel() and ex2.cancelled()
        assert process_gone(pid2), "the cancelled Ray task's worker process still runs"

        both = [eng.task(executor=Ray())(lambda: os.getpid()).submit() for _ in range(2)]
        assert all(b.result(timeout=60) for b in both)  # Ray replaced the killed workers


def test_a_trace_shows_the_bodies_on_the_ray_track(ray_runtime, tmp_path):
    """engine.trace(): each Ray task's time away is a slice on the `executor ray` tracks, retried
    attempts apart (docs/observability.md, "Bodies that run elsewhere")."""
    import json

    with distaff.Engine(executors={"ray": Ray(num_cpus=1)}) as eng:
        sq = eng.task(executor="ray", name="sq")(lambda x: x * x)
        sq.submit(1).result(timeout=120)
        with eng.trace(tmp_path / "run.json"), eng.trace(tmp_path / "run.jsonl") as t:
            assert sum(e.result(timeout=120) for e in [sq.submit(i) for i in range(3)]) == 5
    back = [e for e in t.events if e["event"] == "TaskReturned"]
    assert len(back) == 3 and all(e["executor"] == "executor ray" and e["outcome"] == "succeeded" for e in back)
    doc = json.loads((tmp_path / "run.json").read_text())
    names = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    away = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "elsewhere"]
    assert len(away) == 3 and all(names[e["tid"]].split(" \u00b7 ")[0] == "executor ray" for e in away)
