"""Ctrl-C in waits on the main thread, and the wait for outstanding work at interpreter exit (issue 4):
each case runs in a fresh interpreter with a deadline.

Ordering is by events and gates; where a test must involve time (a delay, a deadline) its bounds
are generous and only one side is tight. docs/reliability.md names these tests.
"""

import signal
import subprocess
import sys
import time

import pytest


from conftest import run_python


# -- Ctrl-C, shutdown and exit ----------------------------------------------------------------------------------

_CTRL_C_SCRIPT = """
import os, signal, sys, threading, time
import distaff

# The C-level signal handler writes to this pipe the moment SIGINT arrives; a thread stamps the time.
r, w = os.pipe()
os.set_blocking(w, False)
signal.set_wakeup_fd(w)
arrived = []
threading.Thread(target=lambda: (os.read(r, 1), arrived.append(time.monotonic())), daemon=True).start()

gate = threading.Event()

@distaff.task
def blocked():
    while not gate.is_set():
        distaff.sleep(0.005)
    return "released"

@distaff.task
def double(x):
    return 2 * x

ex = blocked.submit()
print("ready", flush=True)
try:
    ex.result()  # the main thread waits here: SIGINT must interrupt it
    print("not interrupted", flush=True)
except KeyboardInterrupt:
    caught = time.monotonic()
    while not arrived:
        time.sleep(0.001)
    print(f"latency {caught - arrived[0]:.6f}", flush=True)
# The engine is still usable. A result() that Ctrl-C interrupted cancelled its execution (as
# asyncio.run cancels its main task); the other waits leave what they waited for running.
print("state", ex.state, flush=True)
print("double", double(21), flush=True)
gate.set()
try:
    print("result", ex.result(timeout=30), flush=True)
except distaff.CancelledError:
    print("result cancelled", flush=True)
"""


def _ctrl_c(script, *, ready_line="ready", wait=0.0, signals=1, timeout=60, stderr_ready=None, then_line=None):
    """Runs script, waits for ready_line on stdout (and stderr_ready on stderr), sends `signals`
    SIGINTs 0.3 s apart — or, with then_line, the next one once stdout says then_line — and
    returns (returncode, stdout after the ready line, stderr)."""
    import os
    import signal
    import subprocess
    import textwrap

    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == ready_line
        if stderr_ready is not None:  # e.g. the exit wait's log line: the wait has begun
            seen = []
            while not any(stderr_ready in line for line in seen):
                line = proc.stderr.readline()
                assert line, f"no {stderr_ready!r} on stderr: {seen}"
                seen.append(line)
        time.sleep(wait)
        for i in range(signals):
            os.kill(proc.pid, signal.SIGINT)
            if then_line is not None and i < signals - 1:
                assert proc.stdout.readline().strip() == then_line
            else:
                time.sleep(0.3)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def test_ctrl_c_in_result_on_the_main_thread_is_prompt_cancels_it_and_leaves_the_engine_usable():
    rc, out, err = _ctrl_c(_CTRL_C_SCRIPT, wait=0.1)
    assert rc == 0, err
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    latency = float(lines["latency"])
    print(f"Ctrl-C latency in result(): {latency * 1000:.2f} ms")
    assert latency < 0.2
    assert lines["state"] == "cancelled"  # the interrupt cancels what the main thread waited for
    assert lines["double"] == "42"
    assert lines["result"] == "cancelled"


@pytest.mark.parametrize("waiter", ["wait_idle", "wait", "gather", "shutdown"])
def test_ctrl_c_in_other_main_thread_waits_is_prompt(waiter):
    call = {
        "wait_idle": "distaff.default_engine().wait_idle()",
        "wait": "distaff.wait([ex])",
        "gather": "distaff.gather(ex).result()",
        "shutdown": "distaff.default_engine().shutdown(wait=True)",
    }[waiter]
    script = _CTRL_C_SCRIPT.replace("ex.result()  # the main thread", f"{call}  # the main thread")
    rc, out, err = _ctrl_c(script, wait=0.1)
    assert rc == 0, err
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert float(lines["latency"]) < 0.2
    if waiter != "shutdown":
        assert lines["double"] == "42"


