"""Guarantees known to be broken (docs/reliability.md, "Known gaps"): strict xfails, so the suite
says XPASS — and fails — the day one is fixed. Each case runs in a fresh interpreter with a short
deadline: today they hang until it."""

import subprocess

import pytest

from conftest import run_python

GAP = pytest.mark.xfail(strict=True, raises=(AssertionError, subprocess.TimeoutExpired))


@GAP
def test_cancel_wakes_a_body_parked_in_another_engines_shutdown():
    # Outsider trial finding 4: two engines whose bodies shut each other down deadlock, and
    # cancel() returns True but does not wake a body parked in another engine's shutdown().
    proc = run_python(
        """
        import distaff, time
        a, b = distaff.Engine(), distaff.Engine()
        x = a.submit(lambda: (distaff.sleep(0.05), b.shutdown()))
        y = b.submit(lambda: (distaff.sleep(0.05), a.shutdown()))
        time.sleep(0.5)
        x.cancel(); y.cancel()
        print(a.wait_idle(timeout=3), b.wait_idle(timeout=3))
        """,
        timeout=10,
    )
    assert proc.stdout.split() == ["True", "True"], proc.stdout

