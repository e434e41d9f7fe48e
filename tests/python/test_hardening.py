"""Issue 9, adversarial pass: automatic workflow ids, shared exception instances, imports inside
bodies and the parent of work submitted from a done-callback (docs/reliability.md, "Ids, errors,
imports and callbacks")."""

import gc
import os
import re
import sys
import threading
import traceback
import tracemalloc

import pytest

import distaff
from distaff._task import _new_workflow_id

from conftest import run_python

WF_ID = re.compile(r"wf-[0-9a-f]{8}")


# -- 14: automatic workflow ids are unique in the process ------------------------------------------


def test_automatic_workflow_ids_are_unique_and_keep_their_shape():
    ids = [_new_workflow_id() for _ in range(200_000)]
    assert len(set(ids)) == len(ids)
    assert all(WF_ID.fullmatch(i) for i in ids[:1000])


def test_cancel_workflow_of_one_automatic_run_cancels_only_that_run(new_gate):
    """150k @workflow runs queued behind a busy worker each get their own id, so cancelling one
    run's workflow cancels exactly that run (random 32-bit ids collided 1-5 times in 150k runs)."""
    gate = new_gate()
    with distaff.Engine(workers=1, max_workers=1, history=0) as engine:
        blocker = engine.submit(gate.wait, 60)

        @engine.workflow()
        def run(i):
            return i

        runs = [run.submit(i) for i in range(150_000)]
        wids = [r.workflow_id for r in runs]
        assert len(set(wids)) == len(wids)
        for r in runs[::15_000]:
            assert engine.cancel_workflow(r.workflow_id) == 1
            assert r.cancelled()
        assert sum(r.cancelled() for r in runs) == 10
        gate.set()
        assert blocker.result(timeout=60)
        assert runs[1].result(timeout=60) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_its_parents_workflow_ids():
    r = run_python(
        """
        import os, warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        from distaff._task import _new_workflow_id
        _new_workflow_id()
        rd, wr = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(wr, " ".join(_new_workflow_id() for _ in range(1000)).encode())
            os._exit(0)
        os.close(wr)
        child = set(os.read(rd, 1 << 20).decode().split())
        os.waitpid(pid, 0)
        parent = {_new_workflow_id() for _ in range(1000)}
        assert len(child) == 1000, len(child)
        print("shared", len(child & parent))
        """,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "shared 0" in r.stdout
