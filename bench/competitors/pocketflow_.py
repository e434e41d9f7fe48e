"""PocketFlow (the 100-line graph runner of seed 003), where its shapes map:

- W2 chain: a Flow of n Nodes linked ``a >> b >> ...``, each adding one to shared state;
- W3 fan-out/fan-in: an AsyncParallelBatchNode (prep = the n items, exec_async per item, run
  with asyncio.gather; post sums) inside an AsyncFlow;
- W5 sleepers: the same batch node awaiting asyncio.sleep(0.05) per item;
- W7b: five AsyncFlows under asyncio.gather, each an AsyncParallelBatchNode running task1 and
  task2 followed by a node running task3 on their results.

PocketFlow has no submit/handle API (work is nodes in a static graph), so W1, W4, W6, W7a do
not map.
"""
from __future__ import annotations

import asyncio
import time
from importlib.metadata import version as _dist_version

import pocketflow  # ImportError -> not installed
from pocketflow import AsyncFlow, AsyncNode, AsyncParallelBatchNode, Flow, Node

from common import Measurement, expect, perf
from competitors import Base

_NO_HANDLES = "no submit/handle API: work is nodes in a static graph run by a Flow"
NOT_EXPRESSIBLE = {
    "W1": _NO_HANDLES,
    "W4": "flows are static graphs: a node cannot start child nodes and wait on them",
    "W5b": "time.sleep in an async node blocks the loop: the batch runs one item after another",
    "W6-10k": _NO_HANDLES,
    "W6-100k": _NO_HANDLES,
    "W7a": _NO_HANDLES + " (nothing to await but whole flows)",
}


def version() -> str:
    return _dist_version("pocketflow")


class AddOne(Node):
    def prep(self, shared):
        return shared["v"]

    def exec(self, v):
        return v + 1

    def post(self, shared, prep_res, exec_res):
        shared["v"] = exec_res


class Fan(AsyncParallelBatchNode):
    async def prep_async(self, shared):
        return range(shared["n"])

    async def exec_async(self, i):
        return i

    async def post_async(self, shared, prep_res, exec_res):
        shared["sum"] = sum(exec_res)


class Sleepers(AsyncParallelBatchNode):
    async def prep_async(self, shared):
        return [0.05] * shared["n"]

    async def exec_async(self, s):
        await asyncio.sleep(s)
        return 1

    async def post_async(self, shared, prep_res, exec_res):
        shared["done"] = sum(exec_res)


class Task12(AsyncParallelBatchNode):
    async def prep_async(self, shared):
        return ["task1", "task2"]

    async def exec_async(self, name):
        return time.time()

    async def post_async(self, shared, prep_res, exec_res):
        shared["t12"] = exec_res


class Task3(AsyncNode):
    async def prep_async(self, shared):
        return shared["t12"]

    async def exec_async(self, args):
        return time.time()

    async def post_async(self, shared, prep_res, exec_res):
        shared["t3"] = exec_res


class Impl(Base):
    def setup(self, workload: str) -> None:
        self.loop = asyncio.new_event_loop()

    def teardown(self) -> None:
        self.loop.close()

    def w2(self, n: int) -> float:
        t0 = perf()
        nodes = [AddOne() for _ in range(n)]
        for a, b in zip(nodes, nodes[1:]):
            a >> b
        shared = {"v": 0}
        Flow(start=nodes[0]).run(shared)
        dt = perf() - t0
        expect(shared["v"] == n, f"chain {shared['v']}")
        return dt

    def w3(self, n: int) -> float:
        async def main():
            t0 = perf()
            shared = {"n": n}
            await AsyncFlow(start=Fan()).run_async(shared)
            dt = perf() - t0
            expect(shared["sum"] == n * (n - 1) // 2, "sum")
            return dt
        return self.loop.run_until_complete(main())

    def w5(self, n: int) -> Measurement:
        async def main():
            t0 = perf()
            shared = {"n": n}
            await AsyncFlow(start=Sleepers()).run_async(shared)
            dt = perf() - t0
            expect(shared["done"] == n, "sleepers")
            return dt
        dt = self.loop.run_until_complete(main())
        return Measurement(dt, concurrency=n * 0.05 / dt)

    def w7b(self, n: int) -> float:
        async def run_wf(i):
            a = Task12()
            a >> Task3()
            shared = {}
            await AsyncFlow(start=a).run_async(shared)
            return shared["t3"]

        async def main():
            t0 = perf()
            res = await asyncio.gather(*[run_wf(i) for i in range(n)])
            dt = perf() - t0
            expect(len(res) == n and all(isinstance(r, float) for r in res), "results")
            return dt
        return self.loop.run_until_complete(main())
