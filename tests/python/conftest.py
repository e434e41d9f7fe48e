import gc
import os
import subprocess
import sys
import textwrap
import threading

import pytest

import distaff

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(params=[1, 2], ids=lambda n: f"workers{n}")
def engine(request):
    """A fresh engine per test, over 1 and 2 workers; checked for leftovers at teardown."""
    eng = distaff.Engine(workers=request.param)
    yield eng
    assert eng.wait_idle(timeout=60), f"executions still live after the test: {eng.stats()}"
    eng.shutdown(wait=True)
    stats = eng.stats()
    assert stats["live"] == 0 and stats["fibers"] == 0, stats


@pytest.fixture(autouse=True)
def _default_engine_settles():
    """Every test leaves the default engine idle (nothing left running or queued)."""
    yield
    eng = distaff._engine._default
    if eng is not None and not eng._closed:
        assert eng.wait_idle(timeout=60), f"default engine still busy: {eng.stats()}"


def run_python(code: str, *, timeout: float = 120, env: dict | None = None, args=()) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter (crash and shutdown cases must not take pytest down)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@pytest.fixture
def new_gate(request):
    """Makes gates (threading.Event), all released at teardown — before the `engine` fixture's
    leftover check when the test uses it, so a failing assertion never leaves a body waiting."""
    if "engine" in request.fixturenames:
        request.getfixturevalue("engine")  # set up first, so torn down after the gates are released
    made = []

    def make():
        g = threading.Event()
        made.append(g)
        return g

    yield make
    for g in made:
        g.set()


def collect():
    gc.collect()
    gc.collect()


def fiber_wait(event, timeout: float = 30.0) -> bool:
    """Waits for a threading.Event from a task body without holding the worker thread."""
    import time

    deadline = time.monotonic() + timeout
    while not event.is_set():
        if time.monotonic() > deadline:
            return False
        distaff.sleep(0.001)
    return True


def wait_for_log(caplog, text: str, timeout: float = 30.0) -> bool:
    """Waits until `text` is in caplog's records. An unobserved failure is logged once its Execution
    is collected, which can be just after wait_idle() returns: the worker drops its last reference
    after finishing the execution. Collects and drains the pending log batch while it waits."""
    import time

    deadline = time.monotonic() + timeout
    while text not in caplog.text:
        if time.monotonic() > deadline:
            return False
        gc.collect()
        distaff._core._drain_unobserved()
        time.sleep(0.001)
    return True
