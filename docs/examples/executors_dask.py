"""docs/executors.md: bodies on a Dask cluster (here a LocalCluster of 2 worker processes)."""

import os

import distaff

if __name__ == "__main__":
    from distributed import Client, LocalCluster

    # Against a running cluster: client = Client("tcp://scheduler:8786")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as cluster, Client(cluster) as client:
        with distaff.Engine(executors={"dask": client}) as eng:

            @eng.task(executor="dask")
            def leaf(i):
                return i * i, os.getpid()

            @eng.task  # a local orchestration step: microseconds, no cluster round trip
            def combine(parts):
                return sum(v for v, _ in parts), {p for _, p in parts}

            @eng.workflow
            def dag(n):
                leaves = [leaf.submit(i) for i in range(n)]
                return combine(distaff.gather(*leaves).result())

            total, pids = dag(20)
            print(f"sum of 20 squares computed on Dask: {total}; worker processes used: {len(pids)}; "
                  f"this process among them: {os.getpid() in pids}")
            ex = leaf.submit(3)
            ex.result()
            print("description executor:", ex.description["executor"])
        # the engine is shut down; the client is the user's and still works
        print("client still running after the engine's shutdown:", client.submit(sum, [1, 2]).result() == 3)
