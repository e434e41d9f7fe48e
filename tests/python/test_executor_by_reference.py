"""A @task(executor=...) function of an importable module is shipped by reference: the worker
imports the module and runs the task's function (docs/executors.md, docs/reliability.md
"Executor bodies by reference"). Each case runs in a fresh interpreter whose PYTHONPATH has the
module, so distaff's worker processes (and a ProcessPoolExecutor's) import it too."""

from __future__ import annotations

import os
import textwrap

from conftest import run_python

_MODULE = '''
import threading
import distaff

BIG = list(range(100000))
LOCK = threading.Lock()  # cannot be pickled: by value, the body could not travel


@distaff.task(executor="processes")
def step(x):
    with LOCK:
        return x + len(BIG)


class Holder:
    @distaff.task(executor="processes")
    def method(self, x):
        return x + len(BIG) + 1


def make_closure(k):
    @distaff.task(executor="processes")
    def inner(x):
        return x + k

    return inner
'''

# Records every payload a Job builds (the bytes an executor ships).
_RECORD = '''
import sys
from distaff import _elsewhere
sizes = []
_payload = _elsewhere.Job.payload
def payload(self):
    p = _payload(self)
    sizes.append(len(p))
    return p
_elsewhere.Job.payload = payload
'''


def _run(tmp_path, code: str, block_cloudpickle: bool = False):
    (tmp_path / "bigsteps.py").write_text(_MODULE)
    pre = 'import sys\nsys.modules["cloudpickle"] = None  # as if it were not installed\n' if block_cloudpickle else ""
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    return run_python(pre + _RECORD + textwrap.dedent(code), timeout=120, env={"PYTHONPATH": path})


def test_a_module_level_task_is_shipped_by_reference_not_with_its_globals(tmp_path):
    r = _run(
        tmp_path,
        """
        import concurrent.futures, distaff, bigsteps
        with distaff.Engine(processes=1) as eng:
            print("step", bigsteps.step(1))
            print("method", bigsteps.Holder().method(1))
        print("sizes", max(sizes))
        sizes.clear()
        with concurrent.futures.ProcessPoolExecutor(1) as pool:
            with distaff.Engine() as eng:
                t = eng.task(executor=pool)(bigsteps.step.fn)  # same function, another task
                print("pool", t(2))
        print("pool sizes", max(sizes))
        """,
    )
    assert r.returncode == 0, r.stderr
    assert "step 100001" in r.stdout
    assert "method 100002" in r.stdout
    # By value the body carried BIG (~370 KB per call) and LOCK made it fail; a reference is a few
    # dozen bytes plus the arguments (the Holder instance for the method).
    sizes = int(r.stdout.split("sizes ")[1].split()[0])
    assert sizes < 500, r.stdout
    assert "pool 100002" in r.stdout


def test_without_cloudpickle_a_module_level_task_still_runs_remotely(tmp_path):
    r = _run(
        tmp_path,
        """
        import distaff, bigsteps
        with distaff.Engine(processes=1) as eng:
            print("step", bigsteps.step(1))
            print("method", bigsteps.Holder().method(1))
            exc = bigsteps.make_closure(5).submit(1).exception(timeout=60)
            print(type(exc).__name__, "|", exc)
        """,
        block_cloudpickle=True,
    )
    assert r.returncode == 0, r.stderr
    assert "step 100001" in r.stdout
    assert "method 100002" in r.stdout
    # A closure has no importable name: it needs cloudpickle, and says so.
    assert "ImportError | sending tuple to another process needs cloudpickle" in r.stdout


def test_a_closure_or_main_task_still_goes_by_value_with_cloudpickle(tmp_path):
    r = _run(
        tmp_path,
        """
        import distaff, bigsteps
        from distaff import _remote

        @distaff.task(executor="processes")
        def in_main(x):
            return x * 3

        inner = bigsteps.make_closure(5)
        assert _remote.body_ref(inner.fn) is inner.fn
        assert _remote.body_ref(in_main.fn) is in_main.fn
        assert _remote.body_ref(bigsteps.step.fn) is not bigsteps.step.fn
        with distaff.Engine(processes=1) as eng:
            print("closure", inner(1))
            print("main", in_main(2))
        """,
    )
    assert r.returncode == 0, r.stderr
    assert "closure 6" in r.stdout
    assert "main 6" in r.stdout