def test_exit_with_work_running_waits_for_it_and_says_so():
    proc = run_python(
        """
        import distaff, threading

        @distaff.task
        def slow(i):
            distaff.sleep(1.5)  # longer than the exit wait's quiet first second
            print("finished", i, flush=True)

        for i in range(3):
            slow.submit(i)  # nobody waits: the interpreter exits with the work running
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split("\n")[:3]) == ["finished 0", "finished 1", "finished 2"]
    assert "distaff: waiting for 3 outstanding execution(s) before exit" in proc.stderr


def test_the_exit_wait_counts_the_outstanding_executions_of_every_engine_once():
    # Outsider, session 12: with two engines and the default one (4 executions outstanding) it
    # said "waiting for 1": the count of the engine it waited for first. The bodies end when the
    # line is logged (a handler on the "distaff" logger opens their gate): no timing involved.
    proc = run_python(
        """
        import logging, distaff
        gate = distaff.Event()

        class OpenGate(logging.StreamHandler):  # to stderr, as logging's last resort would
            def emit(self, record):
                super().emit(record)
                if "outstanding execution(s) before exit" in record.getMessage():
                    gate.set()

        logging.getLogger("distaff").addHandler(OpenGate())
        a, b = distaff.Engine(), distaff.Engine()
        for eng in (a, a, b):
            eng.submit(gate.wait)
        distaff.task(gate.wait).submit()  # the default engine
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("outstanding execution(s) before exit") == 1, proc.stderr
    assert "distaff: waiting for 4 outstanding execution(s) before exit" in proc.stderr, proc.stderr


def test_exit_wait_under_a_second_is_silent():
    # Issue 10: short scripts whose last executions finish within a second of the exit print
    # nothing; the work still finishes.
    proc = run_python(
        """
        import distaff

        @distaff.task
        def short(i):
            distaff.sleep(0.05)
            print("finished", i, flush=True)

        for i in range(3):
            short.submit(i)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split("\n")[:3]) == ["finished 0", "finished 1", "finished 2"]
    assert "outstanding" not in proc.stderr, proc.stderr


def test_exit_with_a_body_stuck_in_c_code_waits_for_it_without_crashing():
    proc = run_python(
        """
        import distaff, time

        @distaff.task
        def stuck():
            time.sleep(1.5)  # past the exit wait's quiet first second: the wait is announced
            print("stuck body returned", flush=True)

        stuck.submit()
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "stuck body returned" in proc.stdout
    assert "outstanding execution" in proc.stderr


def test_exit_after_a_timeout_left_a_body_stuck_in_c_code_does_not_crash():
    proc = run_python(
        """
        import distaff, time

        @distaff.task(timeout=0.05)
        def stuck():
            time.sleep(0.5)

        try:
            stuck()
        except distaff.TimeoutError:
            print("timed out", flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "timed out" in proc.stdout


_EXIT_WAIT = "outstanding execution(s) before exit"


def test_ctrl_c_during_the_exit_wait_cancels_queued_work_and_waits_for_a_body_in_c():
    script = """
    import distaff, threading, time

    started = threading.Event()
    engine = distaff.Engine(workers=1, max_workers=1)  # no elastic thread takes the queued work

    @engine.task
    def running():
        started.set()
        try:
            time.sleep(3.0)  # holds the only worker, in C code: cannot be interrupted (and outlasts
                             # the exit wait's quiet first second, after which the wait is announced)
        finally:
            print("running returned", flush=True)
        print("running went on", flush=True)  # not reached: cancelled at its next bytecode

    @engine.task
    def queued(i):
        print("queued ran", i, flush=True)

    running.submit()
    started.wait()  # the worker is stuck in C code: what follows stays in the engine's queue
    for i in range(5):
        queued.submit(i)
    print("ready", flush=True)
    """
    rc, out, err = _ctrl_c(script, stderr_ready=_EXIT_WAIT)
    assert rc == 0, err
    assert "running returned" in out, out
    assert "running went on" not in out and "queued ran" not in out, out
    assert "interrupted; cancelling outstanding executions" in err


def test_ctrl_c_during_the_exit_waits_quiet_second_cancels_as_before():
    # Issue 10: the exit wait is announced only after a second; a Ctrl-C inside that first second
    # ends it as one after the announcement does (cancels, waits for the bodies, exit status 0).
    script = """
    import atexit, distaff

    @distaff.task
    def forever():
        while True:
            distaff.sleep(0.01)

    forever.submit()
    # Exit hooks run last-registered first: this line is printed just before distaff's exit wait.
    atexit.register(lambda: print("ready", flush=True))
    """
    try:
        rc, out, err = _ctrl_c(script, wait=0.2, timeout=30)
    except Exception as e:  # subprocess.TimeoutExpired: the hang
        pytest.fail(f"exit hung after Ctrl-C: {e!r}")
    assert rc == 0, err
    assert "interrupted; cancelling outstanding executions" in err, err
    assert _EXIT_WAIT not in err, err  # the Ctrl-C came within the quiet second
    assert "Traceback" not in err, err


def test_ctrl_c_during_the_exit_wait_ends_a_suspended_body():
    script = """
    import distaff

    @distaff.task
    def forever():
        while True:
            distaff.sleep(0.01)  # suspended most of the time: woken by the cancel

    forever.submit()
    print("ready", flush=True)
    """
    try:
        rc, out, err = _ctrl_c(script, stderr_ready=_EXIT_WAIT, timeout=30)
    except Exception as e:  # subprocess.TimeoutExpired: the hang
        pytest.fail(f"exit hung after Ctrl-C: {e!r}")
    assert rc == 0, err
    assert "interrupted; cancelling outstanding executions" in err
    assert "Traceback" not in err, err  # a cancelled body is not an unobserved failure


def test_ctrl_c_during_the_exit_wait_ends_a_body_running_python():
    script = """
    import distaff

    @distaff.task
    def spin():
        print("ready", flush=True)
        n = 0
        while True:  # pure Python, never waits: interrupted at a bytecode boundary
            n = (n + 1) % 1000

    spin.submit()
    """
    try:
        rc, out, err = _ctrl_c(script, stderr_ready=_EXIT_WAIT, timeout=30)
    except Exception as e:
        pytest.fail(f"exit hung after Ctrl-C: {e!r}")
    assert rc == 0, err


def test_a_second_ctrl_c_during_the_exit_wait_leaves_a_body_stuck_in_c_and_exits():
    """The first Ctrl-C cancels; a body stuck in C code cannot end. The second one exits at once,
    leaving it: without finalising the interpreter (a body returning from its C call would take the
    GIL of a finalising interpreter: SIGABRT), dying of SIGINT as an interrupted program does. It
    used to wait for the C call to return, i.e. forever for one that never does."""
    script = """
    import time
    import distaff

    @distaff.task
    def in_c():
        print("ready", flush=True)
        try:
            time.sleep(600)
        finally:
            print("body returned", flush=True)

    in_c.submit()
    """
    rc, out, err = _ctrl_c(script, stderr_ready=_EXIT_WAIT, signals=2, timeout=30)
    assert rc == -signal.SIGINT, (rc, err)
    assert "FATAL" not in err and "terminate called" not in err, err
    assert "body returned" not in out
    assert "interrupted; cancelling outstanding executions" in err
    assert "exiting now; 1 execution(s) did not end" in err


def test_the_next_ctrl_c_exits_at_once_while_the_exit_cancel_runs_a_done_callback_on_the_main_thread():
    """The first Ctrl-C at exit cancels, and the cancel runs the cancelled execution's done-callback
    on the main thread. The next Ctrl-C exits at once from inside that callback. Before (outsider,
    session 11, 4 of 4 runs): the second Ctrl-C became a KeyboardInterrupt inside the callback,
    which the callback runner logged, and further ones were only counted until the callback
    returned, after its whole sleep."""
    script = """
    import threading, time
    import distaff

    started = threading.Event()

    @distaff.task
    def body():
        started.set()
        while True:
            distaff.sleep(0.05)  # ends at its cancel

    def slow_callback(ex):
        print("in callback", flush=True)
        for _ in range(600):  # 30 s in slices: each wakes the main thread for a pending signal
            time.sleep(0.05)
        print("callback returned", flush=True)

    ex = body.submit()
    ex.add_done_callback(slow_callback)
    started.wait()
    print("ready", flush=True)
    """
    rc, out, err = _ctrl_c(script, stderr_ready=_EXIT_WAIT, signals=2, then_line="in callback", timeout=20)
    assert rc == -signal.SIGINT, (rc, err)  # within the 20 s: the callback would have slept 30 s
    assert "callback returned" not in out
    assert "exiting now" in err, err
    assert "FATAL" not in err and "Traceback" not in err, err


def test_one_ctrl_c_at_exit_ends_a_poller_that_swallows_its_interrupt_while_parked():
    # The outsider's program (session 12, test_swallowed_interrupts.py has the mechanism): a
    # background poller still running when the script ends; the exit waits for it, and one Ctrl-C
    # cancels it. Its wait raised CancelledError into `except Exception`, every later wait raised at
    # once and was logged, and the process never exited (3 of 3).
    script = """
    import logging, distaff
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log = logging.getLogger("poller")

    @distaff.task
    def poller():
        while True:
            try:
                distaff.sleep(0.2)            # parked here at the Ctrl-C
            except Exception as e:
                log.warning("poll failed: %s", type(e).__name__)

    poller.submit()
    print("ready", flush=True)
    """
    rc, out, err = _ctrl_c(script, stderr_ready=_EXIT_WAIT, signals=1, timeout=30)
    assert rc == 0, err  # the wait ended by the one Ctrl-C, as documented
    assert "interrupted; cancelling outstanding executions" in err, err
    assert "exiting now" not in err, err
    assert err.count("poll failed") < 1000, err.count("poll failed")  # stopped, not logging for good


_NON_DAEMON_WAITER = """
import threading, time, distaff
@distaff.task()
def job(seconds):
    distaff.sleep(seconds)
    return "job done"
submitted = []
def waiter():
    ex = job.submit({seconds})
    submitted.append(ex)
{ready_here}
    print(ex.result(), flush=True)
threading.Thread(target=waiter).start()
{main}
"""


# asleep_in_c: the main thread sleeps in one C call, which only a signal delivered to it ends. A
# thread that does not block SIGINT when the Ctrl-C comes — a worker starting the job, the waiter
# before it parks in result() — may be the one the kernel hands it to, and then the main thread
# sleeps on (a Known gap in reliability.md for a busy worker). So that variant sends the Ctrl-C only
# once every thread but the main one blocks SIGINT (/proc's SigBlk): the body is running and parked
# in distaff.sleep, its worker idle, the waiter parked in result(). (A 0.2 s sleep standing in for
# this check let one CI run in many hang on 3.12, session 13.) The slices variant keeps the Ctrl-C
# right after the submit: its main thread wakes every 50 ms and sees a signal whichever thread took
# it.
_MAIN_ONCE_ONLY_IT_TAKES_SIGINT = """\
import os, signal
def others_block_sigint():
    me = threading.get_native_id()
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                status = f.read()
        except FileNotFoundError:  # a thread that ended
            continue
        if not int(status.split("SigBlk:")[1].split()[0], 16) & (1 << (signal.SIGINT - 1)):
            return False
    return True
deadline = time.monotonic() + 60
while not (submitted and submitted[0].state == "running" and others_block_sigint()):
    if time.monotonic() > deadline:
        raise SystemExit("the threads never all blocked SIGINT")
    time.sleep(0.001)
print("ready", flush=True)
time.sleep(60)"""
_READY_AFTER_SUBMIT = '    print("ready", flush=True)'


@pytest.mark.parametrize(
    "main, ready_here",
    [("while True: time.sleep(0.05)", _READY_AFTER_SUBMIT), (_MAIN_ONCE_ONLY_IT_TAKES_SIGINT, "")],
    ids=["slices", "asleep_in_c"],
)
def test_one_ctrl_c_ends_a_program_whose_non_daemon_thread_waits_in_distaff(main, ready_here):
    """Python joins non-daemon threads before it runs atexit hooks: after a Ctrl-C, distaff cancels
    outstanding work at that earlier point (threading._register_atexit), so the waiting thread's
    call raises CancelledError, the thread ends and the program exits on the one Ctrl-C.

    The Ctrl-C lands right after the thread submitted: often while its worker has taken the job but
    waits for the GIL (the main thread may even be inside Thread.start()). Such a body is cancelled
    as it starts (it once ran its full sleep: the program seemed to ignore the Ctrl-C, 1 run in 2)."""
    code = _NON_DAEMON_WAITER.format(seconds=30, main=main, ready_here=ready_here)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode in (-signal.SIGINT, 130), (proc.returncode, err)
    assert err.count("the program was interrupted; cancelling outstanding executions") == 1, err
    assert "CancelledError" in err and "job done" not in out, (out, err)


def test_without_ctrl_c_a_non_daemon_thread_waiting_in_distaff_finishes_its_wait_at_exit():
    """The early exit hook does nothing unless the program was interrupted: the thread's call
    completes and the program exits normally."""
    proc = run_python(_NON_DAEMON_WAITER.format(seconds=0.2, main="pass", ready_here=_READY_AFTER_SUBMIT), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ready", "job", "done"], proc.stdout
    assert "cancelling" not in proc.stderr, proc.stderr


def test_a_second_ctrl_c_landing_in_another_exit_hook_still_gives_up_on_a_stuck_body():
    """A second Ctrl-C that arrives between Python's join of the threads and distaff's exit hook
    (here: inside a user's atexit hook, which runs just before distaff's) is counted, not raised
    there: an exception at that point once escaped distaff's hook before it stopped the engines
    (CI, the lock-held-across-a-wait case). The exit hook treats it as the second Ctrl-C: it gives
    up on the body stuck in a blocking call and the process dies of SIGINT."""
    script = """
    import atexit, os, signal, threading, distaff
    entered = threading.Event()
    never = threading.Event()

    @distaff.task
    def stuck():
        entered.set()
        never.wait()  # a blocking call: cancel cannot end it

    ex = stuck.submit()
    entered.wait()

    @atexit.register  # registered after distaff's: runs before it
    def second_ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        print("second sent", flush=True)

    print("ready", flush=True)
    ex.result()
    """
    rc, out, err = _ctrl_c(script, signals=1, timeout=30)
    assert rc == -signal.SIGINT, (rc, out, err)
    assert "second sent" in out, out
    assert "Exception ignored" not in err, err
    assert "exiting now; 1 execution(s) did not end" in err, err


def test_a_second_ctrl_c_interrupts_the_join_of_a_thread_stuck_outside_distaff():
    """After the first Ctrl-C, distaff cancels its work before Python joins the non-daemon threads;
    a thread stuck in something else (a plain Event) keeps the join waiting, and a second Ctrl-C
    interrupts that join, as it does without distaff. The program then exits.

    The kernel may hand a process's SIGINT to any of its threads, and CPython only runs handlers
    on the main thread: a main thread blocked in a lock wait that did not receive the signal
    itself stays blocked (CPython's behaviour, with or without distaff). So the main thread here
    waits in slices, and the second Ctrl-C is repeated until the process ends (bounded)."""
    import os
    import selectors
    import textwrap

    script = """
    import threading, distaff
    never = threading.Event()
    threading.Thread(target=never.wait).start()  # non-daemon, never ends

    @distaff.task
    def long():
        distaff.sleep(60)

    ex = long.submit()  # outstanding at exit: the early hook cancels it and says so
    print("ready", flush=True)
    while True:
        never.wait(0.05)  # the first Ctrl-C ends the main thread here
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout.readline().strip() == b"ready"
        proc.send_signal(signal.SIGINT)
        err = b""
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        while b"cancelling outstanding executions" not in err:
            assert time.monotonic() < deadline, err
            if sel.select(timeout=0.5):
                chunk = os.read(proc.stderr.fileno(), 65536)
                assert chunk, err  # the child ended before saying it
                err += chunk
        for _ in range(40):  # the second Ctrl-C (again if the kernel gave it to another thread)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
        out, rest = proc.communicate(timeout=30)
        err += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGINT, (proc.returncode, err)
    assert b"FATAL" not in err and b"Fatal Python error" not in err, err


def test_a_ctrl_c_while_python_joins_a_non_daemon_thread_cancels_the_outstanding_work():
    """The program was not interrupted, so the early exit hook had nothing to cancel; a Ctrl-C that
    then lands while Python joins a non-daemon thread interrupts that join (as without distaff) and
    is remembered: the exit hook cancels the body instead of waiting its 60 s (it did, after
    Python reported the KeyboardInterrupt as ignored)."""
    code, out, err = _ctrl_c("""
        import threading, time, distaff

        @distaff.task()
        def body():
            try:
                distaff.sleep(60)
                print("completed", flush=True)
            except distaff.CancelledError:
                print("cancelled", flush=True)
                raise

        def lingering():  # a thread outside distaff that the exit joins
            while threading.main_thread().is_alive():
                time.sleep(0.01)
            print("ready", flush=True)  # the main thread is done: Python is joining this thread
            time.sleep(5)

        body.submit()
        threading.Thread(target=lingering).start()
    """, wait=0.3, timeout=40)
    assert "cancelled" in out and "completed" not in out, (out, err)
    assert "cancelling outstanding executions" in err, err


def test_an_inherited_sig_ign_stays_ignored_during_the_exit_wait():
    """A program started with SIGINT ignored (`cmd &` in a script) keeps ignoring it at exit: the
    exit wait no longer installs its handler over SIG_IGN, so the body completes."""
    import os
    import textwrap

    script = textwrap.dedent("""
        import signal, distaff
        print("ignored:", signal.getsignal(signal.SIGINT) is signal.SIG_IGN, flush=True)

        @distaff.task()
        def work():
            distaff.sleep(2)
            print("completed", flush=True)

        work.submit()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert proc.stdout.readline().strip() == "ignored: True"
        seen = []
        while not any("before exit" in line for line in seen):  # the exit wait has begun
            line = proc.stderr.readline()
            assert line, seen
            seen.append(line)
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "completed" in out, (out, err)
    assert "cancelling" not in err, err


def test_distaffs_helper_threads_block_ctrl_c_while_they_sleep():
    """The asyncio loop watcher (started by an `async def` body) sleeps in time.sleep between its
    rounds. With SIGINT unblocked there, the kernel could hand it a Ctrl-C meant for the main thread,
    which then slept on in epoll_wait under asyncio.run: an outsider lost the first Ctrl-C in 8 of 70
    runs (session 11). It blocks the process's signals around its sleep (distaff/_quiet.py)."""
    proc = run_python(
        """
        import asyncio, threading, time, signal, distaff

        def blocked(native_id, sig):
            with open(f"/proc/self/task/{native_id}/status") as f:
                for line in f:
                    if line.startswith("SigBlk:"):
                        return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
            return False

        @distaff.task()
        async def body():
            await asyncio.sleep(60)

        async def main():
            ex = body.submit()
            t0 = time.monotonic()
            while True:
                w = [t for t in threading.enumerate() if t.name == "distaff-loop-watch"]
                if w and blocked(w[0].native_id, signal.SIGINT):
                    print("watcher blocks SIGINT")
                    break
                assert time.monotonic() - t0 < 60, [t.name for t in threading.enumerate()]
                await asyncio.sleep(0.001)
            ex.cancel()
            assert not blocked(threading.get_native_id(), signal.SIGINT)

        asyncio.run(main())
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "watcher blocks SIGINT" in proc.stdout, proc.stdout + proc.stderr


def test_the_elastic_monitor_never_takes_ctrl_c_and_grown_workers_start_with_the_first_workers_mask():
    """The elastic monitor ticks every 2 ms while work is live and used to scan with the signals
    unblocked: the kernel could hand it a Ctrl-C meant for a main thread asleep in C, which then
    slept on (a CI run of test_one_ctrl_c_ends_a_program_whose_non_daemon_thread_waits_in_distaff
    [asleep_in_c], session 15, under load). It now blocks them for good. A worker it grows must
    not inherit that: a process its bodies start would start with Ctrl-C blocked."""
    proc = run_python(
        """
        import os, signal, threading, distaff

        def sigint_blocked(tid):
            with open(f"/proc/self/task/{tid}/status") as f:
                return bool(int(f.read().split("SigBlk:")[1].split()[0], 16) & (1 << (signal.SIGINT - 1)))

        def comm(tid):
            with open(f"/proc/self/task/{tid}/comm") as f:
                return f.read().strip()

        eng = distaff.Engine(workers=1, max_workers=3)
        gate = threading.Event()
        a = eng.submit(lambda: gate.wait(60))      # the one worker stuck in C, GIL released
        b = eng.submit(lambda: (comm(threading.get_native_id()), sigint_blocked(threading.get_native_id())))
        print("GROWN WORKER", b.result(timeout=60))
        monitor = [int(t) for t in os.listdir("/proc/self/task") if comm(int(t)) == "distaff-monitor"]
        assert len(monitor) == 1, [comm(int(t)) for t in os.listdir("/proc/self/task")]
        # `a` is live, so the monitor ticks every 2 ms: sample its mask across many ticks.
        print("MONITOR EVER UNBLOCKED", any(not sigint_blocked(monitor[0]) for _ in range(5000)))
        gate.set()
        a.result(timeout=60)
        eng.shutdown()
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "MONITOR EVER UNBLOCKED False" in proc.stdout, proc.stdout
    assert "GROWN WORKER ('distaff-w1', False)" in proc.stdout, proc.stdout


@pytest.mark.parametrize("shape", ["workflow", "workflow_id=", "workflow_scope"])
def test_ctrl_c_stops_a_loop_of_calls_tagged_with_a_workflow(shape):
    # An outsider's find: each tagged execution sat in a weakref.WeakSet, whose removal callback
    # (Python code) ran as the call dropped the execution; a Ctrl-C pending then was raised inside
    # the callback, where Python prints "Exception ignored" and drops it: the loop never stopped.
    call = {"workflow": "top()", "workflow_id=": "leaf(workflow_id='run-1')",
            "workflow_scope": "leaf()"}[shape]
    script = f"""
import distaff

@distaff.workflow
def top():
    distaff.sleep(0.002)
    return 1

@distaff.task()
def leaf():
    distaff.sleep(0.002)
    return 1

scope = distaff.workflow_scope("run-1") if {shape == "workflow_scope"!r} else None
if scope is not None:
    scope.__enter__()
for i in range(20):
    {call}
print("ready", flush=True)
while True:
    {call}
"""
    rc, out, err = _ctrl_c(script, wait=0.2, timeout=30)
    assert rc != 0 and "KeyboardInterrupt" in err, (rc, out, err)
    assert "Exception ignored" not in err, err
