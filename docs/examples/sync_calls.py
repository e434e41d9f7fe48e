"""docs/internals/sync-calls.md, as a runnable file: where a synchronous call's body runs.

    python docs/examples/sync_calls.py
"""

import os
import signal
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import distaff


@distaff.task()
def where(x):
    return x, threading.current_thread().name, distaff.current_execution() is not None


@distaff.task()
def stuck(started):
    started.set()
    distaff.sleep(60)


seen = {}


@distaff.task()
def waits_on_a_child():
    started = threading.Event()
    child = stuck.submit(started)
    started.wait(30)
    seen["child"] = child
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()  # a Ctrl-C in 50 ms
    return child.result()


# On the main thread, f(x) runs the body right here, as the execution.
print("main thread:", where(1))
# From another thread, the body is handed to a worker.
out = []
t = threading.Thread(target=lambda: out.append(where(2)), name="my-thread")
t.start()
t.join()
print("another thread:", out[0][1] != "my-thread", out[0][2])

# Ctrl-C inside the body: KeyboardInterrupt reaches the caller, the execution's tree is cancelled.
try:
    waits_on_a_child()
except KeyboardInterrupt:
    print("Ctrl-C: KeyboardInterrupt; the child was cancelled:", seen["child"].cancelled())


# What a call costs, with 1 ms of idleness before each (the engine's workers park meanwhile).
def median_us(call, n=300):
    lat = []
    for i in range(n):
        time.sleep(0.001)
        t0 = time.perf_counter()
        call(i)
        lat.append(time.perf_counter() - t0)
    return statistics.median(lat) * 1e6


pool = ThreadPoolExecutor(1)
ident = distaff.task()(lambda i: i)
d = median_us(ident)
p = median_us(lambda i: pool.submit(int, i).result())
print(f"median: f(x) {d:.1f} us, ThreadPoolExecutor.submit().result() {p:.1f} us")
