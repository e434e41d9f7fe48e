"""``concurrent.futures.wait`` and ``as_completed`` over Executions.

The stdlib's functions are written against its own Future's internals: under ``f._condition`` they
read ``f._state`` and append a waiter to ``f._waiters``, and the future, when it finishes, calls
``waiter.add_result/add_exception/add_cancelled`` under that same condition (CPython's
``concurrent/futures/_base.py``). An Execution gets these three attributes here, created on first
use (a plain ``result()`` never pays for them):

- ``_condition``: a ``threading.Condition`` of its own;
- ``_state``: ``FINISHED`` / ``CANCELLED_AND_NOTIFIED`` only once the waiters were notified — set,
  with the notification, under the condition by a done-callback registered when the condition was
  made — else ``RUNNING`` or ``PENDING``. So, as with the stdlib's futures, a waiter installed
  under the condition is notified exactly once iff it saw the execution unfinished;
- ``_waiters``: the list the stdlib appends to and removes from.

The stdlib's waiter blocks its thread (a ``threading.Event``): in a task body prefer
``distaff.wait``/``distaff.as_completed``, which suspend only the fiber.
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import _base

from . import _core

_Execution = _core.Execution
_raw_add_done_callback = _Execution.add_done_callback


class _Bridge:
    __slots__ = ("condition", "waiters", "notified", "__weakref__")

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.waiters: list = []
        self.notified = False


_bridges: "weakref.WeakKeyDictionary[_Execution, _Bridge]" = weakref.WeakKeyDictionary()
_bridges_lock = threading.Lock()


def _bridge(ex) -> _Bridge:
    b = _bridges.get(ex)
    if b is not None:
        return b
    with _bridges_lock:
        b = _bridges.get(ex)
        if b is None:
            b = _bridges[ex] = _Bridge()
            created = True
        else:
            created = False
    if created:
        # Runs now if the execution is finished already (then no waiter can be installed yet).
        # Weakly: the bridge must not keep itself alive through the execution's callback list.
        ref = weakref.ref(b)
        _raw_add_done_callback(ex, lambda e: _notify(e, ref()))
    return b


def _notify(ex, b) -> None:
    if b is None:
        return
    with b.condition:
        b.notified = True
        state = ex.state
        for w in b.waiters:
            if state == "cancelled":
                w.add_cancelled(ex)
            elif state == "failed":
                w.add_exception(ex)
            else:
                w.add_result(ex)
        b.condition.notify_all()


def _condition(self):
    return _bridge(self).condition


def _waiters(self):
    return _bridge(self).waiters


def _state(self):
    b = _bridge(self)
    if b.notified:
        return _base.CANCELLED_AND_NOTIFIED if self.cancelled() else _base.FINISHED
    return _base.PENDING if self.state in ("pending", "waiting") else _base.RUNNING


def install() -> None:
    _Execution._condition = property(_condition)
    _Execution._waiters = property(_waiters)
    _Execution._state = property(_state)
