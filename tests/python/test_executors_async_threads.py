"""executor=ThreadPoolExecutor with ``async def`` bodies (distaff/_local_async.py, docs/executors.md):
each executor thread runs them on an event loop of its own, reused; a cancelled execution cancels
its body at its next await; tasks a body leaves running are cancelled when it returns; a backlog of
tiny bodies runs in chunks on one thread's loop, each body with its own outcome, and a tiny body
shipped while the last batch still waits in the executor's queue joins it.

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


def test_tiny_bodies_join_a_batch_still_waiting_in_the_executor_each_with_its_own_outcome():
    # Latency (bench W7b, docs/executors.md): once bodies are seen to be tiny, a body submitted
    # while the last batch handed to the executor has not started yet joins that batch instead of
    # making an executor call (and waking a thread) of its own. Here the pool's only thread is
    # held by a plain call, so the batch waits; the bodies submitted meanwhile all join it.
    out = check(
        """
        import asyncio, threading
        from concurrent.futures import ThreadPoolExecutor
        import distaff

        class Counting(ThreadPoolExecutor):
            calls = 0
            def submit(self, *a, **k):
                Counting.calls += 1
                return super().submit(*a, **k)

        pool = Counting(1)
        eng = distaff.Engine()

        @eng.task(executor=pool)
        async def body(i):
            await asyncio.sleep(0)
            if i == 3:
                raise KeyError(i)
            return threading.current_thread().name, i * 2

        for rnd in range(3):  # teaches the executor that the bodies are tiny
            distaff.wait([body.submit(i + 100) for i in range(20)])

        gate = threading.Event()
        blocker = pool.submit(gate.wait, 30)  # the pool's only thread is busy: calls queue
        before = Counting.calls
        exs = [body.submit(i) for i in range(50)]
        # Each execution's fiber ships its body; on the engine's one worker, work submitted from
        # outside starts in submission order, so once a plain task submitted after them has run,
        # all 50 have been handed to the executor.
        eng.task()(lambda: None).submit().result(timeout=30)
        exs[7].cancel()
        calls = Counting.calls - before
        gate.set()
        blocker.result(30)
        distaff.wait(exs, timeout=30)
        for i, ex in enumerate(exs):
            if i == 3:
                assert isinstance(ex.exception(), KeyError), ex.exception()
            elif i == 7:
                assert ex.cancelled(), ex.state
            else:
                name, v = ex.result()
                assert v == i * 2, (i, v)
        print("calls for 50 bodies:", calls)
        eng.shutdown()
        pool.shutdown()
        """
    )
    calls = int(out.split("calls for 50 bodies:")[1])
    assert calls == 1, out  # 50 before the change: one executor call per body


def test_bodies_not_known_to_be_tiny_each_get_an_executor_call_of_their_own():
    # A body that may block its thread must not hold up others: until bodies are seen to be tiny,
    # none joins another's batch. Three bodies that block their threads on one barrier (each
    # waits for the other two) finish only if they run on three threads.
    out = check(
        """
        import threading
        from concurrent.futures import ThreadPoolExecutor
        import distaff

        pool = ThreadPoolExecutor(3)
        eng = distaff.Engine()
        barrier = threading.Barrier(3, timeout=20)

        @eng.task(executor=pool)
        async def meet(i):
            barrier.wait()  # blocks this thread (and its loop) until all three are there
            return i

        exs = [meet.submit(i) for i in range(3)]
        print("results:", sorted(ex.result(timeout=30) for ex in exs))
        eng.shutdown()
        pool.shutdown()
        """
    )
    assert "results: [0, 1, 2]" in out


def test_finished_batches_of_async_bodies_leave_no_garbage_for_the_cyclic_collector():
    # A batch and its executor call's future referred to each other (the future's done callback is
    # the batch's), so every finished batch, with its jobs, their asyncio tasks, the tasks'
    # coroutines and contexts, waited for the cyclic garbage collector: ~4.5 objects per body,
    # most of the collector's work with thousands of tiny bodies in flight. Now they are freed by
    # reference counting as the batch ends; so are the loop deliveries of awaited executions.
    out = check(
        """
        import asyncio, gc
        from concurrent.futures import ThreadPoolExecutor
        import distaff

        pool = ThreadPoolExecutor(4)
        eng = distaff.Engine()

        @eng.task(executor=pool)
        async def tiny(i):
            return i

        async def main():
            for _ in range(3):  # the first rounds teach the executor the bodies are tiny (batches)
                assert await asyncio.gather(*[tiny.submit(i) for i in range(300)]) == list(range(300))
            gc.collect()
            gc.disable()
            assert await asyncio.gather(*[tiny.submit(i) for i in range(3000)]) == list(range(3000))

        asyncio.run(main())
        eng.shutdown()
        pool.shutdown()
        found = gc.collect()
        print("unreachable", found)
        assert found < 300, found  # was 15,000-18,000 (5-6 per body)
        """
    )
    assert "unreachable" in out


def test_a_job_stopped_just_after_its_task_is_made_is_reported_stopped_and_the_batch_ends():
    # run_batch looks at job.stopped before making the body's task; a stop (cancel(), timeout=)
    # landing right after that made it cancel the task before its first step, so the body's
    # coroutine never ran, its finally never counted it done and run_batch waited for ever. Here
    # a job whose `stopped` turns true after the first look pins that moment.
    r = run_python(
        """
        from distaff import _local_async as la

        class Job:
            args, kwargs, looks, handle = (), {}, 0, None

            @property
            def stopped(self):
                self.looks += 1
                return self.looks > 1

            async def fn(self):
                raise AssertionError("a stopped job's body ran")

        events = []
        batch = la.Batch([Job()], lambda b, error: events.append(("batch ended", error)))
        la.run_batch(batch, lambda job, outcome: events.append(("reported", outcome)))
        print(events)
        assert events == [("reported", None), ("batch ended", None)], events
        """,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert "[('reported', None), ('batch ended', None)]" in r.stdout
