"""@task / @workflow: decoration, options, signatures, bad input at the earliest point."""

import functools
import inspect

import pytest

import distaff
from distaff import task, workflow
from conftest import run_python


def test_bare_and_called_decorators_keep_name_doc_and_signature(engine):
    @engine.task
    def bare(a, b=2):
        """Adds."""
        return a + b

    @engine.workflow(name="custom")
    def called(x):
        return x

    assert bare.__name__ == "bare" and bare.__doc__ == "Adds."
    assert str(inspect.signature(bare)) == "(a, b=2)"
    assert bare(1) == 3 and bare.fn(1, 5) == 6
    assert called.name == "custom" and called.kind == "workflow"
    assert called.submit(4).description["kind"] == "workflow"
    assert called.submit(4).description["name"] == "custom"


def test_module_level_decorators_use_the_default_engine():
    @task
    def double(x):
        return 2 * x

    @workflow()
    def wf(x):
        return double(x) + 1

    assert wf(5) == 11
    assert double.submit(3).result() == 6


def test_calling_equals_submit_then_result(engine):
    @engine.task()
    def f(x):
        return x * 10

    assert f(4) == f.submit(4).result() == 40


def test_plain_function_stays_unit_testable(engine):
    calls = []

    @engine.task()
    def f(x):
        calls.append(x)
        return x

    assert f.fn(7) == 7 and calls == [7]


@pytest.mark.parametrize("bad", [1, "name", None, object()])
def test_decorating_a_non_callable_is_a_type_error(bad):
    with pytest.raises(TypeError, match="callable"):
        task(bad)


def test_wait_names_must_be_parameters():
    with pytest.raises(ValueError, match="'nope'"):
        @task(wait="a, nope")
        def f(a, b):
            pass

    with pytest.raises(ValueError, match="'zzz'"):
        @task(wait=["zzz"])
        def g(a):
            pass

    with pytest.raises(TypeError):
        @task(wait=5)
        def h(a):
            pass


def test_wait_accepts_true_iterable_and_comma_string():
    @task(wait=True)
    def a(x):
        pass

    @task(wait=("x",))
    def b(x, y):
        pass

    @task(wait="x, y")
    def c(x, y):
        pass

    assert a._wait is True and b._wait == ("x",) and c._wait == ("x", "y")


