"""fork() with a live engine: the child gets a working default engine or a clear error, never a hang.

Ordering is by events and gates; where a test must involve time (a delay, a deadline) its bounds
are generous and only one side is tight. docs/reliability.md names these tests.
"""

from conftest import run_python


def test_default_engine_after_fork_in_the_child_works_or_errors_clearly():
    proc = run_python(
        """
        import os, distaff

        @distaff.task
        def double(x):
            return 2 * x

        assert double(1) == 2  # the parent's default engine exists
        own = distaff.Engine()
        pid = os.fork()
        if pid == 0:
            try:
                ok = double(21) == 42  # a new default engine in the child
                try:
                    own.submit(print)
                    ok = False
                except distaff.ShutdownError as e:
                    ok = ok and "fork" in str(e)
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        own.shutdown()
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "child 0" in proc.stdout


_FORK_CHILD = """
import os, signal, sys, threading, time
import distaff

gate = threading.Event()
eng = distaff.Engine(workers=1)

@eng.task
def slow():
    while not gate.is_set():
        distaff.sleep(0.005)
    return "parent result"

ex = slow.submit()
time.sleep(0.05)  # running (suspended) in the parent at fork time
pid = os.fork()
if pid == 0:
    signal.alarm(5)  # a hang in the child ends as SIGALRM (exit code -14)
    try:
        CHILD_CALL
        print("child: returned", flush=True)
    except distaff.ShutdownError as e:
        print("child: ShutdownError", e, flush=True)
    except BaseException as e:
        print("child: other error", type(e).__name__, e, flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status), flush=True)
gate.set()
print(ex.result(timeout=30), flush=True)
eng.shutdown()
"""


def test_fork_child_waiting_on_an_inherited_execution_does_not_hang():
    """Waiting in a fork child on an execution the parent had not finished raises ShutdownError."""
    proc = run_python(_FORK_CHILD.replace("CHILD_CALL", "ex.result()"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "parent result" in proc.stdout  # the parent is unaffected either way
    assert "child exit 0" in proc.stdout and "child: ShutdownError" in proc.stdout, proc.stdout


def test_fork_child_wait_idle_on_an_inherited_engine_is_a_clear_error():
    """wait_idle() on an engine inherited across fork raises ShutdownError naming fork."""
    proc = run_python(_FORK_CHILD.replace("CHILD_CALL", "eng.wait_idle()"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "child: ShutdownError" in proc.stdout and "fork" in proc.stdout, proc.stdout


def test_fork_child_submitting_to_an_inherited_engine_is_a_clear_error():
    """submit() to an engine inherited across fork raises ShutdownError naming fork."""
    proc = run_python(_FORK_CHILD.replace("CHILD_CALL", "slow.submit()"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "child: ShutdownError" in proc.stdout and "fork" in proc.stdout, proc.stdout
    assert "child exit 0" in proc.stdout and "parent result" in proc.stdout


def test_timeouts_fire_in_a_child_forked_after_the_parent_used_them():
    # The parent's timer thread does not survive fork(); the child starts its own on first use.
    proc = run_python(
        """
        import os, threading, distaff

        never = threading.Event()

        @distaff.task(timeout=0.1)
        def quick():
            return 1

        @distaff.task(timeout=0.2)
        def stuck():
            distaff.sleep(3600)

        assert quick() == 1  # the parent armed (and disarmed) a deadline: its timer thread exists
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                stuck()
            except distaff.TimeoutError as e:
                code = 0 if "deadline" in str(e) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "child 0" in proc.stdout, proc.stdout + proc.stderr
