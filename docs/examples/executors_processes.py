"""docs/executors.md: CPU-bound bodies in distaff's process pool (executor="processes")."""

import os
import time

import distaff


def busy(iters):
    """Pure Python: holds the GIL the whole time (about 50 ms for the 1_500_000 used below)."""
    x = 0
    for i in range(iters):
        x += i
    return os.getpid()


if __name__ == "__main__":
    with distaff.Engine(processes=2) as eng:  # the pool starts on first use, stops with the engine
        heavy = eng.task(executor="processes")(busy)
        local = eng.task(busy)

        @eng.workflow
        def fan_out(task, n):
            return distaff.gather(*[task.submit(1_500_000) for _ in range(n)]).result()

        heavy(1)  # start the workers
        t0 = time.perf_counter()
        pids = fan_out(heavy, 16)
        t_proc = time.perf_counter() - t0
        t0 = time.perf_counter()
        fan_out(local, 16)
        t_local = time.perf_counter() - t0
        print(f"16 CPU-bound bodies: in-process {t_local:.2f} s, processes {t_proc:.2f} s, "
              f"ran in {len(set(pids))} worker processes, none of them this one: {os.getpid() not in pids}")

        # Execution arguments travel as values; results come back by value.
        square = eng.task(executor="processes")(lambda x: x * x)
        total = eng.task(executor="processes")(lambda xs: sum(xs))
        print("sum of squares:", total([square.submit(i) for i in range(5)]))

        # Exceptions keep their type and message, with the remote traceback as a note.
        @eng.task(executor="processes")
        def parse(text):
            return int(text)

        try:
            parse("forty-two")
        except ValueError as exc:
            print("ValueError:", exc, "| note:", exc.__notes__[0].splitlines()[0].split(" (")[0])

        # A dying worker fails only its execution; the pool replaces it.
        @eng.task(executor="processes")
        def crash():
            os._exit(1)

        print("worker died:", type(crash.submit().exception()).__name__)
        ex = heavy.options(timeout=0.2).submit(10**12)  # a runaway body: its worker is terminated
        print("timed out:", type(ex.exception()).__name__, "| next call works:", heavy(1) > 0)
        print("description:", {k: ex.description[k] for k in ("executor", "state")})
