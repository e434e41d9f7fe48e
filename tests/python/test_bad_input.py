"""Bad input sweep (issue 4): hostile or odd callables, bodies and options.

Every case states its outcome in its docstring: it works (and how), or it fails with which clear
error, and where (decoration, submit, or the body's result). Known bugs are strict xfails.
"""

import asyncio
import functools
import math

import pytest

import distaff


# -- odd callables: they work --------------------------------------------------------------------------


def test_lambda(engine):
    """Works; the task is named '<lambda>' (or its enclosing qualname) in descriptions."""
    t = engine.task(lambda x, y=1: x + y)
    ex = t.submit(1, y=2)
    assert ex.result(timeout=30) == 3
    assert ex.name.endswith("<lambda>")
    with pytest.raises(TypeError):  # its signature is still checked at submit
        t.submit()


def test_bound_method(engine):
    """Works: an already-bound method keeps its instance; the name is Class.method."""

    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, k):
            self.n += k
            return self.n

    c = Counter()
    t = engine.task(c.add)
    assert t(2) == 2 and t(3) == 5 and c.n == 5
    assert t.name.endswith("Counter.add")
    with pytest.raises(TypeError):  # `self` is not part of the checked signature
        t.submit(1, 2)


def test_task_decorated_method_binds_self(engine):
    """Works: @task on a method in a class body binds the instance on access (obj.m.submit())."""

    class Service:
        factor = 10

        @engine.task()
        def scale(self, x):
            return self.factor * x

    assert Service().scale(2) == 20
    assert Service().scale.submit(3).result(timeout=30) == 30


def test_staticmethod_wrapping_a_task(engine):
    """Works: @staticmethod above @task (the task is a plain function to the class)."""

    class Maths:
        @staticmethod
        @engine.task()
        def double(x):
            return 2 * x

    assert Maths.double(4) == 8 and Maths().double(5) == 10


def test_task_wrapping_a_staticmethod(engine):
    """Works: @task above @staticmethod unwraps it; an instance is never bound."""

    class Maths:
        @engine.task()
        @staticmethod
        def double(x):
            return 2 * x

    assert Maths.double(4) == 8
    assert Maths().double(5) == 10
    assert Maths().double.submit(6).result(timeout=30) == 12


def test_classmethod_wrapping_a_task(engine):
    """Works: @classmethod above @task passes the class as the first argument."""

    class Config:
        scale = 3

        @classmethod
        @engine.task()
        def scaled(cls, x):
            return cls.scale * x

    assert Config.scaled(2) == 6 and Config().scaled(3) == 9


def test_task_wrapping_a_classmethod_is_rejected():
    """Rejected at decoration: a classmethod object is not callable (TypeError naming it)."""
    with pytest.raises(TypeError, match="callable, not classmethod"):

        class Config:
            @distaff.task()
            @classmethod
            def scaled(cls, x):
                return x


def test_callable_instance(engine):
    """Works: an instance with __call__ runs its __call__; it keeps its state."""

    class Multiplier:
        def __init__(self, k):
            self.k = k
            self.calls = 0

        def __call__(self, x):
            self.calls += 1
            return self.k * x

    m = Multiplier(7)
    t = engine.task(m)
    assert t(6) == 42 and m.calls == 1
    assert t.name.endswith("Multiplier")  # an instance has no __qualname__: its class's


def test_functools_partial(engine):
    """Works: the bound arguments are applied; the remaining signature is checked at submit. The
    task is named 'partial' (a partial has no __qualname__): pass name= for a better one."""
    t = engine.task(functools.partial(pow, 2))
    assert t(10) == 1024 and t.name == "partial"
    named = engine.task(name="power_of_two")(functools.partial(pow, 2))
    assert named.submit(3).description["name"] == "power_of_two"

    def add(a, b, *, c=0):
        return a + b + c

    p = engine.task(functools.partial(add, 1, c=3))
    assert p(2) == 6
    with pytest.raises(TypeError):
        p.submit(2, 3)  # checked at submit: one positional argument is left


def test_builtins(engine, capsys):
    """Works: builtins with a signature are checked at submit (len); those without one (print on
    3.11) are checked when the body calls them, so a bad call fails in result()."""
    t_len = engine.task(len)
    assert t_len([1, 2, 3]) == 3
    with pytest.raises(TypeError):
        t_len.submit()
    t_print = engine.task(print)
    assert t_print("from a fiber") is None
    assert "from a fiber" in capsys.readouterr().out
    t_max = engine.task(max)
    with pytest.raises((TypeError, ValueError)):
        t_max()


