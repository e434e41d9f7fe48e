"""AsyncFlow's workflow tagging (seed 002), ported to distaff.

``workflow_scope()`` tags every execution submitted inside the block, and everything those submit;
``workflow_id=`` at call time tags one execution and wins over the scope; scopes are per engine.

    python examples/asyncflow_scopes.py
"""

import asyncio

import distaff
from distaff import task


@task()
async def preprocess():
    await asyncio.sleep(0.01)
    return [3, 1, 2]


@task(resolve=True)
async def train(data):
    await asyncio.sleep(0.01)
    return {"model": sorted(data)}


@task()
def my_task():
    # A sync body runs in a fiber: current_execution() is the running execution.
    return distaff.current_execution().workflow_id


def show(label: str, ex: distaff.Execution) -> None:
    print(f"{label:<28} {ex.name:<12} workflow_id={ex.description['workflow_id']}")


async def main() -> None:
    # workflow_scope(): tag all tasks in a block of code.
    async with distaff.workflow_scope("experiment-42") as wid:
        t1 = preprocess()
        t2 = train(t1)
        await t2
        show("inside experiment-42:", t1)
        show("inside experiment-42:", t2)

    # No id given: a short generated one.
    async with distaff.workflow_scope() as wid:
        print("generated id:", wid)
        show("inside the generated scope:", my_task())

    # workflow_id= at call time: tags only that call, even inside a scope.
    async with distaff.workflow_scope("experiment-43"):
        tagged = my_task(workflow_id="run-007")
        print("call-time id wins over the scope:", await tagged)

    # Scopes are per engine: another engine in this process never sees this one's scope.
    other = distaff.Engine()

    @other.task()
    def elsewhere():
        return distaff.current_execution().workflow_id

    async with distaff.workflow_scope("experiment-44"):
        print("another engine's task inside experiment-44:", await elsewhere())
    other.shutdown()

    # Every live execution of a workflow, by id.
    held = [my_task.submit(workflow_id="run-008") for _ in range(3)]
    await distaff.wait(held)
    listed = distaff.default_engine().executions(workflow_id="run-008")
    print(f"executions(workflow_id='run-008'): {len(listed)} executions")


if __name__ == "__main__":
    asyncio.run(main())
    distaff.shutdown()
