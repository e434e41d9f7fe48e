"""Wait-sets: wait, as_completed, gather, join.

The wait/as_completed semantics tests run twice: against distaff and against
``concurrent.futures`` as the reference, through a small adapter, so the behaviour provably matches.
Ordering is by gates (threading.Event), never by sleeping.
"""

import asyncio
import concurrent.futures as cf
import inspect
import subprocess
import threading

import pytest

import distaff

from conftest import collect, fiber_wait, run_python

# -- the adapter: one interface over distaff and concurrent.futures ---------------------------------


class _Impl:
    """Spawns futures that wait for a gate, then return a value or raise; and the module's API."""

    def __init__(self) -> None:
        self.gates: list[threading.Event] = []
        self.spawned: list = []

    def gate(self) -> threading.Event:
        g = threading.Event()
        self.gates.append(g)
        return g

    def release_all(self) -> None:
        for g in self.gates:
            g.set()


class DistaffImpl(_Impl):
    wait = staticmethod(distaff.wait)
    as_completed = staticmethod(distaff.as_completed)
    ALL_COMPLETED = distaff.ALL_COMPLETED
    FIRST_COMPLETED = distaff.FIRST_COMPLETED
    FIRST_EXCEPTION = distaff.FIRST_EXCEPTION

    def __init__(self, workers: int) -> None:
        super().__init__()
        self.engine = distaff.Engine(workers=workers)

        @self.engine.task()
        def body(gate, value, exc):
            if gate is not None:
                assert fiber_wait(gate)
            if exc is not None:
                raise exc
            return value

        @self.engine.task(wait=True)
        def gated_by(dep):
            return dep

        self._body = body
        self._gated_by = gated_by

    def spawn(self, value=None, *, gate=None, exc=None):
        ex = self._body.submit(gate, value, exc)
        self.spawned.append(ex)
        return ex

    def cancelled(self):
        # Not started (it waits for a gated dependency), so cancel() succeeds deterministically.
        ex = self._gated_by.submit(self.spawn(gate=self.gate()))
        assert ex.cancel() and ex.cancelled()
        return ex

    def close(self) -> None:
        self.release_all()
        for ex in self.spawned:
            if not ex.cancelled():
                ex.exception(timeout=30)  # observed: no "nobody retrieved its error" log
        assert self.engine.wait_idle(timeout=30)
        self.engine.shutdown()
        assert self.engine.stats()["live"] == 0


class FuturesImpl(_Impl):
    wait = staticmethod(cf.wait)
    as_completed = staticmethod(cf.as_completed)
    ALL_COMPLETED = cf.ALL_COMPLETED
    FIRST_COMPLETED = cf.FIRST_COMPLETED
    FIRST_EXCEPTION = cf.FIRST_EXCEPTION

    def __init__(self) -> None:
        super().__init__()
        self.pool = cf.ThreadPoolExecutor(max_workers=16)

    @staticmethod
    def _body(gate, value, exc):
        if gate is not None:
            assert gate.wait(30)
        if exc is not None:
            raise exc
        return value

    def spawn(self, value=None, *, gate=None, exc=None):
        return self.pool.submit(self._body, gate, value, exc)

    def cancelled(self):
        f = cf.Future()
        assert f.cancel()
        f.set_running_or_notify_cancel()  # what an executor does with a cancelled queued future
        return f

    def close(self) -> None:
        self.release_all()
        self.pool.shutdown(wait=True)


class StdlibOverDistaffImpl(DistaffImpl):
    """concurrent.futures.wait/as_completed given Executions (distaff/_cf_compat.py)."""

    wait = staticmethod(cf.wait)
    as_completed = staticmethod(cf.as_completed)
    ALL_COMPLETED = cf.ALL_COMPLETED
    FIRST_COMPLETED = cf.FIRST_COMPLETED
    FIRST_EXCEPTION = cf.FIRST_EXCEPTION


@pytest.fixture(params=["distaff-1w", "distaff-2w", "futures", "stdlib-over-distaff"])
def impl(request):
    if request.param == "futures":
        obj = FuturesImpl()
    elif request.param == "stdlib-over-distaff":
        obj = StdlibOverDistaffImpl(2)
    else:
        obj = DistaffImpl(int(request.param[-2]))
    try:
        yield obj
    finally:
        obj.close()


def still_blocked(target, *args, **kwargs):
    """Runs target in a thread; returns (thread, box). The caller checks it stays blocked."""
    box = {}

    def run():
        box["value"] = target(*args, **kwargs)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


# -- wait: semantics against the reference -----------------------------------------------------------


def test_wait_all_completed_includes_failures(impl):
    a = impl.spawn(1)
    b = impl.spawn(exc=ValueError("b"))
    g = impl.gate()
    c = impl.spawn(3, gate=g)
    a.add_done_callback(lambda _: g.set())  # c finishes after a; wait must still include it
    done, not_done = impl.wait([a, b, c])
    assert done == {a, b, c} and not_done == set()
    assert isinstance(b.exception(), ValueError)


def test_wait_result_is_a_named_pair(impl):
    a = impl.spawn(1)
    result = impl.wait([a])
    assert result.done == {a} and result.not_done == set()
    assert result == (result.done, result.not_done)


def test_wait_all_completed_blocks_until_the_last_member(impl):
    g = impl.gate()
    a, b = impl.spawn(1), impl.spawn(2, gate=g)
    t, box = still_blocked(impl.wait, [a, b])
    t.join(0.1)
    assert t.is_alive(), "ALL_COMPLETED returned before every member finished"
    g.set()
    t.join(30)
    assert box["value"] == ({a, b}, set())


