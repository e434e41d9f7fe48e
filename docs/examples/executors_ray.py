"""docs/executors.md: bodies as Ray tasks (a local Ray runtime with 2 CPUs)."""

import os

import distaff
from distaff.executors import Ray

if __name__ == "__main__":
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with distaff.Engine(executors={"ray": Ray(num_cpus=1)}) as eng:

        @eng.task(executor="ray")
        def leaf(i):
            return i + 1, os.getpid()

        @eng.workflow
        def fan(n):
            return [v for v, _ in distaff.gather(*[leaf.submit(i) for i in range(n)]).result()]

        print("ray results:", fan(5))
        try:
            eng.task(executor="ray")(lambda: [][0])()
        except IndexError as exc:
            print("IndexError from Ray keeps its type:", "raised on executor 'ray'" in exc.__notes__[-1])
    ray.shutdown()
