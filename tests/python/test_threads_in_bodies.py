"""Threads a body starts behave as they would if the caller ran the function itself
(docs/limits.md, "Identity: threads, thread-locals, contextvars"): non-daemon unless asked, so the
program waits for them at exit. Before, a worker's threading.Thread object was a daemon
_DummyThread, every thread a body started inherited daemon=True, and the exit killed them
mid-work. Each case runs in a fresh interpreter with a deadline."""
from __future__ import annotations

import pytest

from conftest import run_python


@pytest.mark.parametrize("how", ["call", "from_a_thread", "async_caller"])
def test_the_program_waits_at_exit_for_a_thread_a_body_started(how, tmp_path):
    out = tmp_path / "written.txt"
    proc = run_python(
        f"""
        import asyncio, threading, time, distaff

        def write_later():
            time.sleep(0.3)                      # still working when the script's last line ran
            with open({str(out)!r}, "w") as f:
                f.write("all of it")

        @distaff.task()
        def save():
            t = threading.Thread(target=write_later)
            t.start()
            return t.daemon

        how = {how!r}
        if how == "call":
            print("DAEMON", save())
        elif how == "from_a_thread":
            got = []
            t = threading.Thread(target=lambda: got.append(save()))
            t.start()
            t.join()
            print("DAEMON", got[0])
        else:
            async def main():
                return await save.submit()
            print("DAEMON", asyncio.run(main()))
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "DAEMON False" in proc.stdout, proc.stdout
    assert out.read_text() == "all of it"   # before: the file did not exist (the thread was killed)


def test_a_thread_a_body_asks_to_be_a_daemon_stays_one():
    proc = run_python(
        """
        import threading, distaff

        @distaff.task()
        def start():
            stop = threading.Event()
            t = threading.Thread(target=stop.wait, daemon=True)
            t.start()
            return t.daemon, threading.current_thread().daemon

        print("FLAGS", start())
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr   # the daemon thread never ends: the exit does not wait
    assert "FLAGS (True, False)" in proc.stdout, proc.stdout


def test_every_body_on_a_worker_starts_non_daemon_threads_and_sees_one_thread_object(tmp_path):
    """3.13 removes a _DummyThread from threading._active when the thread state that made it is
    cleared (a fiber's, at the end of each body): every later body of the worker got a new one, a
    daemon again, and the exit killed the threads of bodies 2 and 3 (an outsider's find). The
    worker keeps its one thread object now, on every version."""
    proc = run_python(
        f"""
        import threading, time, distaff
        eng = distaff.Engine(workers=1, max_workers=1)

        def save(path):
            def write():
                time.sleep(0.3)
                with open(path, "w") as f:
                    f.write("saved")
            t = threading.Thread(target=write)
            t.start()
            return t.daemon, id(threading.current_thread())

        got = [eng.submit(save, {str(tmp_path)!r} + f"/f{{i}}.txt").result() for i in range(3)]
        print("DAEMONS", [d for d, _ in got])
        print("ONE THREAD OBJECT", len({{o for _, o in got}}) == 1)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "DAEMONS [False, False, False]" in proc.stdout, proc.stdout
    assert "ONE THREAD OBJECT True" in proc.stdout, proc.stdout
    for i in range(3):
        assert (tmp_path / f"f{i}.txt").read_text() == "saved"


def test_a_process_forked_by_a_body_keeps_the_programs_name():
    """Worker threads are named distaff-w<N>; a process forked from one (os.fork() in a body,
    multiprocessing's fork start method) is named as the program was, so ps, pgrep and killall
    still find it (an outsider's find)."""
    proc = run_python(
        """
        import os, distaff

        @distaff.task()
        def body():
            r, w = os.pipe()
            ready_r, ready_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.write(ready_w, b"x")    # the fork's hooks have run
                os.read(r, 1)              # until the parent has read our name
                os._exit(0)
            os.read(ready_r, 1)
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
            os.write(w, b"x")
            os.waitpid(pid, 0)
            return name

        with open("/proc/self/comm") as f:
            print("MINE", f.read().strip())
        print("CHILD", body())
        """,
        timeout=60, args=("-W", "ignore::DeprecationWarning"),
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines["CHILD"] == lines["MINE"], proc.stdout
