"""Guarantees known to be broken (docs/reliability.md, "Known gaps"): strict xfails, so the suite
says XPASS — and fails — the day one is fixed. Each case runs in a fresh interpreter with a short
deadline: today they hang until it."""

import subprocess

import pytest

from conftest import run_python

GAP = pytest.mark.xfail(strict=True, raises=(AssertionError, subprocess.TimeoutExpired))

# No gap with a test is open now: the last two (a body parked in another engine's shutdown(), a task
# that reschedules itself by returning its next run) are fixed and their tests are in
# test_lifecycle_hardening.py. A new one goes here as `@GAP` with `run_python(..., timeout=...)`.
__all__ = ["GAP", "run_python"]
