"""Module imports inside task bodies: importlib's module locks, made per fiber.

CPython serialises the execution of a module's top level with a per-module lock
(``importlib._bootstrap._ModuleLock``) that records its owner as ``_thread.get_ident()``. Every fiber
of a worker shares the worker's thread id, so while one fiber executes a module's top level and is
suspended in it (``distaff.sleep``, ``.result()``), a second fiber of that worker importing the same
module finds the lock "already held by its own thread" (the re-entrant path for circular imports)
and gets the half-initialised module from ``sys.modules``: an attribute defined later in the module
is missing.

The import system reaches threads only through the ``_thread`` global of ``importlib._bootstrap``
(``_frozen_importlib``): ``get_ident``, ``allocate_lock`` and, on 3.12+, ``RLock``. :func:`install`
replaces that global — and nothing else: ``threading.get_ident()`` and ``_thread`` itself are
unchanged (they name the worker, docs/limits.md) — with a view of ``_thread`` in which

- ``get_ident()`` names the fiber on a worker (``_core._import_ident``), the OS thread elsewhere;
- ``allocate_lock()`` and ``RLock()`` return locks whose blocking acquire suspends a fiber instead of
  its worker thread (it waits on a distaff promise that ``release()`` settles), and blocks a plain
  thread as before.

So module locks behave per fiber exactly as they behave per thread: the second fiber waits for the
first to finish the module (without holding the worker, so the first can resume), a true cycle
(fiber A imports X then Y while fiber B imports Y then X) ends in CPython's own ``_DeadlockError``,
and circular imports within one fiber still re-enter. Checked against Lib/importlib/_bootstrap.py of
CPython 3.11, 3.12 and 3.13 (``_ModuleLock``, ``_get_module_lock``, ``_BlockingOnManager``).
"""

from __future__ import annotations

import _thread
import sys
from typing import Any

from . import _core


class _Lock:
    """``_thread.allocate_lock()`` for importlib: a fiber waiting for it suspends, a thread blocks."""

    __slots__ = ("_lock", "_waiters", "__weakref__")

    # Class attributes, not module globals: an import late in interpreter finalisation may still
    # create and take module locks after this module's globals were cleared.
    _allocate = staticmethod(_thread.allocate_lock)
    _ident = staticmethod(_core._import_ident)
    _promise = staticmethod(_core.promise)
    _settle = staticmethod(_core.settle)

    def __init__(self) -> None:
        self._lock = self._allocate()
        self._waiters: list = []  # promises of the fibers waiting for a release

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        lock = self._lock
        if lock.acquire(False):
            return True
        if not blocking:
            return False
        if self._ident() >= 0:  # a plain thread (or an event loop): block it, as _thread does
            return lock.acquire(True, timeout)
        # A fiber: holding its worker would stop the holder (maybe a fiber of the same worker) from
        # ever releasing. Register, re-check, then wait for a release() to settle the promise.
        while True:
            p = self._promise("import lock")
            self._waiters.append(p)
            if lock.acquire(False):
                self._forget(p)
                return True
            try:
                p.result(None if timeout < 0 else timeout)
            except BaseException as e:
                self._forget(p)
                if type(e) is TimeoutError:  # our own wait's timeout (not the execution's)
                    return lock.acquire(False)
                raise  # the execution was cancelled or timed out: the import fails with that error

    def _forget(self, p: Any) -> None:
        try:
            self._waiters.remove(p)
        except ValueError:  # release() already took it
            pass

    def release(self) -> None:
        self._lock.release()
        waiters, self._waiters = self._waiters, []
        for p in waiters:  # every waiter retries; the lock goes to whoever takes it first
            self._settle(p, True, None)

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<distaff import lock {'locked' if self.locked() else 'unlocked'} at {id(self):#x}>"


class _RLock:
    """``_thread.RLock()`` for importlib (3.12+): re-entrant per fiber, a :class:`_Lock` inside."""

    __slots__ = ("_block", "_owner", "_count", "__weakref__")

    _ident = staticmethod(_core._import_ident)

    def __init__(self) -> None:
        self._block = _Lock()
        self._owner = None
        self._count = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = self._ident()
        if self._owner == me:
            self._count += 1
            return True
        if not self._block.acquire(blocking, timeout):
            return False
        self._owner = me
        self._count = 1
        return True

    def release(self) -> None:
        if self._owner != self._ident() or not self._count:
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if not self._count:
            self._owner = None
            self._block.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


class _ThreadView:
    """What ``importlib._bootstrap`` sees as ``_thread``: the real module, but per fiber."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.get_ident = _core._import_ident
        self.allocate_lock = _Lock
        self.RLock = _RLock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __repr__(self) -> str:
        return f"<distaff per-fiber view of {self._real!r}>"


def install() -> None:
    """Makes importlib's module locks per fiber (idempotent)."""
    bootstrap = sys.modules.get("_frozen_importlib") or sys.modules.get("importlib._bootstrap")
    if bootstrap is None:
        return
    real = getattr(bootstrap, "_thread", None)
    if real is None or isinstance(real, _ThreadView):  # no threads, or already installed
        return
    bootstrap._thread = _ThreadView(real)
