"""@task(executable=True): the body returns a command, distaff runs it as a subprocess.

Each case runs in a fresh interpreter with a deadline (conftest.run_python): a process that is not
killed, or a wait that never ends, fails the test instead of stalling the suite.
"""

import pickle

import pytest

import distaff
from conftest import run_python

PRELUDE = """
import asyncio, os, pathlib, sys, time
import distaff
from distaff import task
"""


def program(code: str, timeout: float = 60) -> str:
    r = run_python(PRELUDE + code + "\nprint('EXIT-OK')\n", timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "EXIT-OK" in r.stdout
    return r.stdout


# A command whose shell starts a child (sleep) and hands its pid over a FIFO, and a pidfd wait that
# says whether that child is gone (a zombie counts: it has exited).
GRANDCHILD = """
import select

def read_pid(path):
    os.mkfifo(path)
    with open(path) as f:  # opened for writing by the command: it runs
        return int(f.read())

def gone(pid, timeout=10.0):
    fd = os.pidfd_open(pid)
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)

@task(executable=True)
def spawner(path):
    return ["sh", "-c", f"sleep 60 & echo $! > {path}; wait"]
"""


def test_the_command_runs_and_its_stdout_is_the_result():
    out = program("""
@task(executable=True)
def greet(name):
    return f"printf '%s|' 'hello {name}' again"      # split shell-style; no shell runs

@task(executable=True)
def listing(path):
    return ["ls", pathlib.Path(path)]                # an argv list, paths allowed

@task(executable=True)
async def from_async():
    await asyncio.sleep(0)
    return ["echo", "from async"]

print("greet:", repr(greet("world")))
print("list:", "bin" in listing("/").split())
print("async:", repr(from_async()))
ex = greet.submit("x")
print("state:", ex.result() == "hello x|again|", ex.state)

async def main():
    return await greet("loop")
print("awaited:", repr(asyncio.run(main())))
""")
    assert "greet: 'hello world|again|'" in out
    assert "list: True" in out
    assert "async: 'from async\\n'" in out
    assert "state: True succeeded" in out
    assert "awaited: 'hello loop|again|'" in out


def test_a_non_zero_exit_raises_command_error_with_returncode_stdout_and_stderr():
    out = program("""
@task(executable=True)
def fails():
    return ["sh", "-c", "echo partial; echo broken >&2; exit 3"]

try:
    fails()
except distaff.CommandError as e:
    print("error:", e)
    print("fields:", e.returncode, repr(e.stdout), repr(e.stderr), e.cmd[0], isinstance(e, distaff.Error))
""")
    assert "error: task 'fails': command 'sh' exited with status 3: broken" in out
    assert "fields: 3 'partial\\n' 'broken\\n' sh True" in out


def test_bad_commands_fail_with_clear_errors():
    out = program("""
@task(executable=True)
def give(cmd):
    return cmd

for cmd in ("", "   ", [], ["ls", 3], {"cmd": "ls"}, None, "/definitely/not/a/program"):
    try:
        give(cmd)
    except (TypeError, ValueError, FileNotFoundError) as e:
        print(type(e).__name__, "|", e)
""")
    assert out.count("ValueError | executable task 'give' returned an empty command") == 3
    assert "TypeError | executable task 'give' returned an argument of type int" in out
    assert out.count("must return its command as a str or a list of str") == 2
    assert "FileNotFoundError |" in out


def test_options_that_cannot_combine_with_executable_fail_at_decoration():
    with pytest.raises(TypeError, match="takes no executor="):
        distaff.task(executable=True, executor="processes")(lambda: "ls")
    with pytest.raises(TypeError, match="cannot be executable=True"):
        distaff.workflow(executable=True)(lambda: "ls")
    with pytest.raises(TypeError):
        distaff.task(executable="yes")(lambda: "ls")
    t = distaff.task(executable=True)(lambda: "ls")
    with pytest.raises(TypeError, match="takes no executor="):
        t.options(executor="processes")


def test_command_error_pickles_with_its_fields():
    e = distaff.CommandError(["ls", "x"], 2, "out", "err", "listing")
    back = pickle.loads(pickle.dumps(e))
    assert (back.cmd, back.returncode, back.stdout, back.stderr, str(back)) == (e.cmd, 2, "out", "err", str(e))


def test_timeout_and_cancel_kill_the_process(tmp_path):
    out = program(f"""
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): it is dead once reaped, and asyncio reaps it
    try:
        with open(f"/proc/{{pid}}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # reaped between the looks: open gives ENOENT, read gives ESRCH
        return False

def wait_pid(path):
    for _ in range(3000):
        if os.path.exists(path) and open(path).read().strip():
            return int(open(path).read())
        time.sleep(0.01)
    raise AssertionError("no pid")

@task(executable=True, timeout=0.5)
def stuck(path):
    return ["sh", "-c", f"echo $$ > {{path}}; exec sleep 60"]

t0 = time.monotonic()
try:
    stuck({str(tmp_path / 'a')!r})
except distaff.TimeoutError:
    print("timed out after < 5 s:", time.monotonic() - t0 < 5)
pid = wait_pid({str(tmp_path / 'a')!r})
for _ in range(3000):    # the execution finishes at once; the kill follows on the event loop
    if not alive(pid):
        break
    time.sleep(0.01)
print("killed on timeout:", not alive(pid))

ex = stuck.options(timeout=None).submit({str(tmp_path / 'b')!r})
pid = wait_pid({str(tmp_path / 'b')!r})
ex.cancel()
for _ in range(3000):
    if not alive(pid):
        break
    time.sleep(0.01)
print("killed on cancel:", not alive(pid), ex.state)
""")
    assert "timed out after < 5 s: True" in out
    assert "killed on timeout: True" in out
    assert "killed on cancel: True cancelled" in out


@pytest.mark.skipif(not hasattr(__import__("os"), "pidfd_open"), reason="waits on a pidfd (Linux)")
def test_cancel_and_timeout_kill_the_processes_the_command_started(tmp_path):
    # `sh -c "sleep 60 & ...; wait"`: sleep is the shell's child. Killing the shell alone (before)
    # left it running, holding the pipes, and the cancelled body waited for it.
    out = program(GRANDCHILD + f"""
ex = spawner.submit({str(tmp_path / 'a')!r})
pid = read_pid({str(tmp_path / 'a')!r})
ex.cancel()
print("child killed on cancel:", gone(pid), ex.state)

ex = spawner.options(timeout=1).submit({str(tmp_path / 'b')!r})
pid = read_pid({str(tmp_path / 'b')!r})
print("child killed on timeout:", gone(pid), type(ex.exception(timeout=10)).__name__)

async def main():
    ex = spawner.submit({str(tmp_path / 'c')!r})
    pid = await asyncio.to_thread(read_pid, {str(tmp_path / 'c')!r})
    ex.cancel()
    print("child killed on cancel in asyncio.run:", await asyncio.to_thread(gone, pid), ex.state)

asyncio.run(main())
""")
    assert "child killed on cancel: True cancelled" in out
    assert "child killed on timeout: True TimeoutError" in out
    assert "child killed on cancel in asyncio.run: True cancelled" in out


@pytest.mark.skipif(not hasattr(__import__("os"), "pidfd_open"), reason="waits on a pidfd (Linux)")
def test_asyncio_run_ending_while_the_commands_pipes_connect_kills_its_whole_group(tmp_path):
    # CI, session 11 (1 run in ~6): asyncio.run() returned right after the command started, and a
    # process the command had started lived on. asyncio.run cancels every task of its loop; with
    # asyncio.create_subprocess_exec one of them was asyncio's own, still connecting the pipes, and
    # asyncio then killed the shell alone and waited for the pipes its child held. Here the pipes
    # connect slowly (a wrapper around the loop's connect_read_pipe), which makes that window
    # certain: the run must still end at once and the whole group be killed.
    out = program(GRANDCHILD + f"""
import asyncio.base_events as base_events

_connect = base_events.BaseEventLoop.connect_read_pipe

async def slow_connect(self, *args, **kwargs):
    await asyncio.sleep(0.3)
    return await _connect(self, *args, **kwargs)

base_events.BaseEventLoop.connect_read_pipe = slow_connect

box = {{}}

async def main():
    box["ex"] = spawner.submit({str(tmp_path / 'a')!r})
    box["pid"] = await asyncio.to_thread(read_pid, {str(tmp_path / 'a')!r})
    box["t0"] = time.monotonic()

asyncio.run(main())
print("run ended at once:", time.monotonic() - box["t0"] < 5)
print("child killed:", gone(box["pid"]), box["ex"].state)
""", timeout=40)
    assert "run ended at once: True" in out
    assert "child killed: True cancelled" in out


def test_a_running_command_holds_no_worker_thread():
    # Concurrency shown by the commands' own clocks, not by wall-clock thresholds: the four
    # commands' [start, end] intervals overlap, and a task body runs while none has ended.
    out = program("""
eng = distaff.Engine(workers=1, max_workers=1)

@eng.task(executable=True)
def nap():
    return ["sh", "-c", "date +%s.%N; sleep 1; date +%s.%N"]

@eng.task()
def quick(x):
    return x + 1

naps = [nap.submit() for _ in range(4)]
r = quick.submit(1).result(timeout=30)
print("a sync task runs meanwhile:", r == 2, not any(e.done() for e in naps))
distaff.wait(naps, timeout=60)
spans = [tuple(map(float, e.result().split())) for e in naps]
print("the 4 commands overlapped:", max(s for s, _ in spans) < min(e for _, e in spans), [e.state for e in naps])
eng.shutdown()
""")
    assert "a sync task runs meanwhile: True True" in out
    assert "the 4 commands overlapped: True ['succeeded', 'succeeded', 'succeeded', 'succeeded']" in out


def test_retries_rerun_the_command(tmp_path):
    marker = tmp_path / "seen"
    out = program(f"""
@task(executable=True, retries=2)
def flaky():
    # fails the first time (creating the marker), succeeds the second
    return ["sh", "-c", "if [ -e {marker} ]; then echo ok; else touch {marker}; exit 1; fi"]

ex = flaky.submit()
print("result:", repr(ex.result()), ex.description["attempts"])
""")
    assert "result: 'ok\\n' 2" in out
