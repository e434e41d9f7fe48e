"""progress=True on wait / as_completed / gather / join, and distaff.progress()
(docs/observability.md, "Progress").

What a person sees is checked in fresh interpreters with a deadline: stderr a pipe (plain lines),
stderr a pseudo-terminal (python's pty: the live bar of rich, tqdm, or distaff's plain one).
Programs step on what was drawn, not on time: stderr is teed into a buffer that a driver thread
waits on (``tee.seen(text)``) before it releases the next gate.
"""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time

import pytest

import distaff
from distaff import _progress
from conftest import run_python

PRELUDE = '''
import os, signal, sys, threading, _thread
import distaff

class Tee:
    """stderr as it is, plus seen(text): waits until text was written to it."""
    def __init__(self, f):
        self.f, self.buf, self.cv = f, "", threading.Condition()
    def write(self, s):
        with self.cv:
            self.buf += s
            self.cv.notify_all()
        return self.f.write(s)
    def flush(self):
        self.f.flush()
    def isatty(self):
        return self.f.isatty()
    def fileno(self):
        return self.f.fileno()
    def seen(self, text, timeout=60):
        with self.cv:
            if not self.cv.wait_for(lambda: text in self.buf, timeout):
                raise SystemExit(f"never drawn: {text!r}")

tee = sys.stderr = Tee(sys.stderr)

@distaff.task
def gated(i, gate):
    gate.wait()
    if i == 1:
        raise ValueError("boom")
    return i

def drive(*steps):
    """In a thread: for each (text, gates) wait until text was drawn, then open those gates."""
    def run():
        for text, gates in steps:
            tee.seen(text)
            for g in gates:
                g.set()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t

def progress_threads_end():
    ts = [t for t in threading.enumerate() if t.name == "distaff-progress"]
    for t in ts:
        t._started.wait(10)  # a Ctrl-C may have cut Thread.start() short: the thread runs anyway
        t.join(10)
    return not any(t.is_alive() for t in ts)
'''

LINE = re.compile(r"^\[distaff\] (?P<desc>[^:]+): (?P<done>\d+)/(?P<total>\d+) done(?: \((?P<details>[^)]*)\))?, [\d.:]+s?(?: - (?P<outcome>.+))?$")


def _run(code, env=None, timeout=120):
    e = {"DISTAFF_PROGRESS_INTERVAL": "0"}
    e.update(env or {})
    return run_python(PRELUDE + textwrap.dedent(code), env=e, timeout=timeout)


def _lines(stderr, desc=None):
    out = []
    for line in stderr.splitlines():
        m = LINE.match(line)
        if m and (desc is None or m["desc"] == desc):
            out.append(m)
    return out


def _ok(res):
    assert res.returncode == 0, res.stderr
    return res


# ---------------------------------------------------------------------------------------------
# stderr not a terminal: plain lines


def test_wait_progress_prints_plain_lines_when_stderr_is_not_a_tty():
    res = _ok(_run("""
        gates = [distaff.Event() for _ in range(3)]
        xs = [gated.submit(i, g) for i, g in enumerate(gates)]
        drive(("wait: 0/3 done", gates[:1]), ("wait: 1/3 done", gates[1:]))
        done, not_done = distaff.wait(xs, progress=True)
        xs[1].exception()
        print(len(done), len(not_done), progress_threads_end())
    """))
    assert res.stdout.split() == ["3", "0", "True"]
    assert "\x1b" not in res.stderr and "\r" not in res.stderr
    lines = _lines(res.stderr, "wait")
    assert [m["done"] for m in lines][:2] == ["0", "1"] and lines[0]["outcome"] is None
    last = lines[-1]
    assert (last["done"], last["total"], last["details"], last["outcome"]) == ("3", "3", "1 failed", "done")
    assert len([m for m in lines if m["outcome"]]) == 1  # one final line


