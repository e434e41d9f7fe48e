"""The pytest plugin shipped with distaff (entry point ``pytest11``): the ``distaff_engine`` fixture.

A package of its own, outside ``distaff``: pytest imports every plugin at startup, and importing
``distaff`` installs process-wide hooks (import locks per fiber, an exit hook). distaff is imported
only when a test asks for the fixture, so a test suite that does not use it runs exactly as without
the plugin. See docs/testing.md.
"""

from __future__ import annotations

import gc
from typing import Any, Iterator

import pytest

#: Seconds the fixture's teardown lets executions still running finish before it fails the test
#: and cancels them (an execution submitted without being waited for, a forgotten background job).
GRACE_S = 1.0


def _describe(ids: set, nodes: dict) -> str:
    out = []
    for i in sorted(ids):
        n = nodes.get(i)
        out.append(f"  execution {i} ({n['name']}): {n['error']}" if n and n.get("error") else f"  execution {i}")
    return "\n".join(out)


@pytest.fixture
def distaff_engine(request: Any) -> Iterator[Any]:
    """A fresh ``distaff.Engine`` for one test, routed with ``distaff.use_engine``: module-level
    ``@task``/``@workflow`` calls in the test, and nested calls in their bodies, run on it.

    Options for the engine: ``@pytest.mark.distaff_engine(workers=2, ...)`` (Engine's keywords).

    At teardown the test fails (an error at teardown) when an execution of this engine is still
    running after a grace period (``GRACE_S``; they are then cancelled), or when one failed and
    nobody retrieved its error (``result()``, ``exception()``, ``await``, a wait-set).
    """
    import distaff
    from distaff import _core, _errors

    marker = request.node.get_closest_marker("distaff_engine")
    options = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        raise TypeError("@pytest.mark.distaff_engine takes Engine options as keywords only")
    engine = distaff.Engine(**options)  # bad options: a clear TypeError/ValueError at setup
    unobserved: list = []
    _errors._unobserved_listeners.append(unobserved.extend)
    problems = []
    routing = distaff.use_engine(engine)
    routing.__enter__()
    try:
        try:
            yield engine
        finally:
            try:
                routing.__exit__(None, None, None)
            except ValueError:  # torn down in another context than it was set up in: nothing to undo
                pass
        if not engine._closed and not engine.wait_idle(GRACE_S):
            live = engine.stats()["live"]
            problems.append(
                f"{live} execution(s) of the distaff_engine still running at teardown (cancelled now): "
                "wait for what the test submits (result(), distaff.wait/gather) or cancel it"
            )
        engine.shutdown(wait=True, cancel_running=True)
        gc.collect()  # failed executions that only a reference cycle kept alive
        _core._drain_unobserved()
    finally:
        _errors._unobserved_listeners.remove(unobserved.extend)
        engine.shutdown(wait=True, cancel_running=True)
    nodes = {n["id"]: n for n in engine.graph()["nodes"]}
    mine = {i for (i, _name, _exc) in unobserved if i in nodes} if nodes else {i for (i, _n, _e) in unobserved}
    if mine:
        problems.append(
            f"{len(mine)} execution(s) failed and nobody retrieved the error "
            f"(call result() or exception(), or wait with distaff.gather):\n" + _describe(mine, nodes)
        )
    if problems:
        pytest.fail("distaff_engine: " + "\n".join(problems), pytrace=False)


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers", "distaff_engine(**options): Engine options for the distaff_engine fixture (distaff's plugin)"
    )
