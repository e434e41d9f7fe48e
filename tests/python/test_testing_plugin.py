"""Issue 10: the pytest plugin shipped with distaff (entry point pytest11, fixture distaff_engine).

Each case runs a small test file in a fresh pytest subprocess (pytester), with a deadline."""

import os
import sys
import textwrap

pytest_plugins = ["pytester"]

TIMEOUT = 120


def _run(pytester, source, *args):
    pytester.makepyfile(test_user=textwrap.dedent(source))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=TIMEOUT)


def test_the_plugin_is_registered_by_entry_point():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="pytest11") if ep.name == "distaff"]
    assert [ep.value for ep in eps] == ["distaff_pytest"]


def test_fixture_routes_module_level_tasks_and_passes_clean_tests(pytester):
    result = _run(
        pytester,
        """
        import distaff

        @distaff.task
        def inc(x):
            return x + 1

        @distaff.workflow
        def flow(xs):
            return distaff.gather(*inc.map(xs)).result()

        def test_flow(distaff_engine):
            before = distaff_engine.stats()["submitted"]
            assert flow([1, 2, 3]) == [2, 3, 4]
            assert distaff_engine.stats()["submitted"] - before == 4  # nested calls routed too
            assert distaff.default_engine() is distaff_engine

        def test_failure_that_was_observed(distaff_engine):
            @distaff.task
            def bad():
                raise ValueError("seen")
            ex = bad.submit()
            assert isinstance(ex.exception(), ValueError)

        def test_engine_options(distaff_engine):
            assert distaff_engine.workers == 1

        import pytest

        @pytest.mark.distaff_engine(workers=2)
        def test_engine_options_by_marker(distaff_engine):
            assert distaff_engine.workers == 2

        def test_each_test_gets_a_fresh_engine(distaff_engine):
            assert distaff_engine.stats()["submitted"] == 0
        """,
        "--strict-markers",
    )
    result.assert_outcomes(passed=5)


def test_unobserved_failure_fails_the_test(pytester):
    result = _run(
        pytester,
        """
        import distaff

        @distaff.task
        def boom(x):
            raise ValueError(f"nobody looked at {x}")

        def test_fire_and_forget(distaff_engine):
            boom.submit(7)
            distaff_engine.wait_idle(30)
        """,
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*distaff_engine: 1 execution(s) failed and nobody retrieved the error*",
            "*execution * (*boom): ValueError: nobody looked at 7*",
        ]
    )


def test_still_running_at_teardown_fails_the_test_and_is_cancelled(pytester):
    result = _run(
        pytester,
        """
        import distaff

        @distaff.task
        def forever():
            while True:
                distaff.sleep(0.01)

        def test_forgot_to_wait(distaff_engine):
            forever.submit()
        """,
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*1 execution(s) of the distaff_engine still running at teardown (cancelled now)*"])


def test_suites_without_the_fixture_do_not_import_distaff(pytester):
    result = _run(
        pytester,
        """
        import sys

        def test_untouched():
            assert "distaff" not in sys.modules
            assert "distaff._core" not in sys.modules
        """,
    )
    result.assert_outcomes(passed=1)


def test_bad_marker_options_are_a_setup_error(pytester):
    result = _run(
        pytester,
        """
        import pytest

        @pytest.mark.distaff_engine(workers=0)
        def test_zero_workers(distaff_engine):
            pass
        """,
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ValueError: workers must be between 1 and 1024, got 0*"])


def test_routing_reaches_asyncio_code_in_the_test(pytester):
    result = _run(
        pytester,
        """
        import asyncio, distaff

        @distaff.task
        async def fetch(x):
            await asyncio.sleep(0)
            return x * 2

        def test_async_code(distaff_engine):
            async def main():
                return await distaff.gather(*fetch.map([1, 2, 3]))
            assert asyncio.run(main()) == [2, 4, 6]
            assert distaff_engine.stats()["submitted"] == 3
        """,
    )
    result.assert_outcomes(passed=1)


def test_the_suites_leak_check_fails_a_session_whose_test_keeps_an_execution(tmp_path):
    """tests/python/conftest.py's execution-leak check can fail: a test that parks an Execution in a
    module global fails the session, named; one marked holds_executions does not."""
    import shutil
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    shutil.copy(os.path.join(here, "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    holds_executions: kept on purpose\n    stress: s\n"
    )
    (tmp_path / "test_leaky.py").write_text(
        "import distaff, pytest\n"
        "KEPT = []\n"
        "def test_keeps(engine):\n"
        "    KEPT.append(engine.task(lambda: 1).submit())\n"
        "    assert KEPT[-1].result(timeout=30) == 1\n"
        "@pytest.mark.holds_executions\n"
        "def test_keeps_on_purpose():\n"
        "    KEPT.append(distaff.task()(lambda: 2).submit())\n"
        "    assert KEPT[-1].result(timeout=30) == 2\n"
    )
    env = dict(os.environ, DISTAFF_TEST_LEAK_WAIT="0.5")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "execution leaks" in out and "test_keeps[workers1]" in out and "test_keeps[workers2]" in out, out
    assert "test_keeps_on_purpose" not in out.split("execution leaks", 1)[1], out
    assert "3 passed" in out, out
