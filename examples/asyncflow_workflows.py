"""AsyncFlow's five-workflow example (seed 001), ported to distaff.

Each workflow is ``t3 = task3(task1(), task2()); await t3``: calling a task inside a running event
loop returns its Execution at once, Executions passed as arguments are dependencies, and
``resolve=True`` hands task3 the two results. Run five such workflows one after the other, then
all five under ``asyncio.gather``: the concurrent total is close to the longest single workflow.

    python examples/asyncflow_workflows.py
"""

import asyncio
import time

import distaff
from distaff import task

IO = 0.1  # each task stands for an I/O call of this many seconds


@task()
async def task1(*args):
    await asyncio.sleep(IO)
    return time.time()


@task()
async def task2(*args):
    await asyncio.sleep(IO)
    return time.time()


@task(resolve=True)  # waits for its Execution arguments and receives their values
async def task3(*args):
    await asyncio.sleep(IO)
    return time.time()


async def run_wf(wf_id: int) -> None:
    print(f"Starting workflow {wf_id} at {time.time():.4f}")
    t3 = task3(task1(), task2())  # three Executions, submitted at once; nothing blocks here
    await t3  # only this workflow waits; the loop keeps running the others
    print(f"Workflow {wf_id} completed at {time.time():.4f}")


async def main() -> None:
    start = time.perf_counter()
    for i in range(5):
        await run_wf(i)
    sequential = time.perf_counter() - start
    print(f"\nTotal time running sequentially is: {sequential:.3f} s\n")

    start = time.perf_counter()
    await asyncio.gather(*[run_wf(i) for i in range(5)])
    concurrent = time.perf_counter() - start
    print(f"\nTotal time running asynchronously is: {concurrent:.3f} s")
    print(f"speed-up: {sequential / concurrent:.1f}x (one workflow is two steps of {IO} s)")


if __name__ == "__main__":
    asyncio.run(main())
    distaff.shutdown()
