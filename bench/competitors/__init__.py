"""One module per competitor. Each defines:

- ``version()`` -> str: the library version (importing the module fails with ImportError when the
  library is not installed);
- ``class Impl(Base)`` with ``setup(workload)``, ``teardown()`` and one method per workload it can
  express (``w1`` ... ``w7b``), each taking the size ``n`` and returning the timed seconds (or a
  ``common.Measurement`` with extras). Timing covers exactly the workload, not setup;
- ``NOT_EXPRESSIBLE``: {workload: reason} for the workloads it cannot express.

Every method checks its result (a wrong sum is an error, not a number).
"""


class Base:
    dirty = False  # set when executions that never finish are left behind (W6)

    def __init__(self, params: dict):
        self.params = params
        self.info: dict = {}

    def setup(self, workload: str) -> None:
        pass

    def teardown(self) -> None:
        pass
