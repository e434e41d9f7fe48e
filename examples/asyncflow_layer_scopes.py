"""AsyncFlow's workflow tagging on distaff: the same API, imported from ``distaff.asyncflow``.

The five workflows run on a ``LocalExecutionBackend``; then ``workflow_scope()`` tags every task
registered inside it, a call-time ``workflow_id=`` tags one task (and beats the scope; the body
never sees the keyword), and a second engine in the process has scopes of its own. The ids are read
back from ``flow.components[uid]["description"]["workflow_id"]``.

    python examples/asyncflow_layer_scopes.py
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from distaff.asyncflow import LocalExecutionBackend, WorkflowEngine


async def main():
    backend = await LocalExecutionBackend(ThreadPoolExecutor())
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
        await t3
        print(f"Workflow {wf_id} completed at {time.time()}")

    start_time = time.time()
    await asyncio.gather(*[run_wf(i) for i in range(5)])
    print(f"\nTotal time running asynchronously is: {time.time() - start_time}\n")

    @flow.function_task
    async def preprocess():
        return [3, 1, 2]

    @flow.function_task
    async def train(data):
        return sorted(data)

    @flow.function_task
    async def my_task(*args, **kwargs):
        return kwargs  # shows that workflow_id= never reaches the body

    def wid_of(fut):
        return flow.components[fut.task["uid"]]["description"]["workflow_id"]

    # workflow_scope(): every task registered inside carries the id.
    async with flow.workflow_scope("experiment-42") as wid:
        t1 = preprocess()
        t2 = train(t1)
        print("trained:", await t2)
    print(f"scope {wid}: preprocess -> {wid_of(t1)}, train -> {wid_of(t2)}")

    # No id given: a generated one.
    async with flow.workflow_scope() as wid:
        t = my_task()
        await t
    print(f"generated id {wid} (starts with 'wf-': {wid.startswith('wf-')}), task -> {wid_of(t)}")

    # workflow_id= at call time tags only that task, wins over the scope and is stripped.
    async with flow.workflow_scope("experiment-43"):
        tagged = my_task(workflow_id="run-007")
        untagged = my_task()
        print("body kwargs:", await tagged)
    print(f"call-time id: {wid_of(tagged)}; its neighbour in the scope: {wid_of(untagged)}")

    # Scopes are per engine: another engine's tasks do not see this one's scope.
    other = await WorkflowEngine.create(backend=await LocalExecutionBackend(ThreadPoolExecutor(), name="other"))

    @other.function_task
    async def elsewhere():
        return "ran"

    async with flow.workflow_scope("experiment-44"):
        e = elsewhere()
        await e
    print(f"another engine's task inside experiment-44 -> {other.components[e.task['uid']]['description']['workflow_id']}")

    await other.shutdown()
    await flow.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