def test_a_class_as_a_task(engine):
    """Works: calling the task constructs an instance in a fiber; __init__'s signature is checked."""

    class Point:
        def __init__(self, x, y=0):
            self.x, self.y = x, y

    t = engine.task(Point)
    p = t(1, y=2)
    assert isinstance(p, Point) and (p.x, p.y) == (1, 2)
    assert t.name.endswith("Point")
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'x'"):
        t.submit()


def test_generator_functions_are_rejected_at_decoration():
    """Rejected at decoration with TypeError: an execution has one result, a generator many."""

    def gen():
        yield 1

    async def agen():
        yield 1

    for fn in (gen, agen):
        with pytest.raises(TypeError, match="generator function"):
            distaff.task(fn)


def test_partial_of_a_generator_function_is_rejected_with_type_error():
    def gen(n):
        yield n

    with pytest.raises(TypeError, match="generator"):
        distaff.task(functools.partial(gen, 1))


def test_callable_instance_whose_call_is_a_generator(engine):
    """Accepted (the instance is not a generator *function*): the result is the generator object,
    unstarted; iterating it later runs its frame in the caller's thread."""

    class Items:
        def __call__(self, n):
            yield from range(n)

    g = engine.task(Items())(3)
    assert list(g) == [0, 1, 2]


def test_sync_body_returning_a_coroutine(engine):
    """A coroutine object returned by a sync body is awaited as an async body would be (on the
    engine's loop): the result is the coroutine's, as for engine.submit of the same callable
    (test_callbacks_and_async_callables.py). It used to be handed out un-run."""

    async def work():
        return 5

    t = engine.task(lambda: work())
    assert t() == 5
    assert engine.submit(lambda: work()).result(timeout=10) == 5


def test_body_returning_its_own_execution_is_a_deadlock_error(engine):
    """Returning an Execution means "my result is its result"; returning your own one would wait
    forever, so it fails at once with distaff.DeadlockError."""

    @engine.task()
    def me():
        return distaff.current_execution()

    with pytest.raises(distaff.DeadlockError, match="itself"):
        me.submit().result(timeout=30)


def test_decorating_non_callables_and_tasks():
    """Rejected at decoration: non-callables (TypeError 'callable'), a task twice (TypeError)."""
    for bad in (1, "x", None, object(), staticmethod):
        if callable(bad):
            continue
        with pytest.raises(TypeError, match="callable"):
            distaff.task(bad)
    t = distaff.task(lambda: 1)
    with pytest.raises(TypeError, match="already"):
        distaff.task(t)


# -- bodies that misbehave -------------------------------------------------------------------------------


def test_recursion_limit_in_a_body(engine):
    """RecursionError reaches the caller with its type; the fiber, worker and engine are fine."""

    @engine.task()
    def deep(n):
        return deep.fn(n + 1)

    with pytest.raises(RecursionError):
        deep(0)
    assert engine.task(lambda: "still fine")() == "still fine"


def test_c_level_recursion_in_a_body(engine):
    """Recursion through C (__repr__ calling repr) on a fiber's own stack also ends as RecursionError,
    not a crash, at the default stack size; so does repr() of a very deeply nested list."""

    class Loop:
        def __repr__(self):
            return "L" + repr(self)

    @engine.task()
    def repr_loop():
        return repr(Loop())

    @engine.task()
    def nested():
        x = []
        for _ in range(100_000):
            x = [x]
        return repr(x)

    with pytest.raises(RecursionError):
        repr_loop()
    with pytest.raises(RecursionError):
        nested()
    assert engine.task(lambda: "still fine")() == "still fine"


@pytest.mark.parametrize(
    "exc",
    [SystemExit(3), KeyboardInterrupt(), GeneratorExit(), type("CustomBase", (BaseException,), {})("x")],
    ids=["SystemExit", "KeyboardInterrupt", "GeneratorExit", "custom-BaseException"],
)
@pytest.mark.holds_executions  # the parametrized instances outlive the test, with their tracebacks
def test_base_exception_from_a_body_is_stored_and_reraised(engine, exc):
    """BaseException subclasses are an ordinary outcome of the execution: stored (state 'failed'),
    re-raised by result() with their type (and SystemExit's code), returned by exception(); they
    never escape into the worker, so the engine keeps working."""

    @engine.task()
    def raises():
        raise exc

    ex = raises.submit()
    with pytest.raises(type(exc)) as info:
        ex.result(timeout=30)
    assert info.value is exc
    assert ex.state == "failed" and ex.exception() is exc
    if isinstance(exc, SystemExit):
        assert info.value.code == 3
    assert engine.task(lambda: "still fine")() == "still fine"


