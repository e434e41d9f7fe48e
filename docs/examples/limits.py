"""docs/limits.md, as a runnable file: where fibers stop helping, measured.

    python docs/examples/limits.py
"""

import contextvars
import sys
import threading
import time

import distaff


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def five(t):
    return lambda: [e.result() for e in [t.submit() for _ in range(5)]]


# -- blocking calls hold the worker; distaff.sleep suspends only the fiber -------------------------
for max_workers in (1, None):  # growth off, then the default (elastic, up to 32 threads)
    with distaff.Engine(workers=1, max_workers=max_workers) as engine:

        @engine.task
        def blocking():
            time.sleep(0.1)  # holds the worker's OS thread: nothing else runs on it meanwhile

        took = timed(five(blocking))
        threads = engine.stats()["threads"]
        print(f"5 x time.sleep(0.1), max_workers={engine.max_workers}: {took:.2f} s on {threads} thread(s)")

# max_workers=1: what follows is about one worker thread.
with distaff.Engine(workers=1, max_workers=1) as engine:

    @engine.task
    def cooperative():
        distaff.sleep(0.1)  # suspends this fiber; the worker runs the others

    print(f"5 x distaff.sleep(0.1) on 1 worker: {timed(five(cooperative)):.2f} s (together)")

    # -- identity: the thread is the worker's, thread-locals and contextvars are the fiber's --------
    local = threading.local()
    var = contextvars.ContextVar("var")

    @engine.task
    def identity(i):
        local.value = i
        var.set(i)
        distaff.sleep(0.01)  # the other 19 run on this thread meanwhile
        return threading.get_ident(), local.value == i, var.get() == i

    seen = [e.result() for e in [identity.submit(i) for i in range(20)]]
    print("threading.get_ident() values seen by 20 tasks on 1 worker:", len({s[0] for s in seen}))
    print("threading.local and contextvars are per fiber:", all(s[1] for s in seen), all(s[2] for s in seen))

    # -- runaway recursion is a RecursionError, not a crash -----------------------------------------
    @engine.task
    def runaway():
        def down(n):
            return down(n + 1)

        return down(0)

    print("runaway recursion in a body:", type(runaway.submit().exception()).__name__)

    # -- cancelling a busy loop: put cleanup around the loop, not inside it --------------------------
    started, cleaned = threading.Event(), threading.Event()

    @engine.task
    def busy():
        started.set()
        try:
            n = 0
            while True:  # never waits: cancel() raises CancelledError at a bytecode boundary
                n += 1
        finally:
            cleaned.set()

    ex = busy.submit()
    started.wait(5)
    ex.cancel()
    print("finally around the loop ran on cancel:", cleaned.wait(5))


# -- the GIL: CPU-bound pure Python gains nothing from a second worker ------------------------------
def spin(n):
    s = 0
    for i in range(n):
        s += i * i
    return s


for workers in (1, 2):
    with distaff.Engine(workers=workers, max_workers=workers) as engine:
        engine.submit(spin, 1000).result()  # warm up
        took = timed(lambda: [e.result() for e in [engine.submit(spin, 200_000) for _ in range(8)]])
        print(f"8 CPU-bound bodies on {workers} worker(s): {took:.2f} s")

print(f"Python {sys.version_info.major}.{sys.version_info.minor}: see docs/limits.md for what these numbers mean")