def test_as_completed_gather_and_join_progress_lines():
    res = _ok(_run("""
        gates = [distaff.Event() for _ in range(3)]
        xs = [gated.submit(i, g) for i, g in enumerate(gates)]
        drive(("as_completed: 0/3 done", gates))
        got = sorted(x.id for x in distaff.as_completed(xs, progress=True))
        print("as_completed", len(got))
        print("gather", distaff.gather(*xs, return_exceptions=True, progress=True).result()[0])
        try:
            distaff.gather(*xs, progress=True).result()
        except ValueError as e:
            print("gather failed", e)
        print("join", distaff.join(a=xs[0], c=xs[2], progress=True).result())
        try:
            distaff.join(a=xs[0], b=xs[1], progress=True).result()
        except distaff.JoinError as e:
            print("join failed", e.member)
        blocker = distaff.Event()
        y = gated.submit(0, blocker)
        g = distaff.gather(y, progress=True)
        tee.seen("gather: 0/1 done")
        g.cancel()
        print("cancelled", g.cancelled(), y.cancelled(), progress_threads_end())
    """))
    assert res.stdout.splitlines() == [
        "as_completed 3", "gather 0", "gather failed boom", "join {'a': 0, 'c': 2}", "join failed b",
        "cancelled True True True",
    ]
    finals = [(m["desc"], m["done"], m["total"], m["details"], m["outcome"]) for m in _lines(res.stderr) if m["outcome"]]
    assert finals == [
        ("as_completed", "3", "3", "1 failed", "done"),
        ("gather", "3", "3", "1 failed", "done"),
        ("gather", "3", "3", "1 failed", "failed"),
        ("join", "2", "2", None, "done"),
        ("join", "2", "2", "1 failed", "failed"),
        ("gather", "1", "1", "1 cancelled", "cancelled"),
    ]


def test_progress_ends_on_timeout_and_the_program_exits():
    res = _ok(_run("""
        blocker = distaff.Event()
        x = gated.submit(0, blocker)
        done, not_done = distaff.wait([x], timeout=0.05, progress=True)
        print("wait", len(not_done))
        try:
            for _ in distaff.as_completed([x], timeout=0.05, progress=True):
                pass
        except TimeoutError as e:
            print("as_completed", e)
        print("first", len(distaff.wait([x, gated.submit(0, distaff.Event()), distaff.task(int).submit()],
                                        return_when=distaff.FIRST_COMPLETED, progress=True)[0]))
        print(progress_threads_end())
        distaff.shutdown(cancel_pending=True, cancel_running=True)
    """, timeout=60))
    assert res.stdout.splitlines() == ["wait 1", "as_completed 1 (of 1) executions unfinished", "first 1", "True"]
    finals = [(m["desc"], m["done"], m["total"], m["outcome"]) for m in _lines(res.stderr) if m["outcome"]]
    assert finals == [("wait", "0", "1", "timed out"), ("as_completed", "0", "1", "timed out"),
                      ("wait", "1", "3", "first completed")]


@pytest.mark.parametrize("where", ["drawing the first line", "in the wait"])
def test_ctrl_c_in_a_wait_with_progress_ends_the_display(where):
    res = _ok(_run(f"""
        import time
        blocker = distaff.Event()
        x = gated.submit(0, blocker)
        main = threading.main_thread().ident
        def in_wait():
            f = sys._current_frames().get(main)
            return f is not None and f.f_code.co_name == "_wait_sync"
        def interrupt():
            tee.seen("wait: 0/1 done")  # written before the display's thread starts
            if {where!r} == "in the wait":
                deadline = time.monotonic() + 30
                while not in_wait() and time.monotonic() < deadline:  # a condition, polled
                    time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=interrupt, daemon=True).start()
        try:
            distaff.wait([x], progress=True)
        except KeyboardInterrupt:
            print("interrupted")
        finally:
            x.cancel()
        print(progress_threads_end())
    """, timeout=60))
    assert res.stdout.splitlines() == ["interrupted", "True"]
    assert [(m["done"], m["outcome"]) for m in _lines(res.stderr, "wait")] == [("0", None), ("0", "interrupted")]


