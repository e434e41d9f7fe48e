"""A synchronous call's caller yields its CPU for a short window before it parks
(docs/internals/sync-calls.md): the body runs at once on the worker, and the caller, still runnable,
finds the result without a wake-up. Each case runs in a fresh interpreter: the window and its
per-thread credit are read once per process."""

import json

from conftest import run_python

_COUNT_PARKS = """
import json, os, threading, distaff

def voluntary_switches():  # this thread's: each one is a time it blocked (parked, slept)
    with open(f"/proc/self/task/{threading.get_native_id()}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])

eng = distaff.Engine(workers=1)
double = eng.task()(lambda x: 2 * x)
for i in range(50):  # warm up: the worker's pools, the code paths
    assert double(i) == 2 * i
n = 400
before = voluntary_switches()
for i in range(n):
    assert double(i) == 2 * i
print(json.dumps({"n": n, "parks": voluntary_switches() - before}))
"""


def _parks(window_ns: int) -> dict:
    # A wide window (10 ms): under CI load the worker still gets its turn within it.
    r = run_python(_COUNT_PARKS, timeout=60, env={"DISTAFF_HANDOFF_SPIN_NS": str(window_ns)})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_synchronous_call_to_an_idle_engine_does_not_park_the_caller():
    out = _parks(10_000_000)
    assert out["parks"] < out["n"] // 4, out


def test_with_the_window_off_every_synchronous_call_parks_the_caller():
    # The same program with the spin off: the count above is the spin's doing, not the program's.
    # (Once per call, but for calls whose body finished before the caller got to its wait: under
    # load the caller can lose its CPU right after submitting.)
    out = _parks(0)
    assert out["parks"] >= out["n"] // 2, out


def test_a_caller_whose_bodies_outlast_the_window_stops_yielding_and_parks():
    # Long bodies: yielding through the whole window on every call would burn the caller's CPU.
    # After a couple of failed spins the thread parks at once (retrying every 64 waits).
    code = """
import json, time, distaff
eng = distaff.Engine(workers=1)
slow = eng.task()(lambda: time.sleep(0.03))
t0 = time.thread_time()
for _ in range(20):
    slow()
print(json.dumps({"cpu_s": time.thread_time() - t0}))
"""
    r = run_python(code, timeout=60, env={"DISTAFF_HANDOFF_SPIN_NS": "20000000"})  # 20 ms window
    assert r.returncode == 0, r.stderr
    cpu = json.loads(r.stdout.strip().splitlines()[-1])["cpu_s"]
    # Without the credit: 20 calls x 20 ms of yielding = ~0.4 s of CPU. With it: two or three spins.
    assert cpu < 0.15, cpu


def test_a_bad_window_setting_falls_back_to_the_default_and_calls_still_work():
    code = """
import distaff
eng = distaff.Engine(workers=1)
inc = eng.task()(lambda x: x + 1)
assert [inc(i) for i in range(100)] == list(range(1, 101))
print("ok")
"""
    for bad in ("-5", "abc", "1e9", ""):
        r = run_python(code, timeout=60, env={"DISTAFF_HANDOFF_SPIN_NS": bad})
        assert r.returncode == 0 and r.stdout.strip() == "ok", (bad, r.stderr)