def test_base_exception_from_a_dependency_fails_the_dependent(engine):
    """A dependency that raised SystemExit fails its wait= dependent with DependencyError (cause:
    the SystemExit); the dependent never runs."""
    ran = []

    @engine.task()
    def exits():
        raise SystemExit(2)

    @engine.task(wait=True)
    def dependent(d):
        ran.append(1)

    with pytest.raises(distaff.DependencyError) as info:
        dependent(exits.submit())
    assert isinstance(info.value.__cause__, SystemExit) and ran == []


def test_stop_iteration_from_a_body_reaches_result(engine):
    """StopIteration is stored and re-raised by result() like any exception."""

    @engine.task()
    def stops():
        raise StopIteration("done early")

    with pytest.raises(StopIteration, match="done early"):
        stops()


def test_awaiting_an_execution_that_raised_stop_iteration(engine):
    """await raises RuntimeError (caused by the StopIteration: asyncio futures cannot carry one); the
    other executions delivered in the same batch still reach their awaiters."""

    @engine.task()
    def stops():
        raise StopIteration("done early")

    @engine.task()
    def fine():
        return "fine"

    async def main():
        a, b = stops.submit(), fine.submit()
        results = await asyncio.wait_for(asyncio.gather(a, b, return_exceptions=True), 5)
        return results

    a_result, b_result = asyncio.run(main())
    assert isinstance(a_result, (StopIteration, RuntimeError)) and b_result == "fine"


def test_an_exception_that_refuses_notes(engine):
    """distaff adds a note naming the task to a body's exception; if the exception refuses notes
    (a non-list __notes__) the note is skipped and the exception itself is re-raised unchanged."""

    class Stubborn(Exception):
        pass

    @engine.task()
    def raises():
        e = Stubborn("original")
        e.__notes__ = ("a tuple, not a list",)
        raise e

    with pytest.raises(Stubborn, match="original") as info:
        raises()
    assert info.value.__notes__ == ("a tuple, not a list",)


# -- results and errors that are hostile to inspection -------------------------------------------------------


class Hostile:
    """Every comparison, hash, truth test and repr raises."""

    def __eq__(self, other):
        raise RuntimeError("__eq__")

    def __hash__(self):
        raise RuntimeError("__hash__")

    def __repr__(self):
        raise RuntimeError("__repr__")

    def __bool__(self):
        raise RuntimeError("__bool__")


def test_hostile_result_is_stored_and_returned_as_is(engine):
    """A result is kept by reference, never compared, hashed or printed: result() returns the very
    object; repr(ex), description and graph() work; it flows through wait=, resolve= and gather()."""
    made = []

    @engine.task()
    def hostile():
        h = Hostile()
        made.append(h)
        return h

    ex = hostile.submit()
    assert ex.result(timeout=30) is made[0]
    assert repr(ex).startswith("<Execution") and ex.description["state"] == "succeeded"
    assert any(n["id"] == ex.id for n in engine.graph()["nodes"])

    @engine.task(resolve=True)
    def takes(value, items):
        return type(value).__name__, type(items[0]).__name__

    assert takes(hostile.submit(), [hostile.submit()]) == ("Hostile", "Hostile")
    assert type(distaff.gather(hostile.submit(), hostile.submit()).result(timeout=30)[1]) is Hostile
    assert engine.task(lambda h: "took it")(Hostile()) == "took it"  # as an argument, too


def test_hostile_exception_str_when_logged_unobserved(engine, caplog):
    """An exception whose __str__ raises is logged as '<exception str() failed>' when nobody
    retrieved it; the logging does not raise."""
    import logging

    class BadStr(Exception):
        def __str__(self):
            raise RuntimeError("str broke")

    @engine.task()
    def fails():
        raise BadStr()

    from conftest import wait_for_log

    with caplog.at_level(logging.ERROR, logger="distaff"):
        fails.submit()
        assert wait_for_log(caplog, "nobody retrieved its error")


