"""Fiber-aware locks, semaphores, events and concurrency limits (docs/sync.md)."""

import asyncio
import threading
import time

import distaff

engine = distaff.Engine(workers=1, max_workers=1)  # one worker: nothing may block its thread

# A Lock held across a suspension: with threading.Lock this would hang the worker.
lock = distaff.Lock()
log = []


@engine.task()
def update(i):
    with lock:
        log.append(f"in {i}")
        distaff.sleep(0.01)  # suspends this fiber; the others wait for the lock without blocking
        log.append(f"out {i}")
    return i


print("lock:", [e.result() for e in [update.submit(i) for i in range(3)]], log)

# One Semaphore shared by task bodies, a thread and asyncio code.
sem = distaff.Semaphore(2)
active, peak, mu = 0, 0, threading.Lock()


def call_api():
    global active, peak
    with sem:
        with mu:
            active += 1
            peak = max(peak, active)
        distaff.sleep(0.01)
        with mu:
            active -= 1


async def call_api_async():
    global active, peak
    async with sem:
        with mu:
            active += 1
            peak = max(peak, active)
        await asyncio.sleep(0.01)
        with mu:
            active -= 1


thread = threading.Thread(target=call_api)
thread.start()
bodies = [engine.task(call_api).submit() for _ in range(6)]


async def main():
    await asyncio.gather(*(call_api_async() for _ in range(4)))


asyncio.run(main())
thread.join()
distaff.wait(bodies)
print("semaphore: at most", peak, "at once")

# An Event: bodies wait (fibers only), a thread sets it.
ready = distaff.Event()
waiters = [engine.task(lambda: ready.wait(10)).submit() for _ in range(3)]
threading.Timer(0.01, ready.set).start()
print("event:", [w.result() for w in waiters])


# concurrency=: at most 2 calls run at once; the other 98 wait without a fiber or a stack.
@engine.task(concurrency=2)
def fetch(i):
    distaff.sleep(0.005)
    return i


t0 = time.perf_counter()
calls = [fetch.submit(i) for i in range(100)]
print("queued without fibers:", engine.stats()["fibers"] <= 2)
print("concurrency=2:", sum(c.result() for c in calls), f"in {time.perf_counter() - t0:.2f} s (50 rounds of 5 ms)")
engine.shutdown()