def test_a_broken_off_iteration_and_an_exception_end_the_display():
    res = _ok(_run("""
        gates = [distaff.Event() for _ in range(2)]
        xs = [gated.submit(i + 2, g) for i, g in enumerate(gates)]
        gates[0].set()
        for x in distaff.as_completed(xs, progress=True):
            break
        del x
        print(progress_threads_end())
        try:
            with distaff.progress():
                raise RuntimeError("in the block")
        except RuntimeError:
            pass
        gates[1].set()
        distaff.wait(xs)
    """))
    assert res.stdout.split() == ["True"]
    finals = [(m["desc"], m["outcome"]) for m in _lines(res.stderr) if m["outcome"]]
    assert finals == [("as_completed", "stopped"), ("engine", "stopped by RuntimeError")]


def test_a_display_still_open_at_exit_does_not_hold_the_program():
    res = _ok(_run("""
        import atexit
        blocker = distaff.Event()
        x = gated.submit(0, blocker)
        g = distaff.gather(x, progress=True)
        tee.seen("gather: 0/1 done")
        atexit.register(blocker.set)   # runs first: the exit wait then finds x finishing
        print("main done")
    """, timeout=60))
    assert res.stdout.splitlines() == ["main done"]
    finals = [m["outcome"] for m in _lines(res.stderr, "gather") if m["outcome"]]
    assert finals in (["interpreter exiting"], ["done"])


def test_progress_in_a_task_body_and_a_stderr_that_cannot_be_written():
    res = _ok(_run("""
        @distaff.workflow
        def parent(n):
            kids = [distaff.task(abs).submit(-i) for i in range(n)]
            done, _ = distaff.wait(kids, progress=True)
            return distaff.gather(*kids, progress=True).result()
        print(parent(5), progress_threads_end())
        closed = open(os.devnull, "w")
        closed.close()
        sys.stderr = closed   # every write raises ValueError: the display goes quiet
        print(distaff.wait([distaff.task(abs).submit(-3)], progress=True)[0].pop().result())
        with distaff.progress() as p:
            pass
        print(parent(3), progress_threads_end())
    """))
    assert res.stdout.splitlines() == ["[0, 1, 2, 3, 4] True", "3", "[0, 1, 2] True"]
    finals = [(m["desc"], m["done"], m["outcome"]) for m in _lines(res.stderr) if m["outcome"]]
    assert finals == [("wait", "5", "done"), ("gather", "5", "done")]


def test_asyncio_wait_and_async_for_with_progress():
    res = _ok(_run("""
        import asyncio
        async def main():
            gates = [distaff.Event() for _ in range(2)]
            xs = [gated.submit(i * 2, g) for i, g in enumerate(gates)]
            drive(("wait: 0/2 done", gates))
            done, pending = await distaff.wait(xs, progress=True)
            n = 0
            async for _ in distaff.as_completed(xs, progress=True):
                n += 1
            async with distaff.progress() as p:
                await distaff.gather(gated.submit(0, gates[0]), progress=True)
            return len(done), n, p.snapshot()["done"]
        print(asyncio.run(main()), progress_threads_end())
    """))
    assert res.stdout.split() == ["(2,", "2,", "1)", "True"]
    finals = [(m["desc"], m["done"], m["outcome"]) for m in _lines(res.stderr) if m["outcome"]]
    assert finals == [("wait", "2", "done"), ("as_completed", "2", "done"), ("gather", "1", "done"),
                      ("engine", "1", "done")]


