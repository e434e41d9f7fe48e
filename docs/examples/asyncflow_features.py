"""docs/asyncflow.md, runnable: every AsyncFlow feature distaff.asyncflow supports, one section each.

    python docs/examples/asyncflow_features.py
"""

import asyncio
import multiprocessing
import os
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

from distaff.asyncflow import (
    InputFile,
    LocalExecutionBackend,
    NoopExecutionBackend,
    OutputFile,
    WorkflowEngine,
)
from distaff.asyncflow.errors import DependencyFailureError


async def tasks_and_dependencies():
    flow = await WorkflowEngine.create(backend=await LocalExecutionBackend(ThreadPoolExecutor()))
    go = threading.Event()

    @flow.function_task
    async def load(n):
        return list(range(n))

    @flow.function_task
    async def factor():
        go.wait(30)                                # (runs in the pool) held until `go` is set
        return 10

    @flow.function_task
    async def total(values, *, scale):
        return sum(values) * scale

    fut = total(load(4), scale=factor())           # futures as arguments: dependencies, values in
    print("a call returns an asyncio.Future:", isinstance(fut, asyncio.Future), fut.state)  # factor is held
    go.set()
    print("total:", await fut, fut.state)          # sum([0, 1, 2, 3]) * 10
    await flow.shutdown()


async def failures_and_cancellation():
    flow = await WorkflowEngine.create()

    @flow.function_task
    async def fetch():
        raise ConnectionError("upstream down")

    @flow.function_task
    async def parse(raw):
        return raw.upper()

    @flow.function_task
    async def slow():
        await asyncio.sleep(30)

    parsed = parse(fetch())
    try:
        await parsed
    except DependencyFailureError as e:
        print("dependency failure:", e.failed_dependencies, repr(e.root_cause), e.__cause__ is e.root_cause)

    s = slow()
    dependent = parse(s)
    s.cancel()                                     # works before and while the body runs
    try:
        await dependent
    except asyncio.CancelledError:
        print("a cancelled dependency cancels the dependent:", s.state, dependent.state)
    await flow.shutdown()


async def executable_and_prompt_tasks():
    flow = await WorkflowEngine.create()

    @flow.executable_task
    async def count_words(path):
        return f"wc -w {path}"                      # split shell-style, run by /bin/sh

    @flow.executable_task
    async def broken():
        return "ls /no/such/dir"

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("one two three\n")
    try:
        print("wc:", (await count_words(f.name)).split()[0])
        try:
            await broken()
        except RuntimeError as e:
            print("non-zero exit fails with stderr:", "No such file or directory" in str(e))
    finally:
        os.unlink(f.name)

    @flow.prompt_task
    async def ask(topic):
        return f"Summarize {topic}"

    try:
        await ask("fibers")
    except NotImplementedError:
        print("prompt_task on LocalExecutionBackend: NotImplementedError, as in AsyncFlow 0.5")
    await flow.shutdown()


async def blocks():
    flow = await WorkflowEngine.create()

    @flow.function_task
    async def step(x):
        return x + 1

    @flow.block
    async def pair(x):                              # runs on this loop; composes tasks
        return await step(await step(x))

    @flow.block
    async def pipeline(x):                          # blocks nest
        a, b = await asyncio.gather(pair(x), pair(x * 10))
        return a + b

    print("block result:", await pipeline(1))

    @flow.function_task
    async def forever():
        await asyncio.sleep(3600)

    @flow.block
    async def stuck():
        return await asyncio.gather(forever(), forever())

    blk = stuck()

    def members():
        return [c["future"] for c in flow.components.values() if c["description"]["workflow_id"] == blk.block["uid"]]

    while len(members()) < 2:                       # until the block's body has called both
        await asyncio.sleep(0.01)
    blk.cancel()                                    # cancels the body and every unfinished member
    await asyncio.gather(*members(), return_exceptions=True)
    print("cancelled block:", blk.state, "members:", [m.state for m in members()])
    await flow.shutdown()


async def scopes_and_descriptions():
    flow = await WorkflowEngine.create()

    @flow.function_task
    async def train(epochs, task_description={"gpus": 1}):
        return epochs

    async with flow.workflow_scope("experiment-42") as wid:
        a = train(3, task_description={"gpus": 4})
        b = train(5, workflow_id="run-007")         # call-time id wins, and is stripped
    await asyncio.gather(a, b)
    da = flow.components[a.task["uid"]]["description"]
    print("scope:", wid, "|", da["workflow_id"], b.task["workflow_id"], "| description:", da["task_backend_specific_kwargs"])
    await flow.shutdown()


async def backends():
    threads = await LocalExecutionBackend(ThreadPoolExecutor(), name="threads")
    spawn = multiprocessing.get_context("spawn")  # not fork: this process runs threads
    procs = await LocalExecutionBackend(ProcessPoolExecutor(2, mp_context=spawn), name="procs")
    flow = await WorkflowEngine.create(backend=[threads, procs])   # the first is the default

    @flow.function_task
    async def here():
        return os.getpid()

    @flow.function_task(backend="procs")
    async def elsewhere():
        return os.getpid()

    print("routing: default in this process:", await here() == os.getpid(),
          "| backend='procs' in another:", await elsewhere() != os.getpid())
    await flow.shutdown()

    dry = await WorkflowEngine.create(dry_run=True)                 # NoopExecutionBackend
    ran = []

    @dry.function_task
    async def expensive():
        ran.append(1)

    print("dry run:", await expensive(), "| body ran:", bool(ran), isinstance(dry.backend, NoopExecutionBackend))
    await dry.shutdown()


async def files():
    flow = await WorkflowEngine.create()

    @flow.function_task
    async def convert(src, dst):
        return f"{src.filename} -> {dst.filename}"

    fut = convert(InputFile(__file__), OutputFile("out/converted.txt"))
    print("files:", await fut, fut.task["metadata"]["input_files"], fut.task["metadata"]["output_files"])
    await flow.shutdown()


async def main():
    t0 = time.perf_counter()
    for section in (tasks_and_dependencies, failures_and_cancellation, executable_and_prompt_tasks, blocks,
                    scopes_and_descriptions, backends, files):
        await section()
    print(f"all sections in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