def test_wait_first_completed_returns_the_finished_member(impl):
    g = impl.gate()
    a = impl.spawn(1, gate=g)
    b = impl.spawn(2)
    done, not_done = impl.wait([a, b], return_when=impl.FIRST_COMPLETED)
    assert done == {b} and not_done == {a}


def test_wait_first_completed_with_a_member_already_finished(impl):
    a = impl.spawn(1)
    impl.wait([a])
    g = impl.gate()
    b = impl.spawn(2, gate=g)
    done, not_done = impl.wait([b, a], return_when=impl.FIRST_COMPLETED)
    assert done == {a} and not_done == {b}


def test_wait_first_completed_counts_a_cancelled_member(impl):
    g = impl.gate()
    a = impl.spawn(1, gate=g)
    c = impl.cancelled()
    done, not_done = impl.wait([a, c], return_when=impl.FIRST_COMPLETED)
    assert done == {c} and not_done == {a}


def test_wait_first_exception_returns_at_the_failure(impl):
    g = impl.gate()
    a = impl.spawn(1, gate=g)
    b = impl.spawn(exc=KeyError("b"))
    done, not_done = impl.wait([a, b], return_when=impl.FIRST_EXCEPTION)
    assert done == {b} and not_done == {a}


def test_wait_first_exception_with_a_member_already_failed(impl):
    b = impl.spawn(exc=KeyError("b"))
    impl.wait([b])
    g = impl.gate()
    a = impl.spawn(1, gate=g)
    done, not_done = impl.wait([a, b], return_when=impl.FIRST_EXCEPTION)
    assert done == {b} and not_done == {a}


def test_wait_first_exception_ignores_successes(impl):
    g = impl.gate()
    a = impl.spawn(1, gate=g)
    b = impl.spawn(2)
    impl.wait([b])
    t, box = still_blocked(impl.wait, [a, b], return_when=impl.FIRST_EXCEPTION)
    t.join(0.1)
    assert t.is_alive(), "FIRST_EXCEPTION returned on a success"
    g.set()
    t.join(30)
    assert box["value"] == ({a, b}, set())


def test_wait_first_exception_does_not_count_a_cancelled_member(impl):
    g = impl.gate()
    a = impl.spawn(1, gate=g)
    c = impl.cancelled()
    t, box = still_blocked(impl.wait, [a, c], return_when=impl.FIRST_EXCEPTION)
    t.join(0.1)
    assert t.is_alive(), "FIRST_EXCEPTION returned on a cancellation"
    g.set()
    t.join(30)
    assert box["value"] == ({a, c}, set())


def test_wait_timeout_returns_the_split_without_raising(impl):
    g = impl.gate()
    a = impl.spawn(1, gate=g)
    b = impl.spawn(2)
    impl.wait([b])
    for return_when in (impl.ALL_COMPLETED, impl.FIRST_EXCEPTION):
        done, not_done = impl.wait([a, b], timeout=0.01, return_when=return_when)
        assert done == {b} and not_done == {a}
    done, not_done = impl.wait([a], timeout=0)
    assert done == set() and not_done == {a}
    assert not a.done()


def test_wait_on_nothing(impl):
    assert impl.wait([]) == (set(), set())
    assert impl.wait([], timeout=0, return_when=impl.FIRST_COMPLETED) == (set(), set())


def test_wait_all_completed_whatever_order_the_members_finish_in(impl):
    # distaff's ALL_COMPLETED parks on one unfinished member at a time, from the last (py_wait.cpp
    # wait_all): members that finish last-first, first-last or in the middle, and a timeout while
    # only the last one is done, give what concurrent.futures.wait gives.
    gates = [impl.gate() for _ in range(4)]
    members = [impl.spawn(i, gate=g) for i, g in enumerate(gates)]
    gates[3].set()  # the last member first
    assert members[3].result(timeout=30) == 3
    done, not_done = impl.wait(members, timeout=0.05)
    assert done == {members[3]} and not_done == set(members[:3])
    finisher = threading.Thread(target=lambda: [g.set() for g in (gates[1], gates[0], gates[2])])
    finisher.start()
    done, not_done = impl.wait(members, timeout=30)
    finisher.join()
    assert done == set(members) and not_done == set()
    assert [m.result() for m in members] == [0, 1, 2, 3]


def test_wait_counts_duplicates_once(impl):
    a = impl.spawn(1)
    done, not_done = impl.wait([a, a, a])
    assert done == {a} and not_done == set()


def test_wait_takes_an_iterable_not_a_single_future(impl):
    a = impl.spawn(1)
    with pytest.raises(TypeError):
        impl.wait(a)
    done, _ = impl.wait(x for x in [a])  # any iterable, generators included
    assert done == {a}


def test_wait_and_as_completed_name_the_first_member_that_is_not_an_execution(engine):
    # The members' type check runs in C (set of types) with the message of the per-member loop it
    # replaced: the first offender, wherever it is, duplicates and all.
    a = engine.task()(lambda: 1).submit()
    a.result()
    for members in ([a, 3], [3, a], [a, a, "x", 2.0], ["x"]):
        with pytest.raises(TypeError, match=r"wait\(\) takes Executions, got " + type([m for m in members if m is not a][0]).__name__):
            distaff.wait(members)
        with pytest.raises(TypeError, match=r"as_completed\(\) takes Executions, got "):
            distaff.as_completed(members)
    with pytest.raises(TypeError, match="unhashable"):
        distaff.wait([a, []])
    done, not_done = distaff.wait([a, a])
    assert done == {a} and not_done == set()


