import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import distaff

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Tests send SIGINT to child interpreters and expect a KeyboardInterrupt. A shell's background job
# (`cmd &`, nohup) starts with SIGINT ignored, an ignored signal stays ignored across exec, and Python
# then installs no handler for it: every Ctrl-C test would time out. Children inherit the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


# -- no execution leaks ----------------------------------------------------------------------------
# After each test, once pytest has dropped the test's fixture values and arguments, the core's count of
# live execution records must be back where it was before the test: a reference cycle or a missed
# release in the bindings would keep it higher. The check runs around the whole test protocol
# (fixtures hold engines and Executions until their teardown is over); a leak fails the session with
# the tests named. Tests that keep executions alive on purpose (a module-level exception instance
# whose traceback holds frames) say so with @pytest.mark.holds_executions.
_leaks: list[str] = []


def _forget_log_records_of_no_test(config) -> None:
    """A failure logged once the test's phases are over (an unobserved failure whose execution was
    freed late, drained by the check below) lands in pytest's capture handlers, which keep the
    LogRecord until the next test starts: its exception's __cause__ and traceback frames then keep
    executions alive (seen: a DependencyError caused by a DeadlockError whose traceback holds the
    frame of Task.__call__, and with it the failed execution). Those records belong to no test."""
    plugin = config.pluginmanager.get_plugin("logging-plugin")
    for handler in (getattr(plugin, "caplog_handler", None), getattr(plugin, "report_handler", None)):
        if handler is not None:
            handler.reset()


def _live_after_settling(before: int, config) -> int:
    now = distaff._core.live_executions()
    if now <= before:
        return now
    # Not back yet. Cheapest first: a worker or a timer thread usually drops its last reference a
    # moment after the test ends (644 of 786 such cases in a suite run); then the young
    # generations, where a test's own cycles are (135); full collections last (7): ~0.1 s each
    # once Dask, Ray and OpenTelemetry are imported, taken at once they were a third of the
    # suite's time (pytest -n 2: 5:16 -> 3:58).
    for e in list(distaff._engine._engines):
        e.clear_history()  # histories keep finished records on purpose (Engine(history=))
    spin_until = time.monotonic() + 0.02
    while True:
        distaff._core._drain_unobserved()
        now = distaff._core.live_executions()
        if now <= before:
            return now
        if time.monotonic() > spin_until:
            break
        time.sleep(0.001)
    for _ in range(2):
        gc.collect(1)
        distaff._core._drain_unobserved()
        _forget_log_records_of_no_test(config)
    now = distaff._core.live_executions()
    if now <= before:
        return now
    deadline = time.monotonic() + float(os.environ.get("DISTAFF_TEST_LEAK_WAIT", "10"))
    while True:
        gc.collect()
        distaff._core._drain_unobserved()
        _forget_log_records_of_no_test(config)
        gc.collect()
        now = distaff._core.live_executions()
        # Fibers unwind, callbacks run and failure logs drain just after executions finish.
        if now <= before or time.monotonic() > deadline:
            return now
        time.sleep(0.005)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    before = distaff._core.live_executions()
    yield
    if item.get_closest_marker("holds_executions"):
        return
    now = _live_after_settling(before, item.config)
    if now > before:
        _leaks.append(f"{item.nodeid}: {now - before} execution record(s) still alive after the test")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """Under pytest-xdist (`make test` runs two workers) each worker checks its own tests: it hands
    its findings to the controller, whose session then fails as a single process's would."""
    _leaks.extend(getattr(node, "workeroutput", {}).get("distaff_leaks", ()))


def pytest_sessionfinish(session, exitstatus):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports (pytest_testnodedown)
        workeroutput["distaff_leaks"] = list(_leaks)
        return
    if _leaks:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_sep("=", "execution leaks", red=True)
            for line in _leaks:
                tr.write_line(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def run_python(code: str, *, timeout: float = 120, env: dict | None = None, args=(), argv=()) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter (crash and shutdown cases must not take pytest down).
    `args`: the interpreter's options; `argv`: the program's sys.argv[1:]."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code), *argv],
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


@pytest.fixture
def engine1():
    """One worker: the cases that prove a waiting fiber does not hold its thread."""
    eng = distaff.Engine(workers=1)
    yield eng
    assert eng.wait_idle(timeout=60), eng.stats()
    eng.shutdown(wait=True)
    stats = eng.stats()
    assert stats["live"] == 0 and stats["fibers"] == 0, stats


def settle(engine, timeout=30.0):
    """Waits until every execution finished *and* every fiber unwound (a cancelled or timed-out
    execution finishes at once; its body unwinds afterwards, so `fibers` lags `live`)."""
    assert engine.wait_idle(timeout=timeout), engine.stats()
    deadline = time.monotonic() + timeout
    while engine.stats()["fibers"]:
        assert time.monotonic() < deadline, engine.stats()
        time.sleep(0.002)


class CallbackLog:
    """add_done_callback target that counts calls per execution and records the state it saw."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = {}

    def __call__(self, ex):
        with self.lock:
            self.calls.setdefault(ex.id, []).append(ex.state)

    def watch(self, ex):
        ex.add_done_callback(self)
        return ex

    def wait_for(self, n, timeout=30.0):
        """Callbacks run right after the terminal transition, so wait_idle() (which sees the
        transition) can return while the last ones are still being called, as with
        concurrent.futures.wait. Waits until n executions reported."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.calls) >= n:
                    return
            assert time.monotonic() < deadline, f"{len(self.calls)} of {n} callbacks"
            time.sleep(0.001)


def process_gone(pid: int, timeout: float = 30.0) -> bool:
    """True once process `pid` has ended and been reaped (polls /proc up to `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # a zombie not reaped yet
                    time.sleep(0.01)
                    continue
        except OSError:
            return True
        time.sleep(0.01)
    return False
