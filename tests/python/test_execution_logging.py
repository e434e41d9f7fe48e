"""DEBUG records on "distaff.executions", one per state change, built on the observer seam."""

import collections
import logging
import threading

import distaff
from distaff import _trace

from conftest import run_python


def test_every_state_change_is_a_debug_record_with_the_workflow_id(caplog):
    caplog.set_level(logging.DEBUG, logger="distaff.executions")
    eng = distaff.Engine()  # the logger is on when the engine starts: it is observed
    gate = threading.Event()

    @eng.task()
    def ok():
        gate.wait(30)
        return 1

    @eng.task(wait=True)
    def after(x):
        return x.result()

    @eng.task()
    def bad():
        raise KeyError("k")

    with eng.workflow_scope("wf-log"):
        a = ok.submit()
        b = after.submit(a)
        c = bad.submit()
    gate.set()
    assert b.result() == 1
    assert isinstance(c.exception(), KeyError)
    eng.shutdown()  # logs what is left, stops observing
    assert id(eng) not in _trace._hubs
    recs = [r for r in caplog.records if r.name == "distaff.executions"]
    assert all(r.levelno == logging.DEBUG for r in recs)
    states = collections.defaultdict(list)
    for r in recs:
        states[r.execution_id].append(r.state)
        assert r.workflow_id == "wf-log" and r.task_name.endswith(("ok", "after", "bad"))
    assert states[a.id] == ["pending", "queued", "running", "succeeded"]
    assert states[b.id] == ["waiting", "queued", "running", "succeeded"]  # queued once `a` succeeded
    assert states[c.id] == ["pending", "queued", "running", "failed"]
    failed = next(r for r in recs if r.execution_id == c.id and r.state == "failed")
    assert "KeyError: 'k'" in failed.getMessage() and "[workflow wf-log]" in failed.getMessage()
    assert [r.created for r in recs] == sorted(r.created for r in recs)  # the state changes' own times


def test_nothing_is_observed_when_the_logger_is_off(caplog):
    caplog.set_level(logging.INFO, logger="distaff.executions")
    eng = distaff.Engine()
    try:
        assert eng.submit(lambda: 2).result() == 2
        assert id(eng) not in _trace._hubs
        assert not [r for r in caplog.records if r.name == "distaff.executions"]
    finally:
        eng.shutdown()


def test_a_logged_program_that_never_shuts_down_logs_everything_and_exits():
    r = run_python(
        """
        import logging, distaff
        logging.basicConfig(level=logging.DEBUG, format="%(name)s|%(execution_id)s|%(state)s|%(workflow_id)s")
        logging.getLogger("asyncio").setLevel(logging.WARNING)

        @distaff.task()
        def leaf(i):
            return i

        @distaff.workflow()
        def flow():
            return sum(leaf.submit(i).result() for i in range(5))

        print(flow.submit(workflow_id="w-exit").result(), flush=True)
        """,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "10"
    lines = [line for line in r.stderr.splitlines() if line.startswith("distaff.executions|")]
    final = [line for line in lines if line.endswith(("|succeeded|w-exit", "|failed|w-exit"))]
    assert len(final) == 6, r.stderr  # the workflow and its five leaves, all logged before the exit


def test_a_filter_that_raises_once_loses_only_its_own_record():
    """A user's filter that raises on one record: that record is lost (said once on stderr), the
    rest of the batch is still logged (before, the whole batch after it was dropped)."""
    proc = run_python(
        """
        import logging, sys, distaff

        seen = []

        class Once(logging.Filter):
            raised = False

            def filter(self, record):
                if not Once.raised:
                    Once.raised = True
                    raise RuntimeError("filter broke")
                seen.append((record.execution_id, record.state))
                return False

        log = logging.getLogger("distaff.executions")
        log.setLevel(logging.DEBUG)
        log.addFilter(Once())
        eng = distaff.Engine()
        ex = eng.submit(lambda: 1)
        ex.result()
        eng.shutdown()
        print(sorted(s for i, s in seen if i == ex.id))
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    # the first record ("pending") was the one the filter raised on
    assert proc.stdout.strip() == "['queued', 'running', 'succeeded']", (proc.stdout, proc.stderr)
    assert "filter broke" in proc.stderr and proc.stderr.count("distaff: a filter or handler") == 1
