"""distaff.asyncflow: the radical.asyncflow competitor's program (_asyncflow_common.py) with only
the import changed (docs/asyncflow.md): AsyncFlow's API over distaff's engine.
"""
from __future__ import annotations

import distaff.asyncflow as lib  # ImportError -> not installed

from competitors._asyncflow_common import NOT_EXPRESSIBLE, AsyncFlowImpl  # noqa: F401


def version() -> str:
    return lib.__version__


class Impl(AsyncFlowImpl):
    lib = lib