def test_bad_arguments_fail_in_the_caller_at_submit(engine):
    ran = []

    @engine.task()
    def f(a, b, *, c=1):
        ran.append(1)

    with pytest.raises(TypeError, match=r"f\(\) missing 1 required positional argument: 'b'"):
        f.submit(1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'd'"):
        f.submit(1, 2, d=3)
    with pytest.raises(TypeError, match="takes 2 positional arguments but 3"):
        f(1, 2, 3)
    assert engine.stats()["submitted"] == 0 and ran == []


def test_generator_functions_are_rejected():
    with pytest.raises(TypeError, match="generator"):
        @task()
        def gen():
            yield 1


def test_decorating_a_task_twice_is_rejected():
    @task()
    def f():
        pass

    with pytest.raises(TypeError, match="already"):
        task(f)


def test_options_must_be_keywords():
    def f():
        pass

    with pytest.raises(TypeError):
        task(f, "name")  # noqa


def test_a_function_and_its_options_in_one_call(engine):
    # task(f, **options) is task(**options)(f): wrapping a function you did not write. (It was
    # refused with a message about keywords, though the options were keywords.)
    t = engine.task(abs, name="absolute", retries=1)
    assert t.name == "absolute" and t(-3) == 3
    w = engine.task(lambda x: x * 2, resolve=True)
    assert w(w.submit(2)) == 8
    with pytest.raises(TypeError, match="retries"):
        task(abs, retries="x")


@pytest.mark.parametrize(
    "make",
    [
        lambda: (lambda x: x + 1),
        lambda: functools.partial(lambda a, b: a + b, 1),
        lambda: type("Callable", (), {"__call__": lambda self, x: x + 1})(),
    ],
    ids=["lambda", "partial", "callable-object"],
)
def test_odd_callables_work(engine, make):
    t = engine.task(make())
    assert t(1) == 2


def test_methods_bind_self(engine):
    class Service:
        def __init__(self, k):
            self.k = k

        @engine.task()
        def scale(self, x):
            return self.k * x

    s = Service(3)
    assert s.scale(2) == 6
    assert s.scale.submit(5).result() == 15


def test_engine_submit_runs_plain_callables(engine):
    assert engine.submit(pow, 2, 10).result() == 1024
    assert engine.submit(lambda *, k: k, k=4).result() == 4
    with pytest.raises(TypeError):
        engine.submit(42)


def test_engine_arguments_are_validated():
    with pytest.raises(ValueError):
        distaff.Engine(workers=0)
    with pytest.raises(TypeError):
        distaff.Engine(workers="2")
    with pytest.raises(ValueError):
        distaff.Engine(stack_size=1024)


# -- the C fast path of submit (cpp/bindings/submit.cpp) -------------------------------------------


@pytest.mark.parametrize(
    "call, ok",
    [
        ((), False),  # missing a
        ((1,), True),
        ((1, 2), True),
        ((1, 2, 3), False),  # too many
    ],
)
def test_fast_submit_checks_positional_counts(engine, call, ok):
    @engine.task()
    def f(a, b=2):
        return a + b

    if ok:
        assert f.submit(*call).result(timeout=30) == sum(call) + (2 if len(call) == 1 else 0)
    else:
        with pytest.raises(TypeError, match=r"f\(\)"):
            f.submit(*call)


def test_fast_submit_accepts_any_count_with_star_args_and_checks_keywords(engine):
    @engine.task()
    def f(a, *rest, k=0):
        return a + sum(rest) + k

    assert f.submit(1, 2, 3, 4).result(timeout=30) == 10
    assert f.submit(1, k=5).result(timeout=30) == 6
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        f.submit(1, nope=2)
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'a'"):
        f.submit()


def test_fast_submit_checks_required_keyword_only_parameters(engine):
    @engine.task()
    def f(a, *, k):
        return a * k

    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'k'"):
        f.submit(1)
    assert f.submit(2, k=3).result(timeout=30) == 6


def test_fast_submit_is_a_c_callable_with_the_general_docstring(engine):
    @engine.task()
    def f():
        pass

    assert type(f.submit).__name__ == "Submitter"
    assert "Submits a call" in f.submit.__doc__
    assert f.options(timeout=10).submit.__func__ is type(f)._submit_general  # options: general path


def test_a_task_with_its_fast_submit_is_garbage_collected(engine):
    import gc
    import weakref

    @engine.task()
    def f():
        pass

    ref = weakref.ref(f)
    del f
    gc.collect()
    assert ref() is None


def test_module_level_tasks_follow_the_default_engine_through_shutdowns_and_use_engine():
    """A module-level task's C submit goes straight to the default engine distaff._engine published
    (no Python call per submit); it follows each new default engine — after distaff.shutdown(),
    after the default engine's own shutdown() — and use_engine() routing."""
    proc = run_python(
        """
        import distaff

        @distaff.task
        def double(x):
            return 2 * x

        def submitted(e):
            return e.stats()["submitted"]

        assert double(1) == 2
        e1 = distaff.default_engine()
        assert submitted(e1) == 1
        distaff.shutdown()
        assert double(2) == 4
        e2 = distaff.default_engine()
        assert e2 is not e1 and submitted(e2) == 1
        e2.shutdown()  # the engine itself, not distaff.shutdown()
        assert double(3) == 6
        e3 = distaff.default_engine()
        assert e3 is not e2 and submitted(e3) == 1 and submitted(e2) == 1
        other = distaff.Engine()
        with distaff.use_engine(other):
            assert double(4) == 8
        assert submitted(other) == 1 and submitted(e3) == 1
        assert double(5) == 10
        assert submitted(e3) == 2 and submitted(other) == 1
        other.shutdown()
        print("ok")
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_tasks_with_the_same_parameters_each_check_calls_under_their_own_name(engine):
    # The argument checkers are compiled once per parameter list and shared (decoration cost,
    # bench W7b cold): each task still names itself in the TypeError, defaults stay its own.
    def make(name):
        def f(a, b=2, *rest, k, opt=None, **kw):
            return a

        f.__name__ = f.__qualname__ = name
        return engine.task(f)

    first, second = make("first"), make("second")
    assert first.submit(1, k=0).result() == 1
    with pytest.raises(TypeError, match=r"^first\(\) missing 1 required keyword-only argument: 'k'"):
        first.submit(1)
    with pytest.raises(TypeError, match=r"^second\(\) missing 1 required positional argument: 'a'"):
        second.submit(k=1)
    with pytest.raises(TypeError, match=r"^second\(\) got an unexpected keyword argument 'a'|^second\(\) got multiple"):
        second.submit(1, a=2, k=3)
    assert second.submit(5, 6, 7, k=8, opt=9, extra=10).result() == 5


def test_checkers_of_parameter_lists_differing_only_in_kind_or_default_are_not_shared(engine):
    # The checker templates are keyed by each parameter's name, kind and whether it has a
    # default (not by the rendered signature): lists differing in one of those get their own.
    def pos_or_kw(a, b):
        return (a, b)

    def pos_only(a, /, b):
        return (a, b)

    def kw_only(a, *, b):
        return (a, b)

    def with_default(a, b=1):
        return (a, b)

    tasks = [engine.task(f) for f in (pos_or_kw, pos_only, kw_only, with_default)]
    t_pk, t_po, t_ko, t_d = tasks
    assert t_pk.submit(a=1, b=2).result() == (1, 2)
    with pytest.raises(TypeError, match=r"pos_only\(\) got some positional-only arguments passed as keyword"):
        t_po.submit(a=1, b=2)
    assert t_po.submit(1, b=2).result() == (1, 2)
    with pytest.raises(TypeError, match=r"kw_only\(\) takes 1 positional argument but 2 were given"):
        t_ko.submit(1, 2)
    assert t_ko.submit(1, b=2).result() == (1, 2)
    with pytest.raises(TypeError, match=r"pos_or_kw\(\) missing 1 required positional argument: 'b'"):
        t_pk.submit(1)
    assert t_d.submit(1).result() == (1, 1)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"retries": -1}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"concurrency": 0}, "concurrency"),
        ({"executor": object()}, "executor"),
        ({"resolve": "yes"}, "resolve"),
    ],
)
def test_decorator_options_are_checked_before_a_function_is_given(engine, options, message):
    # task(**options) checks every value that does not depend on the function at once (a trial
    # of the options alone, which skips the function-dependent work since W7b's cold cut).
    with pytest.raises((TypeError, ValueError), match=message):
        engine.task(**options)
