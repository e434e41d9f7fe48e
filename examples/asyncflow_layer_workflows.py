"""An AsyncFlow program (the five concurrent workflows of AsyncFlow's async-workflows page) on
distaff: the code is AsyncFlow's API; only the import names ``distaff.asyncflow`` instead of
``radical.asyncflow``.

Each workflow is ``task3(task1(), task2())``: the two futures passed to task3 are its
dependencies, so task3 starts once both are done and receives their values. All five workflows run
concurrently under ``asyncio.gather``.

    python examples/asyncflow_layer_workflows.py
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from distaff.asyncflow import ConcurrentExecutionBackend, WorkflowEngine


async def main():
    backend = await ConcurrentExecutionBackend(ThreadPoolExecutor())
    flow = await WorkflowEngine.create(backend=backend)

    @flow.function_task
    async def task1(*args):
        return time.time()

    @flow.function_task
    async def task2(*args):
        return time.time()

    @flow.function_task
    async def task3(*args):
        return time.time()

    async def run_wf(wf_id):
        print(f"Starting workflow {wf_id} at {time.time()}")
        t3 = task3(task1(), task2())
        await t3  # this workflow waits here; the other four keep going
        print(f"Workflow {wf_id} completed at {time.time()}")

    start_time = time.time()
    await asyncio.gather(*[run_wf(i) for i in range(5)])
    end_time = time.time()

    print(f"\nTotal time running asynchronously is: {end_time - start_time}")

    await flow.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
