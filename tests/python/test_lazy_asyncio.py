"""`import distaff` does not import asyncio; asyncio's side of distaff appears when a program
imports asyncio, before or after distaff (docs/internals/imports.md). Each case runs in a fresh
interpreter: the test process itself has asyncio loaded long ago."""

import json
import textwrap

import pytest

from conftest import run_python


def _run(code: str, prelude: str = "") -> dict:
    r = run_python(prelude + textwrap.dedent(code), timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_program_that_never_uses_asyncio_never_imports_it():
    out = _run(
        """
        import json, sys
        import distaff

        @distaff.task()
        def inc(x):
            distaff.sleep(0.001)
            return x + 1

        @distaff.workflow()
        def flow(n):
            return sum(distaff.gather(*[inc.submit(i) for i in range(n)]).result())

        with distaff.Engine(workers=2) as eng:
            eng.submit(inc, 1).result()
        r = flow(10)
        c = inc.submit(1)
        c.cancel()
        try:
            c.result()
        except distaff.CancelledError:
            pass
        distaff.wait([inc.submit(2)])
        print(json.dumps({"r": r, "asyncio": [m for m in sys.modules if m == "asyncio" or m.startswith("asyncio.")]}))
        """
    )
    assert out == {"r": 55, "asyncio": []}


@pytest.mark.parametrize("order", ["asyncio_first", "distaff_first", "distaff_used_first"])
def test_with_asyncio_imported_before_or_after_distaff_a_cancelled_execution_is_an_asyncio_cancellation(order):
    out = _run(
        f"""
        import json, sys
        order = {order!r}
        if order == "asyncio_first":
            import asyncio
        import distaff

        @distaff.task()
        def slow(ev):
            ev.wait()

        if order == "distaff_used_first":  # a cancellation raised before asyncio exists
            ev = distaff.Event()
            early = slow.submit(ev)
            early.cancel()
            try:
                early.result()
            except distaff.CancelledError as e:
                early_exc = e
            ev.set()
        import asyncio

        caught = []
        ev = distaff.Event()
        ex = slow.submit(ev)
        ex.cancel()
        try:
            ex.result()
        except asyncio.CancelledError as e:  # the except clause a coroutine author writes
            caught.append(type(e).__name__)
        ev.set()
        if order == "distaff_used_first":
            caught.append(isinstance(early_exc, asyncio.CancelledError))

        async def main():
            x = slow.submit(distaff.Event())
            assert asyncio.isfuture(x)  # the asyncio future protocol, no Task around it
            x.cancel()
            try:
                await x
            except asyncio.CancelledError:
                return "cancelled"

        caught.append(asyncio.run(main()))
        mro = [c.__module__ + "." + c.__qualname__ for c in distaff.CancelledError.__mro__]
        print(json.dumps({{"caught": caught, "mro": mro}}))
        """
    )
    expected = ["CancelledError", "cancelled"]
    if order == "distaff_used_first":
        expected = ["CancelledError", True, "cancelled"]
    assert out["caught"] == expected
    assert out["mro"] == [
        "distaff._errors.CancelledError",
        "distaff._errors.Error",
        "concurrent.futures._base.CancelledError",
        "concurrent.futures._base.Error",
        "builtins.Exception",
        "asyncio.exceptions.CancelledError",
        "builtins.BaseException",
        "builtins.object",
    ]


def test_once_asyncio_is_imported_the_running_loop_check_is_asyncios_own_function():
    out = _run(
        """
        import json
        import distaff
        from distaff import _aio, _asyncio, _task, _wait

        @distaff.task()
        def one():
            return 1

        before = [_task._get_running_loop is type(None), one() == 1]
        import asyncio, asyncio.events

        async def main():
            return await one.submit()

        r = asyncio.run(main())
        fast = asyncio.events._get_running_loop
        after = [m._get_running_loop is fast for m in (_task, _asyncio, distaff)] + [_wait._running_loop is fast]
        print(json.dumps({"before": before, "r": r, "after": after, "c": type(fast).__name__}))
        """
    )
    assert out == {"before": [True, True], "r": 1, "after": [True, True, True, True], "c": "builtin_function_or_method"}


def test_asyncio_imported_after_distaff_is_whole_source_attributes_and_all():
    # distaff wraps the loader of asyncio.exceptions only: the module must look as it always does.
    out = _run(
        """
        import json, inspect
        import distaff
        import asyncio
        import asyncio.exceptions as ae
        print(json.dumps({
            "attr": asyncio.exceptions is ae,
            "same": asyncio.CancelledError is ae.CancelledError,
            "source": "class CancelledError" in inspect.getsource(ae),
            "file": ae.__file__.endswith("exceptions.py"),
        }))
        """
    )
    assert out == {"attr": True, "same": True, "source": True, "file": True}


def test_an_async_task_in_a_program_that_imported_only_distaff_runs_and_brings_asyncio():
    out = _run(
        """
        import json, sys
        import distaff

        @distaff.task()
        async def a(x):
            return x * 2

        r = a(21)
        import asyncio
        print(json.dumps({"r": r, "loaded": "asyncio" in sys.modules,
                          "sub": issubclass(distaff.CancelledError, asyncio.CancelledError)}))
        """
    )
    assert out == {"r": 42, "loaded": True, "sub": True}


def test_asyncio_imported_by_another_thread_while_distaff_waits_still_makes_cancellations_asyncio_ones():
    out = _run(
        """
        import json, threading
        import distaff

        @distaff.task()
        def slow(ev):
            ev.wait()

        ev = distaff.Event()
        ex = slow.submit(ev)
        done = threading.Event()

        def importer():
            import asyncio
            done.set()

        t = threading.Thread(target=importer)
        t.start()
        ex.cancel()
        done.wait()
        t.join()
        import asyncio
        try:
            ex.result()
            caught = "no"
        except asyncio.CancelledError:
            caught = "asyncio"
        ev.set()
        print(json.dumps({"caught": caught}))
        """
    )
    assert out == {"caught": "asyncio"}


_ASKS_THE_REST = """
class AsksTheRest:  # a finder that, like distaff's, asks the other finders itself (no guard)
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if not name.startswith("asyncio."):
            return None
        for f in list(sys.meta_path):
            if f is not cls and hasattr(f, "find_spec"):
                s = f.find_spec(name, path, target)
                if s is not None:
                    return s
        return None
"""


_HOW_A_CANCEL_IS_CAUGHT = """
def how_a_cancel_is_caught():
    import distaff

    @distaff.task()
    def slow(ev):
        ev.wait()

    ev = distaff.Event()
    ex = slow.submit(ev)
    ex.cancel()
    import asyncio  # (imported here for the first time in some cases: after the cancel)
    try:
        ex.result()
        return "no"
    except asyncio.CancelledError:
        return "asyncio"
    except distaff.CancelledError:
        return "distaff only"
    finally:
        ev.set()
"""


@pytest.mark.parametrize("setup", ["purged_and_imported_again", "other_finder_before", "other_finder_after"])
def test_import_asyncio_works_next_to_other_finders_that_ask_the_rest_of_the_meta_path(setup):
    # Outsider (session 13): with a second finder of this kind — another library's, or distaff's own
    # from a first import purged from sys.modules — `import asyncio` raised RecursionError.
    out = _run(
        "import json, sys\n" + _ASKS_THE_REST + f"""
setup = {setup!r}
if setup == "other_finder_before":
    sys.meta_path.insert(0, AsksTheRest)
import distaff
first_cancelled = distaff.CancelledError
if setup == "purged_and_imported_again":
    for m in [m for m in sys.modules if m == "distaff" or m.startswith("distaff.")]:
        del sys.modules[m]
    import distaff
if setup == "other_finder_after":
    sys.meta_path.insert(0, AsksTheRest)
caught = how_a_cancel_is_caught()
import asyncio
print(json.dumps({{"caught": caught, "first": issubclass(first_cancelled, asyncio.CancelledError),
                  "now": issubclass(distaff.CancelledError, asyncio.CancelledError)}}))
""",
        prelude=_HOW_A_CANCEL_IS_CAUGHT,
    )
    assert out == {"caught": "asyncio", "first": True, "now": True}


def test_asyncio_loaded_past_distaffs_finder_is_caught_up_by_a_synchronous_call_in_a_coroutine():
    # A fixture that restores sys.meta_path, or a hook ahead of distaff's that loads asyncio itself:
    # the finder never sees asyncio load. A synchronous call inside a coroutine must still return
    # the Execution (not block the loop), and cancellations must still be asyncio's.
    out = _run(
        """
        import json, sys
        import distaff

        @distaff.task()
        def sq(x):
            return x * x

        sq(2)  # the default engine exists before asyncio does
        sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__module__", "") != "distaff._aio"]  # restored
        import asyncio

        async def main():
            x = sq(3)
            kind = type(x).__name__
            return kind, await x

        kind, value = asyncio.run(main())
        caught = how_a_cancel_is_caught()
        print(json.dumps({"kind": kind, "value": value, "caught": caught}))
        """,
        prelude=_HOW_A_CANCEL_IS_CAUGHT,
    )
    assert out == {"kind": "Execution", "value": 9, "caught": "asyncio"}


def test_awaiting_an_execution_without_an_asyncio_loop_says_what_is_needed():
    out = _run(
        """
        import json
        import distaff

        @distaff.task()
        def one():
            return 1

        ex = one.submit()
        ex.result()
        try:
            ex.__await__()
            msg = "no error"
        except RuntimeError as e:
            msg = str(e)
        print(json.dumps({"msg": msg}))
        """
    )
    assert out["msg"].startswith("no running asyncio event loop: awaiting execution "), out
    assert "trio.to_thread.run_sync" in out["msg"]


_HOLDS_AN_IMPORT_HALFWAY = """
import importlib.abc, sys, threading

class HoldsHalfway(importlib.abc.MetaPathFinder):
    # Finds `held` with the real finders and runs its code only once `go` is set: meanwhile the
    # module sits in sys.modules half-initialised, as while another thread is importing it.
    def __init__(self, held):
        self.held, self.entered, self.go = held, threading.Event(), threading.Event()

    def find_spec(self, name, path=None, target=None):
        if name != self.held:
            return None
        spec = next(s for f in sys.meta_path if f is not self and hasattr(f, "find_spec")
                    for s in [f.find_spec(name, path, target)] if s is not None)
        real, hold = spec.loader, self

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return real.create_module(spec)

            def exec_module(self, module):
                hold.entered.set()
                hold.go.wait()
                real.exec_module(module)

        spec.loader = Loader()
        return spec
"""


def test_a_lazily_loaded_module_half_imported_by_another_thread_does_not_break_a_cancel():
    # CI, session 13: an async body's first start imported distaff._local_async on one thread while
    # an execution was cancelled at exit on another; the cancel read `Batch` off the half-initialised
    # module and printed an AttributeError as an unretrieved callback failure.
    code = _HOLDS_AN_IMPORT_HALFWAY + """
import json, sys
held = HOLD
for m in [m for m in sys.modules if m == held or m.startswith(held + ".")]:
    del sys.modules[m]
hold = HoldsHalfway(held)
sys.meta_path.insert(0, hold)
import concurrent.futures as cf
import distaff

importer = threading.Thread(target=__import__, args=(held,), daemon=True)
importer.start()
hold.entered.wait()

class Pool(cf.Executor):  # a plain executor: distaff's generic runner, which cancels by future
    def __init__(self):
        self.futures = []
    def submit(self, fn, *a, **k):
        f = cf.Future()
        f.set_running_or_notify_cancel()
        self.futures.append(f)
        return f

pool = Pool()

@distaff.task(executor=pool)
def body():
    pass

ex = body.submit()
while not pool.futures:  # (the generic runner hands the body over from a worker)
    threading.Event().wait(0.001)
ex.cancel()
try:
    ex.result(timeout=10)
    outcome = "done"
except distaff.CancelledError:
    outcome = "cancelled"
except TimeoutError:
    outcome = "never settled"
half = getattr(sys.modules[held].__spec__, "_initializing", None)
hold.go.set()
importer.join()
print(json.dumps({"outcome": outcome, "half_imported_meanwhile": half}))
""".replace("HOLD", repr("distaff._local_async"))
    r = run_python(code, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"outcome": "cancelled", "half_imported_meanwhile": True}
