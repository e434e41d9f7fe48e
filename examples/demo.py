"""distaff demo: the seed's order workflow, then parallel vs sequential timing.

Run with `make demo` (installs everything on a fresh machine) or `python examples/demo.py`.
"""

import time

import distaff
from distaff import task, workflow


@task()
def load_user(user_id):
    distaff.sleep(0.2)  # stands for an API call; suspends only this fiber
    return {"id": user_id, "name": f"user-{user_id}"}


@task()
def load_product(product_id):
    distaff.sleep(0.2)
    return {"id": product_id, "price": 9.5}


@task(wait=True)  # starts only once both Execution arguments are done
def create_order(user, product):
    return {"user": user.result()["name"], "product": product.result()["id"], "total": product.result()["price"]}


@workflow()
def process_order(user_id, product_id):
    user = load_user.submit(user_id)  # both loads run in parallel
    product = load_product.submit(product_id)
    return create_order.submit(user, product)  # returning an Execution: its result is ours


@workflow()
def process_order_sequentially(user_id, product_id):
    user = load_user(user_id)  # a synchronous call: submit + wait
    product = load_product(product_id)
    return {"user": user["name"], "product": product["id"], "total": product["price"]}


def main() -> None:
    t0 = time.perf_counter()
    order = process_order(1, 2)
    parallel = time.perf_counter() - t0

    t0 = time.perf_counter()
    process_order_sequentially(1, 2)
    sequential = time.perf_counter() - t0

    print("order:", order)
    print(f"parallel:   {parallel:.3f} s  (two 0.2 s loads submitted together)")
    print(f"sequential: {sequential:.3f} s  (the same loads called one after the other)")

    # Deep nesting that deadlocks a thread pool: every call waits synchronously on two children.
    @task()
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    t0 = time.perf_counter()
    value = fib(20)
    elapsed = time.perf_counter() - t0
    count = distaff.default_engine().stats()["submitted"]
    print(f"fib(20) = {value} as nested tasks in {elapsed:.3f} s")

    # What ran, as recorded by the engine.
    graph = distaff.default_engine().graph()
    print(f"engine recorded {len(graph['nodes'])} finished executions, {count} submitted")


if __name__ == "__main__":
    main()
