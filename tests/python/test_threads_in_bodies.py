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