class BadRepr(Exception):
    def __repr__(self):
        raise RuntimeError("repr broke")

    def __str__(self):
        raise RuntimeError("str broke")


def test_retries_with_an_exception_whose_repr_raises(engine):
    """Retried like any error; the attempt record says '<BadRepr (repr failed)>'; result() re-raises it."""

    calls = []

    @engine.task(retries=2)
    def fails():
        calls.append(1)
        raise BadRepr()

    with pytest.raises(BadRepr):
        fails()
    assert len(calls) == 3


def test_dependency_failing_with_an_exception_whose_repr_raises(engine):
    """The dependent fails with DependencyError naming the error's type instead of its repr."""

    @engine.task()
    def fails():
        raise BadRepr()

    @engine.task(wait=True)
    def dependent(d):
        return "never"

    with pytest.raises(distaff.DependencyError):
        dependent(fails.submit())


# -- bad options: a clear exception at decoration or submit ------------------------------------------------


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"retries": -1}, ValueError, "retries"),
        ({"retries": 1.5}, TypeError, "retries"),
        ({"retries": True}, TypeError, "retries"),
        ({"retry_delay": -0.1}, ValueError, "retry_delay"),
        ({"retry_delay": "1"}, TypeError, "retry_delay"),
        ({"retry_delay": float("inf")}, ValueError, "retry_delay"),
        ({"backoff": float("inf")}, ValueError, "backoff"),
        ({"backoff": True}, TypeError, "backoff"),
        ({"max_delay": "5"}, TypeError, "max_delay"),
        ({"max_delay": float("nan")}, ValueError, "max_delay"),
        ({"backoff": -2}, ValueError, "backoff"),
        ({"max_delay": -1}, ValueError, "max_delay"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": "5"}, TypeError, "timeout"),
        ({"timeout": True}, TypeError, "timeout"),
        ({"timeout": -(10**400)}, ValueError, "timeout"),
        ({"retry_on": int}, TypeError, "retry_on"),
        ({"retry_on": "ValueError"}, TypeError, "retry_on"),
        ({"retry_on": [ValueError]}, TypeError, "retry_on"),
        ({"retry_on": (ValueError, 3)}, TypeError, "retry_on"),
        ({"fallback": 3}, TypeError, "fallback"),
        ({"fallback": "handler"}, TypeError, "fallback"),
        ({"name": ""}, ValueError, "name"),
        ({"name": 5}, TypeError, "name"),
        ({"name": "a\x00b"}, ValueError, "NUL"),
        ({"name": "\ud800"}, ValueError, "UTF-8"),
        ({"wait": 5}, TypeError, "wait"),
        ({"wait": "nope"}, ValueError, "nope"),
        ({"resolve": "yes"}, TypeError, "resolve"),
        ({"retry": 3}, TypeError, "retry"),  # a misspelt option is an unexpected keyword
    ],
    ids=lambda v: repr(v) if not isinstance(v, dict) else ",".join(f"{k}={v[k]!r}" for k in v),
)
def test_bad_decorator_options(options, error, match):
    """Each is rejected at decoration with the named error, naming the option: at `task(...)`
    itself, before it is applied to a function, unless the check needs the function (wait=
    names its parameters, fallback= must accept its arguments)."""

    def f(x=None):
        return x

    if set(options) & {"wait", "fallback"}:
        with pytest.raises(error, match=match):
            distaff.task(**options)(f)
    else:
        with pytest.raises(error, match=match):
            distaff.task(**options)
        with pytest.raises(error, match=match):
            distaff.task(f, **options)


@pytest.mark.parametrize(
    "make",
    [
        lambda f: distaff.task(f, retry=1),
        lambda f: distaff.task(retry=1),
        lambda f: distaff.workflow(max_retries=2),
        lambda f: distaff.Engine(workers=1).task(retry=1),
    ],
    ids=["task(f, retry=)", "task(retry=)", "workflow(max_retries=)", "engine.task(retry=)"],
)
def test_a_misspelt_option_names_the_decorator_and_the_option_meant(make):
    """Not `Task.__init__() got an unexpected keyword argument`: the public decorator, the option
    as written and the one meant."""

    def f(x=None):
        return x

    with pytest.raises(TypeError) as info:
        make(f)
    msg = str(info.value)
    assert "__init__" not in msg and "did you mean 'retries'?" in msg and "@" in msg, msg


