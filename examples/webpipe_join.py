"""WebPipe's ``@async`` + ``join`` (seed 004), ported to distaff.

A WebPipe step tagged ``@async(name)`` starts in the background; ``join: `a, b``` waits for the
named tasks and exposes their results by name. In distaff a step is a task, ``.submit()`` is
``@async``, and ``distaff.join(a=..., b=...)`` is ``join``: a dict keyed by name. A member whose
guard failed (WebPipe's ``@when``) is skipped and joins as ``None`` with ``missing=None``; a member
that fails makes the join raise ``JoinError`` naming it.

    python examples/webpipe_join.py
"""

import time

import distaff
from distaff import task, workflow

QUERY = 0.1  # every query takes ~100 ms, like the seed's GraphQL calls


@task()
def graphql(query):
    distaff.sleep(QUERY)  # stands for the network call; suspends only this fiber
    return {"query": query, "rows": len(query)}


@task()
def fetch(url):
    distaff.sleep(QUERY)
    if "unavailable" in url:
        raise ConnectionError(f"GET {url}: 503")
    return {"url": url, "status": 200}


class NotPremium(Exception):
    pass


@task()
def when_premium(user):
    if not user["premium"]:
        raise NotPremium(user["name"])  # the guard: dependents are skipped
    return user


@task(wait=True)  # starts only if the guard succeeded; skipped otherwise
def premium_data(guard):
    distaff.sleep(QUERY)
    return {"extras": ["reports", "exports"], "for": guard.result()["name"]}


@workflow()
def sequential():
    # |> graphql: users |> graphql: stats |> graphql: posts   (one after the other)
    return {
        "users": graphql("{ users }"),
        "stats": graphql("{ stats }"),
        "posts": graphql("{ posts }"),
    }


@workflow()
def parallel():
    # |> graphql: users @async(users) ... |> join: `users, stats, posts`
    users = graphql.submit("{ users }")
    stats = graphql.submit("{ stats }")
    posts = graphql.submit("{ posts }")
    return distaff.join(users=users, stats=stats, posts=posts).result()


@workflow()
def conditional(user):
    basic = graphql.submit("{ basicData }")  # @async(basic)
    premium = premium_data.submit(when_premium.submit(user))  # @async(premium) @when(is_premium)
    joined = distaff.join(basic=basic, premium=premium, missing=None).result()
    return {"basic": joined["basic"]["rows"], "premium": joined["premium"]}


@workflow()
def with_errors():
    api1 = fetch.submit("https://api.example.com/unavailable")  # @async(api1)
    api2 = graphql.submit("{ data }")  # @async(api2)
    try:
        data = distaff.join(api1=api1, api2=api2).result()
        return 200, data
    except distaff.JoinError as e:  # |> result networkError(502)
        return 502, {"error": "External service unavailable", "member": e.member, "cause": repr(e.__cause__)}


def timed(label, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    print(f"{label:<11} {time.perf_counter() - start:.3f} s  {sorted(out) if isinstance(out, dict) else out}")
    return out


if __name__ == "__main__":
    seq = timed("sequential:", sequential)
    par = timed("parallel:", parallel)
    assert seq == par
    ms = QUERY * 1000
    print(f"(three {ms:.0f} ms queries: ~{3 * ms:.0f} ms in sequence, ~{ms:.0f} ms joined)")
    print("premium user:", conditional({"name": "ada", "premium": True}))
    print("basic user:  ", conditional({"name": "bob", "premium": False}))
    print("with errors: ", with_errors())
    distaff.shutdown()