def test_progress_context_manager_lines_for_a_workflow_and_the_engine():
    res = _ok(_run("""
        gates = [distaff.Event() for _ in range(3)]
        with distaff.workflow_scope("wf-7"):
            with distaff.progress() as p:
                xs = [gated.submit(i, g) for i, g in enumerate(gates)]
                tee.seen("workflow wf-7: 0/3 done (3 running)")
                gates[0].set()
                tee.seen("workflow wf-7: 1/3 done (2 running)")
                for g in gates:
                    g.set()
                distaff.wait(xs)
                print(p.snapshot())
        with distaff.progress() as p:
            ys = [gated.submit(0, gates[0]) for _ in range(4)]
            distaff.wait(ys)
            print(p.snapshot())
        xs[1].exception()
    """))
    assert res.stdout.splitlines() == [
        "{'done': 3, 'total': 3, 'failed': 1, 'cancelled': 0, 'running': 0, 'pending': 0}",
        "{'done': 4, 'total': 4, 'failed': 0, 'cancelled': 0, 'running': 0, 'pending': 0}",
    ]
    finals = [(m["desc"], m["done"], m["total"], m["details"], m["outcome"]) for m in _lines(res.stderr) if m["outcome"]]
    assert finals == [("workflow wf-7", "3", "3", "1 failed", "done"), ("engine", "4", "4", None, "done")]


# ---------------------------------------------------------------------------------------------
# stderr a terminal: live bars


def run_in_pty(code, env=None, timeout=60, prefix=""):
    """Runs PRELUDE + code with stdin/stdout/stderr on a 100x30 pseudo-terminal; returns
    (exit code, everything written to the terminal)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    full_env = dict(os.environ, TERM="xterm-256color")
    full_env.pop("NO_COLOR", None)
    full_env.update(env or {})
    proc = subprocess.Popen([sys.executable, "-c", prefix + PRELUDE + textwrap.dedent(code)],
                            stdin=slave, stdout=slave, stderr=slave, env=full_env, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            raise AssertionError(f"no exit within {timeout}s; terminal so far: {out!r}")
        return proc.wait(timeout=10), out.decode("utf-8", errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


TTY_PROGRAM = """
    gates = [distaff.Event() for _ in range(3)]
    xs = [gated.submit(i, g) for i, g in enumerate(gates)]
    drive(("0/3", gates[:1]), ("1/3", gates[1:]))
    distaff.wait(xs, progress=True)
    xs[1].exception()
    print("after", progress_threads_end())