@pytest.mark.parametrize(
    "options",
    [{"retry_delay": float("nan")}, {"backoff": float("nan")}],
    ids=["retry_delay=nan", "backoff=nan"],
)
def test_nan_retry_delay_or_backoff_is_rejected_at_decoration(options):
    """Rejected at decoration with ValueError (NaN is not a non-negative number)."""

    def f():
        pass

    with pytest.raises(ValueError):
        distaff.task(retries=1, **options)(f)


def test_accepted_edge_values(engine):
    """Accepted: timeout=inf (no deadline), retries=0 with a fallback, retry_delay=0, a huge
    retries count (only the attempts made cost anything), max_delay=0 (retry at once)."""

    @engine.task(timeout=math.inf)
    def no_deadline():
        return "ok"

    assert no_deadline() == "ok"

    @engine.task(retries=10**9, retry_delay=0, max_delay=0)
    def third_time_lucky(state=[]):  # noqa: B006 - shared on purpose
        state.append(1)
        if len(state) < 3:
            raise OSError
        return len(state)

    assert third_time_lucky() == 3


@pytest.mark.parametrize(
    "options, error",
    [
        ({"timeout": 0}, ValueError),
        ({"timeout": -5}, ValueError),
        ({"timeout": "soon"}, TypeError),
        ({"timeout": True}, TypeError),
        ({"timeout": float("nan")}, ValueError),
        ({"workflow_id": 5}, TypeError),
        ({"workflow_id": ""}, ValueError),
        ({"detached": "yes"}, TypeError),
        ({"detached": 1}, TypeError),
        ({"retries": 3}, TypeError),  # not a per-call option
    ],
    ids=lambda v: ",".join(f"{k}={v[k]!r}" for k in v) if isinstance(v, dict) else v.__name__,
)
def test_bad_per_call_options(options, error):
    """Each is rejected by .options(...) itself, before anything is submitted."""
    t = distaff.task(lambda: 1)
    with pytest.raises(error):
        t.options(**options)


def test_bad_workflow_id_at_submit(engine):
    """workflow_id= must be a non-empty string wherever it is given — a call, a scope, .options:
    TypeError for a non-string, ValueError for '' (it used to be accepted at submit); nothing is
    submitted."""
    t = engine.task(lambda: 1)
    with pytest.raises(TypeError, match="workflow_id must be a string"):
        t.submit(workflow_id=5)
    with pytest.raises(TypeError):
        engine.workflow_scope(workflow_id=5)
    for bad_call in (lambda: t.submit(workflow_id=""), lambda: t(workflow_id=""),
                     lambda: engine.workflow_scope(""), lambda: t.options(workflow_id="")):
        with pytest.raises(ValueError, match="workflow_id must not be empty"):
            bad_call()
    assert engine.stats()["submitted"] == 0


def test_bad_arguments_to_waits_and_sleep(engine):
    """result()/exception() timeouts must be numbers (TypeError) and not NaN (ValueError);
    distaff.sleep() in a body needs a non-negative number; add_done_callback needs a callable."""
    ex = engine.submit(lambda: 1)
    with pytest.raises(TypeError):
        ex.result(timeout="1")
    with pytest.raises(ValueError):
        ex.result(timeout=float("nan"))
    with pytest.raises(TypeError):
        ex.add_done_callback(42)

    @engine.task()
    def sleeps(t):
        distaff.sleep(t)

    with pytest.raises(ValueError, match="non-negative"):
        sleeps(-1)
    with pytest.raises(TypeError):
        sleeps("a while")
    assert ex.result() == 1


# -- numbers of seconds: one check everywhere (issue 9, item 18) ------------------------------------


class _Seconds:
    """A number-like with __float__ only (Decimal, NumPy scalars): accepted as seconds."""

    def __init__(self, v):
        self.v = v

    def __float__(self):
        return float(self.v)


def _wait_entry_points(engine):
    """Every call that takes a wait timeout, as (label, call(timeout)). Each waits on a finished
    execution or an idle engine, so a valid timeout returns at once."""
    done = engine.submit(lambda: 1)
    done.result()
    return [
        ("result", lambda t: done.result(timeout=t)),
        ("exception", lambda t: done.exception(timeout=t)),
        ("wait", lambda t: distaff.wait([done], timeout=t)),
        ("as_completed", lambda t: list(distaff.as_completed([done], timeout=t))),
        ("wait_idle", lambda t: engine.wait_idle(timeout=t)),
    ]


