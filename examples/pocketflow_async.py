"""PocketFlow's async recipe flow (seed 003), ported to distaff.

A node's prep -> exec -> post steps are tasks: the async node's steps are ``async def`` tasks that
run on the caller's event loop, the plain node's steps are sync tasks (fibers). The flow itself is
an async ``@workflow`` that follows the action each node's ``post`` returns. While the recipe fetch
waits, the loop stays free: a heartbeat coroutine keeps ticking next to the flow.

    python examples/pocketflow_async.py
"""

import asyncio

import distaff
from distaff import task, workflow

DELAY = 0.3  # the simulated network call (PocketFlow's example uses 2 s)


async def fetch_recipes_from_internet(ingredient):
    print(f"Fetching recipes for '{ingredient}'... (simulating {DELAY} sec delay)")
    await asyncio.sleep(DELAY)  # pauses this task, not the program
    print(f"Recipes for '{ingredient}' fetched!")
    return ["Pizza", "Pasta", "Salad"]


class FetchRecipes:
    """An async node: every step is an async def task."""

    successors = {"suggest": "SuggestRecipe"}

    @task()
    async def prep(self, shared):
        return shared.get("user_ingredient", "chicken")

    @task(resolve=True)  # receives prep's value, not its Execution
    async def exec(self, ingredient):
        return await fetch_recipes_from_internet(ingredient)

    @task()
    async def post(self, shared, prep_res, exec_res):
        # Executions reach an async body as Executions: await them for their values.
        shared["recipes"] = await exec_res
        shared["ingredient"] = await prep_res
        print(f"Stored recipes for {shared['ingredient']}.")
        return "suggest"


class SuggestRecipe:
    """A plain node: sync steps, run as fibers, mixed freely with the async node."""

    successors = {}

    @task()
    def prep(self, shared):
        return shared["recipes"]

    @task(resolve=True)
    def exec(self, recipes):
        return recipes[0]

    @task(resolve=True)
    def post(self, shared, prep_res, suggestion):
        print(f"Suggestion: {suggestion}")
        return "done"


NODES = {"FetchRecipes": FetchRecipes, "SuggestRecipe": SuggestRecipe}


async def run_node(node, shared):
    """prep -> exec -> post. Inside a running loop each call returns its Execution at once."""
    p = node.prep(shared)
    e = node.exec(p)  # an Execution as an argument: a dependency
    return await node.post(shared, p, e)


@workflow()
async def recipe_flow(shared, start="FetchRecipes"):
    node, action = NODES[start](), None
    while node is not None:
        action = await run_node(node, shared)
        name = node.successors.get(action)
        node = NODES[name]() if name else None
    return action


async def heartbeat(stop: asyncio.Event) -> int:
    ticks = 0
    while not stop.is_set():
        ticks += 1
        await asyncio.sleep(DELAY / 10)
    return ticks


async def run_async_demo():
    shared = {"user_ingredient": "chicken"}
    print("Starting async recipe flow...")
    stop = asyncio.Event()
    beats = asyncio.ensure_future(heartbeat(stop))
    flow = recipe_flow(shared)  # an Execution: the workflow runs on this loop
    action = await flow
    stop.set()
    print(f"\nAsync recipe flow finished with action {action!r} (workflow {flow.workflow_id}).")
    print(f"shared store: {shared}")
    print(f"the loop stayed responsive: {await beats} heartbeats during the flow")


if __name__ == "__main__":
    asyncio.run(run_async_demo())
    distaff.shutdown()
