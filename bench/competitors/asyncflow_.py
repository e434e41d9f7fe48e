"""radical.asyncflow (the AsyncFlow seed's library): WorkflowEngine on a LocalExecutionBackend
over a concurrent.futures.ThreadPoolExecutor, as in its docs. The program is
_asyncflow_common.py, shared with distaff.asyncflow (asyncflow_distaff_.py).
"""
from __future__ import annotations

import radical.asyncflow as raf  # ImportError -> not installed

from competitors._asyncflow_common import NOT_EXPRESSIBLE, AsyncFlowImpl  # noqa: F401


def version() -> str:
    return raf.__version__


class Impl(AsyncFlowImpl):
    lib = raf