@pytest.mark.parametrize(
    "bad, error",
    [(True, TypeError), (False, TypeError), ("1", TypeError), (1j, TypeError), ([1], TypeError),
     (float("nan"), ValueError)],
    ids=["True", "False", "str", "complex", "list", "nan"],
)
def test_bad_wait_timeouts_fail_the_same_way_everywhere(engine, bad, error):
    """result/exception/wait/as_completed/wait_idle: a bool or a non-number is a TypeError (True
    was 1 s), NaN a ValueError (as_completed raised TimeoutError), naming the timeout."""
    for label, call in _wait_entry_points(engine):
        with pytest.raises(error, match="timeout") as info:
            call(bad)
        assert type(info.value) is error, label


@pytest.mark.parametrize(
    "value", [10**400, float("inf"), 1e300, -1, -(10**400), 0, 2.5, _Seconds(1)],
    ids=["10**400", "inf", "1e300", "-1", "-10**400", "0", "2.5", "__float__"],
)
def test_accepted_wait_timeouts_behave_the_same_everywhere(engine, value):
    """Huge (10**400 was "must be a number") and infinite timeouts mean no limit; negative ones
    are an expired wait (as in concurrent.futures); objects with __float__ count as numbers."""
    for label, call in _wait_entry_points(engine):
        call(value)  # the execution is done / the engine idle: returns at once


def test_bad_sleep_lengths_inside_and_outside_bodies(engine):
    """distaff.sleep: the same check in a body and outside (outside it is time.sleep)."""

    @engine.task()
    def sleeps(t):
        distaff.sleep(t)

    for bad, error in ((True, TypeError), ("1", TypeError), (float("nan"), ValueError), (-1, ValueError),
                       (-(10**400), ValueError)):
        with pytest.raises(error, match="sleep length"):
            distaff.sleep(bad)
        with pytest.raises(error, match="sleep length"):
            sleeps(bad)
    sleeps(_Seconds(0))
    distaff.sleep(_Seconds(0))


def test_a_huge_backoff_retries_with_the_capped_delay_instead_of_overflowing(engine):
    """backoff=1e308: retry_delay * backoff**n overflows a float; the delay is then infinite and
    max_delay caps it (it used to turn the body's error into OverflowError)."""
    calls = []

    @engine.task(retries=3, retry_delay=0.001, backoff=1e308, max_delay=0.001)
    def flaky():
        calls.append(1)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError, match="down"):
        flaky()
    assert len(calls) == 4
    policy = distaff.RetryPolicy.make(3, 1.0, 1e308, None, False, (Exception,), None)
    assert policy.delay(0) == 1.0 and policy.delay(5) == math.inf


def test_a_name_with_a_nul_is_rejected_not_cut_short(engine):
    """name='a\x00b' displayed as 'a': rejected at decoration, and by engine.submit for a callable
    whose __qualname__ carries one."""
    with pytest.raises(ValueError, match="NUL"):
        engine.task(name="a\x00b")(lambda: 1)

    def f():
        return 1

    f.__qualname__ = "a\x00b"
    with pytest.raises(ValueError, match="NUL"):
        engine.submit(f)
    with pytest.raises(ValueError, match="NUL"):
        engine.task(f)
    assert engine.task(name="été ☃")(f).submit().name == "été ☃"


def test_engine_options_type_and_value_errors():
    with pytest.raises(TypeError, match="stack_size"):
        distaff.Engine(stack_size="1M")
    with pytest.raises(ValueError, match="stack_size"):
        distaff.Engine(stack_size=1024)
    with pytest.raises(TypeError, match="history"):
        distaff.Engine(history=1.5)
    with pytest.raises(ValueError, match="history"):
        distaff.Engine(history=-1)


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"])
def test_workflow_ids_with_nul_or_lone_surrogates_are_rejected(bad):
    with pytest.raises(ValueError, match="workflow_id"):
        distaff.task()(lambda: None).options(workflow_id=bad)


def test_engine_sizes_out_of_range_name_the_right_option():
    with pytest.raises(ValueError, match="workers must be between 1 and 1024"):
        distaff.Engine(workers=10**6)
    with pytest.raises(ValueError, match="history"):
        distaff.Engine(history=10**20)