"""

BLOCK_RICH_TQDM = "import sys; sys.modules['rich'] = None; sys.modules['tqdm'] = None\n"


def _plain_bar_checks(out):
    assert "\r" in out and "\x1b[K" in out  # redrawn in place
    assert re.search(r"\[\.{10,}\] wait: 0/3 done", out)
    assert re.search(r"\[#{10,}\] wait: 3/3 done \(1 failed\), [\d.]+s - done\x1b\[K\r?\n", out)
    assert out.rstrip().endswith("after True")


def test_tty_plain_bar_when_asked_for_even_with_rich_installed():
    import rich  # noqa: F401 - the point: rich is installed, the switch still picks the plain bar

    rc, out = run_in_pty(TTY_PROGRAM, {"DISTAFF_PROGRESS": "plain"})
    assert rc == 0, out
    _plain_bar_checks(out)
    assert "━" not in out and "it/s" not in out


def test_tty_plain_bar_when_neither_rich_nor_tqdm_is_installed():
    rc, out = run_in_pty(TTY_PROGRAM, {"DISTAFF_PROGRESS": "auto"}, prefix=BLOCK_RICH_TQDM)
    assert rc == 0, out
    _plain_bar_checks(out)


def test_tty_rich_bar_by_default_when_rich_is_installed():
    import rich  # noqa: F401 - in the test extra: CI has it

    rc, out = run_in_pty(TTY_PROGRAM)
    assert rc == 0, out
    assert "\x1b[?25l" in out and "\x1b[?25h" in out  # rich hides the cursor and gives it back
    assert "━" in out
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert re.search(r"wait .*0/3", plain) and re.search(r"wait .*1/3", plain)
    assert re.search(r"wait .*3/3 1 failed - done", plain)
    assert "after True" in plain


def test_tty_tqdm_bar_when_asked_for_and_when_rich_is_missing():
    import tqdm  # noqa: F401 - in the test extra: CI has it

    for prefix, env in (("", {"DISTAFF_PROGRESS": "tqdm"}), ("import sys; sys.modules['rich'] = None\n", {})):
        rc, out = run_in_pty(TTY_PROGRAM, env, prefix=prefix)
        assert rc == 0, out
        assert re.search(r"wait:\s+0%\|.*\| 0/3", out) and re.search(r"wait:\s+33%\|.*\| 1/3", out)
        assert re.search(r"wait: 100%\|.*\| 3/3 \[.*1 failed - done\]", out)
        assert "━" not in out and "after True" in out


def test_tty_naming_a_renderer_that_is_not_installed_fails_at_the_call():
    code = """
        try:
            distaff.wait([distaff.task(int).submit()], progress=True)
        except RuntimeError as e:
            print("refused:", e)
    """
    for name in ("rich", "tqdm"):
        rc, out = run_in_pty(code, {"DISTAFF_PROGRESS": name}, prefix=BLOCK_RICH_TQDM)
        assert rc == 0, out
        assert f"refused: DISTAFF_PROGRESS={name} but {name} is not installed (pip install {name})" in out


def test_tty_two_displays_at_once_share_the_terminal():
    """distaff.progress() around a wait(progress=True): two rows, both finished in the end."""
    code = """
        gates = [distaff.Event() for _ in range(2)]
        with distaff.progress() as p:
            xs = [gated.submit(i * 2, g) for i, g in enumerate(gates)]
            drive(("0/2", gates))
            distaff.wait(xs, progress=True)
        print("after", progress_threads_end())
    """
    for backend in ("plain", "rich", "tqdm"):
        rc, out = run_in_pty(code, {"DISTAFF_PROGRESS": backend})
        assert rc == 0, (backend, out)
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
        assert re.search(r"wait.*2/2.*done", plain) and re.search(r"engine.*2/2.*done", plain), (backend, out)
        assert "after True" in plain


# ---------------------------------------------------------------------------------------------
# Off costs nothing; bad input; counts


def test_progress_off_touches_nothing(engine, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("progress machinery used with progress off")

    monkeypatch.setattr(_progress, "start", refuse)
    monkeypatch.setattr(_progress, "track", refuse)
    monkeypatch.setattr(_progress, "track_handle", refuse)
    monkeypatch.setattr(_progress, "wanted", refuse)
    before = {t.name for t in threading.enumerate()}
    noop = engine.task()(lambda i: i)
    xs = [noop.submit(i) for i in range(5)]
    assert len(distaff.wait(xs).done) == 5
    assert len(distaff.wait(xs, progress=False).done) == 5
    assert len(list(distaff.as_completed(xs))) == 5
    assert distaff.gather(*xs).result() == [0, 1, 2, 3, 4]
    assert distaff.join(a=xs[0]).result() == {"a": 0}
    assert "distaff-progress" not in {t.name for t in threading.enumerate()} - before


def test_progress_off_imports_and_starts_nothing_in_a_fresh_interpreter():
    res = _ok(run_python("""
        import sys, threading
        import distaff
        xs = [distaff.task(abs).submit(-i) for i in range(100)]
        distaff.wait(xs)
        list(distaff.as_completed(xs))
        distaff.gather(*xs).result()
        distaff.join(a=xs[0], progress=False).result()
        print(sorted(m for m in ("rich", "tqdm") if m in sys.modules),
              [t.name for t in threading.enumerate() if t.name == "distaff-progress"],
              distaff._progress._board.entries, distaff._progress._board.renderer)
    """))
    assert res.stdout.split() == ["[]", "[]", "[]", "None"], res.stdout


def test_progress_false_or_none_is_off_and_anything_else_is_refused(engine, monkeypatch):
    noop = engine.task()(lambda: 1)
    x = noop.submit()
    assert distaff.wait([x], progress=None).done == {x}
    for call in (
        lambda: distaff.wait([x], progress="yes"),
        lambda: distaff.as_completed([x], progress=1),
        lambda: distaff.gather(x, progress="on"),
    ):
        with pytest.raises(TypeError, match=r"progress=\) must be True or False"):
            call()
    with pytest.raises(TypeError, match="join\\(\\)'s own option"):
        distaff.join(a=x, progress=x)
    monkeypatch.setenv("DISTAFF_PROGRESS", "fancy")
    with pytest.raises(ValueError, match="DISTAFF_PROGRESS must be one of"):
        distaff.wait([x], progress=True)
    with pytest.raises(ValueError, match="DISTAFF_PROGRESS must be one of"):
        distaff.progress()
    monkeypatch.setenv("DISTAFF_PROGRESS", "auto")
    monkeypatch.setenv("DISTAFF_PROGRESS_INTERVAL", "-1")
    with pytest.raises(ValueError, match="DISTAFF_PROGRESS_INTERVAL"):
        distaff.gather(x, progress=True)
    monkeypatch.delenv("DISTAFF_PROGRESS_INTERVAL")
    with pytest.raises(TypeError, match="workflow_id must be a string"):
        distaff.progress(7)
    with pytest.raises(TypeError, match="engine must be a distaff.Engine"):
        distaff.progress(engine="e")
    with pytest.raises(RuntimeError, match="needs the block to have started"):
        distaff.progress(engine=engine).snapshot()


def test_progress_off_switch_draws_nothing_but_counts(engine, monkeypatch, capfd, new_gate):
    monkeypatch.setenv("DISTAFF_PROGRESS", "off")
    gate = new_gate()
    ev = threading.Event()

    @engine.task()
    def body(i):
        if i == 0:
            gate.wait()
        if i == 1:
            raise KeyError(i)
        return i

    with engine.workflow_scope("wf-off"):
        with distaff.progress(engine=engine) as p:
            xs = [body.submit(i) for i in range(4)]
            distaff.wait(xs[1:], progress=True)
            mid = p.snapshot()
            gate.set()
            distaff.wait(xs)
            end = p.snapshot()
    assert mid["total"] == 4 and mid["done"] == 3 and mid["failed"] == 1
    assert end == {"done": 4, "total": 4, "failed": 1, "cancelled": 0, "running": 0, "pending": 0}
    assert p.workflow_id == "wf-off"
    with distaff.progress("wf-off", engine=engine) as q:  # outside the scope, by id
        assert q.snapshot() == end
    xs[1].exception()
    assert "[distaff]" not in capfd.readouterr().err
    assert not ev.is_set()


def test_engine_counts_agree_with_what_an_awaiting_coroutine_saw():
    """After `await ex` the execution is done, but the engine counted it live until its
    done-callbacks (where the coroutine was resumed) had all run. progress()'s engine counts use
    the "finished" counter, taken as the state turns final, so a block that awaited one execution
    reads exactly 1 of 1 done, and the next block starts from 0 — not "1 running" of 1 done, or
    2 total for one submission (an outsider found 12 of 200 blocks wrong)."""
    proc = run_python(
        """
        import asyncio, distaff

        @distaff.task()
        def crunch(i):
            return i

        async def main():
            bad = []
            for k in range(300):
                async with distaff.progress() as sh:
                    first = sh.snapshot()
                    await crunch.submit(1)
                s = sh.snapshot()
                want = {"done": 1, "total": 1, "failed": 0, "cancelled": 0, "running": 0, "pending": 0}
                if first["total"] != 0 or s != want:
                    bad.append((k, first, s))
            print("bad", len(bad), bad[:3])

        asyncio.run(main())
        """,
        env={"DISTAFF_PROGRESS": "off"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("bad 0 "), proc.stdout
