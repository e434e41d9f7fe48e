"""executor=ThreadPoolExecutor with ``async def`` bodies (distaff/_local_async.py, docs/executors.md):
each executor thread runs them on an event loop of its own, reused; a cancelled execution cancels
its body at its next await; tasks a body leaves running are cancelled when it returns; a backlog of
tiny bodies runs in chunks on one thread's loop, each body with its own outcome.

Every case runs in a fresh interpreter with a deadline: a cancellation that does not reach the
body would hang it."""

from conftest import run_python


def check(code: str, timeout: float = 60) -> str:
    r = run_python(code, timeout=timeout)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return r.stdout


def test_async_bodies_run_as_tasks_of_one_reused_loop_per_executor_thread():
    out = check(
        """
        import asyncio, threading
        from concurrent.futures import ThreadPoolExecutor
        import distaff

        pool = ThreadPoolExecutor(2, thread_name_prefix="pool")
        eng = distaff.Engine()

        @eng.task(executor=pool)
        async def where(i):
            await asyncio.sleep(0)
            assert asyncio.current_task() is not None
            return threading.current_thread().name, id(asyncio.get_running_loop())

        seen = {}
        for name, loop in [ex.result(timeout=30) for ex in [where.submit(i) for i in range(300)]]:
            assert name.startswith("pool"), name
            seen.setdefault(name, set()).add(loop)
        # one loop per thread, made once and reused by every body that thread ran
        assert seen and all(len(loops) == 1 for loops in seen.values()), seen
        eng.shutdown()
        pool.shutdown()
        print("ok", len(seen))
        """
    )
    assert out.startswith("ok")


def test_each_body_has_its_own_outcome_also_in_a_backlog_of_tiny_bodies():
    out = check(
        """
        import asyncio
        from concurrent.futures import ThreadPoolExecutor
        import distaff

        pool = ThreadPoolExecutor(2)
        eng = distaff.Engine()

        @eng.task(executor=pool)
        async def body(i):
            if i % 7 == 3:
                await asyncio.sleep(0)
                raise KeyError(i)
            return i * 2

        for rnd in range(3):  # the first round teaches the executor the bodies are tiny
            exs = [body.submit(i) for i in range(3000)]
            distaff.wait(exs)
            for i, ex in enumerate(exs):
                if i % 7 == 3:
                    err = ex.exception()
                    assert isinstance(err, KeyError) and err.args == (i,), (i, err)
                else:
                    assert ex.result() == i * 2, (i, ex.result())
        eng.shutdown()
        pool.shutdown()
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_cancelling_the_execution_cancels_a_running_body_at_its_next_await():
    out = check(
        """
        import asyncio, threading
        from concurrent.futures import ThreadPoolExecutor
        import distaff

        pool = ThreadPoolExecutor(2)
        eng = distaff.Engine()
        running, stopped = threading.Event(), threading.Event()

        @eng.task(executor=pool)
        async def forever():
            running.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                stopped.set()
                raise

        ex = forever.submit()
        assert running.wait(20)
        ex.cancel()
        assert stopped.wait(20), "the body was not cancelled"
        assert ex.cancelled()
        # the thread is free again
        @eng.task(executor=pool)
        async def after():
            return "after"
        assert after.submit().result(timeout=20) == "after"
        eng.shutdown()
        pool.shutdown()
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_timeout_and_a_cancel_before_the_body_starts():
    out = check(
        """
        import asyncio, threading
        from concurrent.futures import ThreadPoolExecutor
        import distaff

        pool = ThreadPoolExecutor(1)
        eng = distaff.Engine()
        gate, ran = threading.Event(), []

        @eng.task(executor=pool)
        def hold():
            gate.wait(30)

        @eng.task(executor=pool)
        async def queued():
            ran.append(1)

        @eng.task(executor=pool, timeout=0.2)
        async def slow():
            await asyncio.sleep(3600)

        h = hold.submit()
        q = queued.submit()   # waits behind hold() for the only thread
        q.cancel()
        gate.set()
        h.result(timeout=20)
        try:
            slow.submit().result(timeout=20)
        except distaff.TimeoutError:
            print("timed out")
        assert q.cancelled() and ran == [], ran
        eng.shutdown()
        pool.shutdown()
        print("ok")
        """
    )
    assert out.split() == ["timed", "out", "ok"]


def test_tasks_a_body_leaves_running_are_cancelled_when_it_returns():
    out = check(
        """
        import asyncio, threading
        from concurrent.futures import ThreadPoolExecutor
        import distaff

        pool = ThreadPoolExecutor(2)
        eng = distaff.Engine()
        cancelled = []

        async def child(i):
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(i)
                raise

        @eng.task(executor=pool)
        async def parent(i):
            asyncio.get_running_loop().create_task(child(i))
            await asyncio.sleep(0)
            return i

        @eng.task(executor=pool)
        async def plain(i):
            return i

        for rnd in range(2):  # alone, then among a backlog of tiny bodies (chunks)
            exs = [parent.submit(i) for i in range(50)] + [plain.submit(i) for i in range(2000)]
            assert [e.result(timeout=30) for e in exs[:50]] == list(range(50))
            distaff.wait(exs, timeout=30)
        eng.shutdown(wait=True)
        pool.shutdown(wait=True)
        assert sorted(cancelled) == sorted(list(range(50)) * 2), sorted(cancelled)
        print("ok")
        """
    )
    assert out.strip() == "ok"