def test_wait_rejects_a_bad_return_when(impl):
    g = impl.gate()
    a = impl.spawn(1, gate=g)
    with pytest.raises(ValueError):
        impl.wait([a], return_when="WHENEVER")


# -- as_completed: semantics against the reference -----------------------------------------------------


def test_as_completed_yields_in_completion_order(impl):
    ga, gb, gc = impl.gate(), impl.gate(), impl.gate()
    a, b, c = impl.spawn("a", gate=ga), impl.spawn("b", gate=gb), impl.spawn("c", gate=gc)
    it = iter(impl.as_completed([a, b, c]))
    gc.set()
    assert next(it) is c
    ga.set()
    assert next(it) is a
    gb.set()
    assert next(it) is b
    with pytest.raises(StopIteration):
        next(it)


def test_as_completed_yields_finished_members_first(impl):
    g = impl.gate()
    a = impl.spawn("a", gate=g)
    b = impl.spawn("b")
    impl.wait([b])
    it = iter(impl.as_completed([a, b]))
    assert next(it) is b
    g.set()
    assert next(it) is a


def test_as_completed_yields_failures_and_cancellations_without_raising(impl):
    a = impl.spawn(exc=ValueError("a"))
    c = impl.cancelled()
    got = list(impl.as_completed([a, c]))
    assert set(got) == {a, c} and len(got) == 2
    assert isinstance(a.exception(), ValueError) and c.cancelled()


def test_as_completed_timeout_raises_after_the_finished_ones(impl):
    g = impl.gate()
    a = impl.spawn("a", gate=g)
    b = impl.spawn("b")
    impl.wait([b])
    it = iter(impl.as_completed([a, b], timeout=0.05))
    assert next(it) is b
    with pytest.raises(TimeoutError, match=r"1 \(of 2\)"):
        next(it)
    assert not a.done()
    assert issubclass(cf.TimeoutError, TimeoutError)  # one exception type for both


def test_as_completed_yields_duplicates_once(impl):
    a, b = impl.spawn(1), impl.spawn(2)
    got = list(impl.as_completed([a, b, a, b, a]))
    assert sorted(f.result() for f in got) == [1, 2]


def test_as_completed_of_nothing(impl):
    assert list(impl.as_completed([])) == []


def test_as_completed_returns_an_iterator(impl):
    a, b = impl.spawn(1), impl.spawn(2)
    it = impl.as_completed([a, b])
    first = next(it)  # no iter() needed, as with concurrent.futures
    assert iter(it) is it
    rest = list(it)  # a partly consumed iterator resumes where it stopped
    assert sorted(f.result() for f in [first, *rest]) == [1, 2]


# -- wait and as_completed: distaff only (fibers, asyncio, scale) -------------------------------------------



def test_wait_from_a_task_body_suspends_only_the_fiber(engine, new_gate):
    gate = new_gate()

    @engine.task()
    def blocked():
        fiber_wait(gate)
        return "blocked"

    @engine.task()
    def opener():
        gate.set()
        return "opener"

    @engine.task()
    def waiter():
        b = blocked.submit()
        done, not_done = distaff.wait([b], return_when=distaff.FIRST_COMPLETED, timeout=0)
        assert done == set() and not_done == {b}
        o = opener.submit()  # runs while this fiber waits, even on one worker
        done, not_done = distaff.wait([b, o])
        return sorted(e.result() for e in done), not_done

    assert waiter() == (["blocked", "opener"], set())


def test_as_completed_in_a_task_body(engine, new_gate):
    gates = [new_gate() for _ in range(3)]

    @engine.task()
    def member(i):
        fiber_wait(gates[i])
        return i

    @engine.task()
    def consumer():
        exs = [member.submit(i) for i in range(3)]
        order = []
        gates[2].set()
        for ex in distaff.as_completed(exs):
            order.append(ex.result())
            if len(order) == 1:
                gates[0].set()
            elif len(order) == 2:
                gates[1].set()
        return order

    assert consumer() == [2, 0, 1]


def test_waiting_on_itself_from_a_body_is_a_deadlock_error(engine):
    @engine.task()
    def selfish():
        with pytest.raises(distaff.DeadlockError):
            distaff.wait([distaff.current_execution()])
        return "ok"

    assert selfish() == "ok"


_WAITS_ON_A_HANDLE_OF_ITSELF = """
import asyncio, sys, distaff
engine = distaff.Engine()

@engine.task()
def sync_body(how):
    me = distaff.current_execution()
    other = engine.task()(lambda: 1).submit()
    handle = distaff.gather(other, me) if how == "gather" else distaff.join(me=me, o=other)
    try:
        handle.result()
    except distaff.DeadlockError as e:
        return "DeadlockError: " + str(e)
    return "no error"

@engine.task()
async def async_body(how):
    me = distaff.current_execution()
    handle = distaff.gather(me) if how == "gather" else distaff.join(me=me)
    try:
        await handle
    except distaff.DeadlockError as e:
        return "DeadlockError"
    return "no error"

@engine.task()
def waits_for(x):
    return distaff.gather(x).result()

@engine.task()
def indirect():
    # its child waits on a gather that holds this execution; this one then waits on the child
    child = waits_for.submit(distaff.current_execution())
    try:
        return child.result()
    except distaff.DeadlockError:
        return "DeadlockError"

for how in ("gather", "join"):
    print(how, "inline", sync_body(how), flush=True)  # the main thread's call runs it inline
    print(how, "fiber", sync_body.submit(how).result(timeout=10), flush=True)
    print(how, "async", async_body.submit(how).result(timeout=10), flush=True)
r = indirect.submit()
try:
    print("indirect", r.result(timeout=10))
except distaff.DeadlockError:
    print("indirect child: DeadlockError")
engine.shutdown()
"""


def test_a_body_waiting_on_a_gather_or_join_of_its_own_execution_gets_deadlock_error():
    # Was a hang: the handle's members were not in the wait graph the cycle check walks
    # (distaff.wait([me]) did raise). wait_sets.md: "A body that waits ... on its own execution,
    # or on one that waits for it, gets distaff.DeadlockError instead of hanging."
    r = run_python(_WAITS_ON_A_HANDLE_OF_ITSELF, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 7, r.stdout + r.stderr
    for how in ("gather", "join"):
        for where in ("inline", "fiber"):
            assert f"{how} {where} DeadlockError: " in r.stdout, r.stdout
        assert f"{how} async DeadlockError" in lines, r.stdout
    assert "waits on it" in r.stdout or "waits on itself" in r.stdout, r.stdout
    assert lines[-1] in ("indirect DeadlockError", "indirect child: DeadlockError"), r.stdout


_ASYNC_BODY_AWAITS_ITSELF = """
import asyncio, distaff
engine = distaff.Engine()

@engine.task()
async def body(how):
    me = distaff.current_execution()
    try:
        if how == "self":
            await me
        elif how == "wait":
            await distaff.wait([me])
        elif how == "wait-first-exception":
            await distaff.wait([me], return_when=distaff.FIRST_EXCEPTION)
        elif how == "wait-first-completed":
            await distaff.wait([me], return_when=distaff.FIRST_COMPLETED)
        elif how == "first-completed-of-two":  # the other one can end it: no cycle
            other = engine.task()(lambda: 1).submit()
            done, _ = await distaff.wait([me, other], return_when=distaff.FIRST_COMPLETED)
            return f"done {sorted(e.name for e in done)}"
        elif how == "as_completed":
            async for e in distaff.as_completed([me]):
                pass
    except distaff.DeadlockError as e:
        return "DeadlockError"
    return "no error"

@engine.task()
def sync_body(how):
    me = distaff.current_execution()
    try:
        if how == "wait-first-completed":
            distaff.wait([me], return_when=distaff.FIRST_COMPLETED)
        elif how == "as_completed":
            for e in distaff.as_completed([me]):
                pass
        else:
            other = engine.task()(lambda: 1).submit()
            done, _ = distaff.wait([me, other], return_when=distaff.FIRST_COMPLETED)
            return f"done {sorted(e.name for e in done)}"
    except distaff.DeadlockError as e:
        return "DeadlockError"
    return "no error"

@engine.task()
async def watched():
    # A task the body starts shares its context but is not the body: it may await the body.
    me = distaff.current_execution()
    seen = []

    async def watch():
        await me
        seen.append("after")

    asyncio.get_running_loop().create_task(watch())
    await asyncio.sleep(0)  # the watcher runs up to its await
    return me.done()

for how in ("self", "wait", "wait-first-exception", "wait-first-completed", "first-completed-of-two",
            "as_completed"):
    print(how, body.submit(how).result(timeout=10), flush=True)
for how in ("wait-first-completed", "first-completed-of-two", "as_completed"):
    print("sync", how, sync_body.submit(how).result(timeout=10), flush=True)
print("watched", watched.submit().result(timeout=10), flush=True)
engine.shutdown()
"""


def test_an_async_body_awaiting_its_own_execution_gets_deadlock_error():
    # As asyncio's "Task cannot await on itself", a body awaiting itself (or a wait on itself) was
    # a hang; a task it starts may still await it, and FIRST_COMPLETED over it and another member
    # is no cycle (over itself alone it is, in sync bodies too).
    r = run_python(_ASYNC_BODY_AWAITS_ITSELF, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "self DeadlockError",
        "wait DeadlockError",
        "wait-first-exception DeadlockError",
        "wait-first-completed DeadlockError",
        "first-completed-of-two done ['body.<locals>.<lambda>']",
        "as_completed DeadlockError",
        "sync wait-first-completed DeadlockError",
        "sync first-completed-of-two done ['sync_body.<locals>.<lambda>']",
        "sync as_completed DeadlockError",
        "watched False",
    ], r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_a_gather_of_a_waiting_body_still_finishes_when_nothing_closes_a_cycle(engine, new_gate):
    # The handle's members in the wait graph must not make ordinary waits look like cycles.
    gate = new_gate()

    @engine.task()
    def slow(i):
        gate.wait()
        return i

    @engine.task()
    def parent():
        kids = [slow.submit(i) for i in range(3)]
        h = distaff.gather(*kids)
        waiter = observer.submit(h)
        gate.set()
        return h.result(), waiter.result()

    @engine.task()
    def observer(h):
        return sum(h.result())

    assert parent() == ([0, 1, 2], 3)


@pytest.mark.parametrize("n", [10_000])
def test_wait_on_10k_members_from_the_main_thread(engine, n):
    @engine.task()
    def f(i):
        return i

    exs = [f.submit(i) for i in range(n)]
    done, not_done = distaff.wait(exs)
    assert len(done) == n and not not_done
    assert sum(e.result() for e in distaff.as_completed(exs)) == n * (n - 1) // 2
    assert distaff.gather(*exs).result() == list(range(n))


@pytest.mark.parametrize("n", [10_000])
def test_wait_on_10k_members_from_a_task_body(engine, n):
    @engine.task()
    def f(i):
        return i

    @engine.task()
    def waiter():
        exs = [f.submit(i) for i in range(n)]
        first, _ = distaff.wait(exs, return_when=distaff.FIRST_COMPLETED)
        done, not_done = distaff.wait(exs)
        seen = sum(1 for _ in distaff.as_completed(exs))
        return len(first) >= 1, len(done), len(not_done), seen, sum(distaff.gather(*exs).result())

    assert waiter() == (True, n, 0, n, n * (n - 1) // 2)


def test_wait_in_a_running_loop_returns_an_awaitable(engine, new_gate):
    gate = new_gate()

    @engine.task()
    def f(x):
        if x == "slow":
            fiber_wait(gate)
        return x

    async def main():
        quick, slow = f.submit("quick"), f.submit("slow")
        pending = distaff.wait([quick, slow], return_when=distaff.FIRST_COMPLETED)
        assert inspect.isawaitable(pending)
        first = await pending
        timed_out = await distaff.wait([slow], timeout=0.01)
        gate.set()
        everything = await distaff.wait([quick, slow])
        return first, timed_out, everything, quick, slow

    first, timed_out, everything, quick, slow = asyncio.run(main())
    assert first == ({quick}, {slow})
    assert timed_out == (set(), {slow})
    assert everything == ({quick, slow}, set())


def test_wait_first_exception_in_a_running_loop(engine, new_gate):
    gate = new_gate()

    @engine.task()
    def f(x):
        if x == "slow":
            fiber_wait(gate)
        if x == "bad":
            raise ValueError(x)
        return x

    async def main():
        slow, bad = f.submit("slow"), f.submit("bad")
        return await distaff.wait([slow, bad], return_when=distaff.FIRST_EXCEPTION), slow, bad

    (done, not_done), slow, bad = asyncio.run(main())
    assert done == {bad} and not_done == {slow}
    gate.set()
    assert slow.result() == "slow" and isinstance(bad.exception(), ValueError)


def test_async_for_over_as_completed(engine, new_gate):
    gates = [new_gate() for _ in range(3)]

    @engine.task()
    def member(i):
        fiber_wait(gates[i])
        return i

    async def main():
        exs = [member.submit(i) for i in range(3)]
        order = []
        gates[1].set()
        async for ex in distaff.as_completed(exs):
            order.append(await ex)
            if len(order) < 3:
                gates[[1, 2, 0][len(order)]].set()
        return order

    assert asyncio.run(main()) == [1, 2, 0]


def test_async_for_over_as_completed_times_out(engine, new_gate):
    gate = new_gate()

    @engine.task()
    def member(i):
        if i:
            fiber_wait(gate)
        return i

    async def main():
        exs = [member.submit(0), member.submit(1)]
        got = []
        with pytest.raises(TimeoutError, match=r"1 \(of 2\)"):
            async for ex in distaff.as_completed(exs, timeout=0.05):
                got.append(ex.result())
        return got, exs

    got, exs = asyncio.run(main())
    assert got == [0] and not exs[1].done()
    gate.set()
    assert exs[1].result() == 1


def test_wait_and_as_completed_reject_non_executions(engine):
    ex = engine.submit(int)
    with pytest.raises(TypeError):
        distaff.wait([ex, 3])
    with pytest.raises(TypeError):
        distaff.as_completed([cf.Future()])
    with pytest.raises(TypeError):
        distaff.as_completed(ex)
    ex.result()


# -- gather -----------------------------------------------------------------------------------------


@pytest.fixture
def members(engine):
    """member(i, gate=None, fail=False): a task that waits for a gate, then returns i or raises."""

    @engine.task()
    def member(i, gate=None, fail=False):
        if gate is not None:
            assert fiber_wait(gate)
        if fail:
            raise ValueError(f"member {i} failed")
        return i

    return member


def test_gather_returns_results_in_argument_order(members, new_gate):
    gates = [new_gate() for _ in range(3)]
    exs = [members.submit(i, gates[i]) for i in range(3)]
    g = distaff.gather(*exs)
    assert isinstance(g, distaff.Execution) and not g.done()
    for gate in reversed(gates):  # finish in reverse order
        gate.set()
    assert g.result(timeout=30) == [0, 1, 2]
    assert g.description["name"] == "gather"
    assert g.description["dependencies"] == [e.id for e in exs]


def test_gather_of_nothing_and_of_duplicates(members):
    assert distaff.gather().result() == []
    a = members.submit(7)
    assert distaff.gather(a, a).result() == [7, 7]  # like asyncio.gather(f, f)


def test_gather_fails_fast_on_the_first_failure(members, new_gate):
    gate = new_gate()
    slow = members.submit(0, gate)
    bad = members.submit(1, fail=True)
    g = distaff.gather(slow, bad)
    with pytest.raises(ValueError, match="member 1 failed"):
        g.result(timeout=30)
    assert not slow.done(), "gather waited for the slow member instead of failing fast"
    assert g.exception() is bad.exception()  # the member's own exception, not a wrapper
    gate.set()
    assert slow.result() == 0


def test_gather_return_exceptions_puts_them_in_place(engine, members, new_gate):
    @engine.task(wait=True)
    def after(dep):
        return dep.result()

    gate = new_gate()
    ok = members.submit(0)
    bad = members.submit(1, fail=True)
    cancelled = after.submit(members.submit(2, gate))
    assert cancelled.cancel()
    out = distaff.gather(ok, bad, cancelled, return_exceptions=True).result(timeout=30)
    assert out[0] == 0
    assert isinstance(out[1], ValueError) and out[1] is bad.exception()
    assert isinstance(out[2], distaff.CancelledError)
    gate.set()


def test_gather_return_exceptions_waits_for_every_member(members, new_gate):
    gate = new_gate()
    slow = members.submit(0, gate)
    bad = members.submit(1, fail=True)
    g = distaff.gather(slow, bad, return_exceptions=True)
    bad.exception()
    assert not g.done()
    gate.set()
    out = g.result(timeout=30)
    assert out[0] == 0 and isinstance(out[1], ValueError)


def test_gather_is_awaitable(members):
    async def main():
        return await distaff.gather(*[members.submit(i) for i in range(5)])

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_gather_failure_reraises_when_awaited(members):
    async def main():
        await distaff.gather(members.submit(0), members.submit(1, fail=True))

    with pytest.raises(ValueError, match="member 1 failed"):
        asyncio.run(main())


def test_gather_is_usable_as_a_dependency(engine, members, new_gate):
    @engine.task(resolve=True)
    def total(values):
        return sum(values)

    @engine.task(wait=True)
    def count(gathered):
        assert gathered.done()
        return len(gathered.result())

    gates = [new_gate() for _ in range(3)]
    g = distaff.gather(*[members.submit(i, gates[i]) for i in range(3)])
    t, c = total.submit(g), count.submit(g)
    assert t.description["state"] == "waiting"
    for gate in gates:
        gate.set()
    assert t.result(timeout=30) == 3 and c.result(timeout=30) == 3


def test_gather_inside_a_task_body(engine, members):
    @engine.task()
    def fan_out(n):
        return distaff.gather(*[members.submit(i) for i in range(n)]).result()

    assert fan_out(100) == list(range(100))


def test_cancelling_a_gather_cancels_its_unfinished_members(members, new_gate):
    gate = new_gate()
    done = members.submit(0)
    assert done.result(timeout=30) == 0
    pending = [members.submit(i, gate) for i in (1, 2)]
    g = distaff.gather(done, *pending)
    assert g.cancel()
    assert g.cancelled()
    for p in pending:
        with pytest.raises(distaff.CancelledError):
            p.result(timeout=30)
    assert done.result() == 0 and not done.cancelled()


def test_a_cancelled_member_ends_the_gather_cancelled_at_once_and_unlogged(members, new_gate, caplog):
    gate = new_gate()
    a, b = members.submit(1, gate), members.submit(2, gate)
    g = distaff.gather(a, b)
    a.cancel()
    with pytest.raises(distaff.CancelledError):
        g.result(timeout=30)  # at once: b is still waiting on its gate
    assert g.cancelled() and g.state == "cancelled"
    assert not b.done(), "the other members are not cancelled (asyncio.gather's rule)"
    gate.set()
    assert b.result(timeout=30) == 2
    del g
    collect()
    distaff._core._drain_unobserved()
    assert "failed and nobody retrieved" not in caplog.text


@pytest.mark.parametrize("n, which", [(1, 0), (2, 1), (2, 0), (3, 1), (3, 2)])
def test_a_gather_whose_last_unfinished_member_is_cancelled_ends_cancelled(engine, members, new_gate, caplog, n, which):
    # The wait-set's callback ran before the cancelled-member one when the cancelled member was the
    # last to finish, and finished the gather *failed* with the member's CancelledError (logged as an
    # unretrieved failure; a wait= dependent said "failed: CancelledError"). Failed before the fix.
    @engine.task(wait=True)
    def after(dep):
        return dep.result()

    gates = [new_gate() for _ in range(n)]
    ms = [members.submit(i, gates[i]) for i in range(n)]
    g = distaff.gather(*ms)
    dependent = after.submit(g)
    for i in range(n):
        if i != which:
            gates[i].set()
            assert ms[i].result(timeout=30) == i
    assert not g.done()
    assert ms[which].cancel()
    assert g.done(), "the gather did not end at once"
    assert g.state == "cancelled" and g.cancelled()
    with pytest.raises(distaff.CancelledError):
        g.result(timeout=30)
    err = dependent.exception(timeout=30)
    assert isinstance(err, distaff.DependencyError) and "was cancelled" in str(err), err
    del g, dependent, err
    collect()
    distaff._core._drain_unobserved()
    assert "failed and nobody retrieved" not in caplog.text


def test_a_member_cancel_racing_the_other_members_finish_never_fails_the_gather(engine, members, new_gate, caplog):
    # Stress: the cancel of one member and the finish of the other (and of the cancelled one itself)
    # race on two threads; whichever is last, the gather ends cancelled if the cancel won, else
    # succeeded — never failed.
    outcomes = set()
    for _ in range(200):
        ga, gb = new_gate(), new_gate()
        a, b = members.submit(0, ga), members.submit(1, gb)
        g = distaff.gather(a, b)
        barrier = threading.Barrier(2)

        def finish():
            barrier.wait()
            ga.set()
            gb.set()

        def cancel():
            barrier.wait()
            b.cancel()

        threads = [threading.Thread(target=finish), threading.Thread(target=cancel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert distaff.wait([g], timeout=30).not_done == set()
        if b.cancelled():
            assert g.state == "cancelled", (a.state, b.state, g.state)
        else:
            assert g.state == "succeeded" and g.result() == [0, 1]
        outcomes.add(g.state)
    del g
    collect()
    distaff._core._drain_unobserved()
    assert "failed and nobody retrieved" not in caplog.text
    assert "cancelled" in outcomes


def test_gather_with_return_exceptions_reports_a_cancelled_member_in_place(members):
    a = members.submit(1)
    c = members.submit(2)
    c.cancel()
    out = distaff.gather(a, c, return_exceptions=True).result(timeout=30)
    assert out[0] == 1 and isinstance(out[1], distaff.CancelledError)


def test_cancelling_a_join_cancels_its_unfinished_members(members, new_gate):
    gate = new_gate()
    a, b = members.submit(1, gate), members.submit(2, gate)
    j = distaff.join(first=a, second=b)
    j.cancel()
    assert j.cancelled() and a.cancelled() and b.cancelled()


def test_gather_rejects_non_executions(members):
    with pytest.raises(TypeError, match="gather"):
        distaff.gather(members.submit(1), 2)


# -- join -----------------------------------------------------------------------------------------------


def test_join_returns_a_dict_by_name(members, new_gate):
    gates = [new_gate() for _ in range(3)]
    j = distaff.join(
        users=members.submit(1, gates[0]), posts=members.submit(2, gates[1]), stats=members.submit(3, gates[2])
    )
    assert isinstance(j, distaff.Execution) and not j.done()
    for gate in reversed(gates):
        gate.set()
    out = j.result(timeout=30)
    assert out == {"users": 1, "posts": 2, "stats": 3}
    assert list(out) == ["users", "posts", "stats"]  # the order the names were given


def test_join_error_names_the_failed_member(members):
    j = distaff.join(users=members.submit(1), posts=members.submit(2, fail=True))
    with pytest.raises(distaff.JoinError, match="'posts'") as info:
        j.result(timeout=30)
    err = info.value
    assert err.member == "posts"
    assert isinstance(err.__cause__, ValueError) and "member 2 failed" in str(err.__cause__)
    assert isinstance(err, distaff.DependencyError) and isinstance(err, distaff.Error)


def test_join_fails_fast_when_the_failed_member_comes_first(members, new_gate):
    gate = new_gate()
    bad = members.submit(1, fail=True)
    bad.exception()
    slow = members.submit(0, gate)
    j = distaff.join(bad=bad, slow=slow)
    with pytest.raises(distaff.JoinError, match="'bad'"):
        j.result(timeout=30)
    assert not slow.done()
    gate.set()
    slow.result()


def test_join_fails_fast_when_the_failed_member_comes_after_a_pending_one(members, new_gate):
    gate = new_gate()
    bad = members.submit(1, fail=True)
    bad.exception()
    slow = members.submit(0, gate)
    safety = threading.Timer(2.0, gate.set)  # a regression fails the assert below instead of hanging
    safety.start()
    j = None
    try:
        j = distaff.join(slow=slow, bad=bad)
        assert not slow.done(), "join() blocked its caller until the pending member finished"
        with pytest.raises(distaff.JoinError, match="'bad'"):
            j.result(timeout=30)
    finally:
        safety.cancel()
        gate.set()
        slow.result()
        if j is not None:
            j.exception(timeout=30)  # observed, even when an assertion failed first


def test_join_missing_maps_cancelled_and_skipped_members(engine, members, new_gate):
    @engine.task(wait=True)
    def after(dep):
        return dep.result()

    gate = new_gate()
    cancelled = after.submit(members.submit(0, gate))
    assert cancelled.cancel()
    skipped = after.submit(members.submit(1, fail=True))  # its wait= dependency fails: it never runs
    assert isinstance(skipped.exception(timeout=30), distaff.DependencyError)
    ok = members.submit(2)
    ok.result()
    out = distaff.join(basic=ok, premium=cancelled, extra=skipped, missing=None).result(timeout=30)
    assert out == {"basic": 2, "premium": None, "extra": None}
    sentinel = object()
    assert distaff.join(p=cancelled, missing=sentinel).result()["p"] is sentinel
    gate.set()


def test_join_without_missing_raises_for_cancelled_and_skipped_members(engine, members, new_gate):
    @engine.task(wait=True)
    def after(dep):
        return dep.result()

    gate = new_gate()
    cancelled = after.submit(members.submit(0, gate))
    assert cancelled.cancel()
    with pytest.raises(distaff.JoinError, match="'premium'.*cancelled") as info:
        distaff.join(basic=members.submit(1), premium=cancelled).result(timeout=30)
    assert info.value.member == "premium"
    skipped = after.submit(members.submit(2, fail=True))
    with pytest.raises(distaff.JoinError, match="'extra'") as info:
        distaff.join(extra=skipped).result(timeout=30)
    assert isinstance(info.value.__cause__, distaff.DependencyError)
    gate.set()


def test_join_missing_does_not_hide_real_failures(members):
    with pytest.raises(distaff.JoinError, match="'bad'"):
        distaff.join(ok=members.submit(1), bad=members.submit(2, fail=True), missing=None).result(timeout=30)


def test_join_missing_waits_for_the_other_members(engine, members, new_gate):
    @engine.task(wait=True)
    def after(dep):
        return dep.result()

    gate = new_gate()
    skipped_dep = members.submit(1, fail=True)
    slow = members.submit(0, gate)
    j = distaff.join(slow=slow, extra=after.submit(skipped_dep), missing=None)
    gate.set()
    assert j.result(timeout=30) == {"slow": 0, "extra": None}


def test_join_missing_with_a_skipped_member_does_not_block_the_caller(engine, members, new_gate):
    @engine.task(wait=True)
    def after(dep):
        return dep.result()

    skipped = after.submit(members.submit(1, fail=True))
    skipped.exception(timeout=30)
    gate = new_gate()
    slow = members.submit(0, gate)
    safety = threading.Timer(2.0, gate.set)  # a regression fails the assert below instead of hanging
    safety.start()
    j = None
    try:
        j = distaff.join(slow=slow, extra=skipped, missing=None)
        assert not slow.done(), "join() blocked its caller until the pending member finished"
        gate.set()
        assert j.result(timeout=30) == {"slow": 0, "extra": None}
    finally:
        safety.cancel()
        gate.set()
        slow.result()
        if j is not None:
            j.exception(timeout=30)  # observed, even when an assertion failed first


def test_join_is_awaitable_and_a_dependency(engine, members):
    @engine.task(resolve=True)
    def render(page):
        return f"{page['users']} users, {page['posts']} posts"

    async def main():
        page = distaff.join(users=members.submit(3), posts=members.submit(5))
        return await page, await render(page)

    assert asyncio.run(main()) == ({"users": 3, "posts": 5}, "3 users, 5 posts")


def test_join_in_a_running_loop_with_a_pending_async_member_does_not_deadlock():
    code = """
        import asyncio, distaff
        eng = distaff.Engine()

        @eng.task()
        async def waits(ev):
            await ev.wait()
            return 1

        @eng.task()
        def boom():
            raise ValueError("boom")

        async def main():
            ev = asyncio.Event()
            bad = boom.submit()
            await distaff.wait([bad])
            j = distaff.join(slow=waits.submit(ev), bad=bad)  # hangs here with the bug
            ev.set()
            try:
                await j
            except distaff.JoinError as e:
                print("JoinError", e.member)

        asyncio.run(main())
        eng.shutdown()
    """
    try:
        r = run_python(code, timeout=3)
    except subprocess.TimeoutExpired:
        pytest.fail("join() deadlocked the event loop")
    assert r.returncode == 0, r.stderr
    assert "JoinError bad" in r.stdout


def test_join_rejects_bad_arguments(members):
    with pytest.raises(TypeError, match="at least one"):
        distaff.join()
    with pytest.raises(TypeError, match="'users'"):
        distaff.join(users=3)


@pytest.mark.parametrize("return_when", ["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"])
@pytest.mark.parametrize("timeout", [None, 5])
def test_wait_in_a_body_that_was_cancelled_raises_again_instead_of_returning_at_once(return_when, timeout):
    # Outsider finding (session 9): a body that caught the CancelledError of its own cancel and then
    # called distaff.wait() got (set(), {...}) back at once, with or without a timeout — so
    # `while not wait([x], timeout=1).done` spun at 100% CPU. Every later wait of a cancelled body
    # raises again, as result(), sleep() and the sync primitives do: distaff.Interrupted once the
    # body has left the handler of its CancelledError (session 12).
    eng = distaff.Engine(workers=2)
    try:
        release = threading.Event()
        caught = threading.Event()
        started = threading.Event()
        out = []

        @eng.task
        def other():
            release.wait(30)

        @eng.task
        def body(ext):
            try:
                started.set()
                distaff.sleep(30)
            except distaff.CancelledError:
                caught.set()
            try:
                r = distaff.wait([ext], timeout=timeout, return_when=return_when)
                out.append(("returned", r))
            except (distaff.CancelledError, distaff.Interrupted) as e:
                out.append(("raised", type(e).__name__))

        ext = other.submit()
        b = body.submit(ext)
        assert started.wait(30)
        b.cancel()
        assert caught.wait(30)
        release.set()
        assert eng.wait_idle(30)
        assert out == [("raised", "Interrupted")], out
    finally:
        release.set()
        eng.shutdown()


_CYCLE_CLOSED_AFTER_THE_PARK = """
import sys, distaff
box = {}

@distaff.task()
def child():
    distaff.sleep(0.05)  # the parent is parked by now, mostly; either order is a DeadlockError
    return box["parent"].result()

@distaff.task()
def slow():
    distaff.sleep(30)

@distaff.task()
def parent(how):
    box["parent"] = distaff.current_execution()
    c = child.submit()
    if how == "wait":
        distaff.wait([c])
    else:
        box["slow"] = slow.submit()
        distaff.wait([c, box["slow"]], return_when=distaff.FIRST_EXCEPTION)
    return c.result()

@distaff.task()
async def async_parent(how):
    box["parent"] = distaff.current_execution()
    c = child.submit()
    if how == "await":
        return await c
    if how == "await-wait":
        box["slow"] = slow.submit()
        await distaff.wait([c, box["slow"]], return_when=distaff.FIRST_EXCEPTION)
    return c.result()

how = sys.argv[1]
ex = (async_parent if how.startswith("await") else parent).submit(how)
try:
    ex.result(timeout=20)
    print("no error")
except distaff.DeadlockError as e:
    print("DeadlockError", e)
except TimeoutError:
    print("hung")
    ex.cancel()
if "slow" in box:
    box["slow"].cancel()
"""


@pytest.mark.parametrize("how", ["wait", "wait-first-exception", "await", "await-wait"])
def test_a_cycle_closed_after_a_body_parked_in_a_wait_or_an_await_is_a_deadlock_error(how):
    # An outsider's find (session 18): a body parked in distaff.wait (ALL_COMPLETED or
    # FIRST_EXCEPTION) or in an await was not in the wait graph, so a child then waiting on it hung
    # both. The wait-set's park and the await now record the edge; whoever closes the cycle gets
    # DeadlockError (here the child, whose error the parent's wait then passes on).
    r = run_python(_CYCLE_CLOSED_AFTER_THE_PARK, argv=(how,), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("DeadlockError"), r.stdout + r.stderr
