"""asyncio on demand: ``import distaff`` does not import asyncio (docs/internals/imports.md).

asyncio with the ``ssl`` module it pulls in is ~11 MiB of resident memory and ~35 ms of start-up,
more than the rest of distaff's import together; a program that never runs an event loop does not
pay for it. Two things need care:

- *Is an event loop running in this thread?* distaff asks on every blocking wait and synchronous
  call. No loop can run before asyncio is imported, so the names registered with :func:`bind`
  answer None (a C-level call) until then; right after ``asyncio.events`` has executed they are
  rebound to asyncio's own C-level ``_get_running_loop``, so the question costs what it did with an
  eager import.
- *distaff.CancelledError is an asyncio.CancelledError.* The class is created without that base;
  :func:`install` adds it the moment ``asyncio.exceptions`` has executed, or at once if asyncio is
  already imported. Before that no code can name ``asyncio.CancelledError``, so no ``except`` can
  miss it.

Both hooks come from one finder at the front of ``sys.meta_path`` that wraps the loaders of those
two modules and declines every other.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable

_modules = sys.modules
_bound: list = []  # (namespace dict, name): rebound to asyncio's _get_running_loop once it exists
# Until asyncio is imported no event loop can run: NoneType() is a C-level call that answers None.
_NO_LOOP = type(None)
_current: "Callable[[], Any]" = _NO_LOOP


def running_loop() -> Any:
    """The event loop running in this thread, or None (``asyncio._get_running_loop()``)."""
    return _current()


def _rebind(events: Any) -> None:
    """asyncio.events has run (its C-level _get_running_loop replaced the Python one at its end):
    every bound name calls that from now on."""
    global _current
    fn = getattr(events, "_get_running_loop", None)
    if fn is None:
        return
    _current = fn
    for namespace, name in _bound:
        namespace[name] = fn


def refresh() -> None:
    """Catches up with an asyncio loaded past the finder (an import hook ahead of it, a restored
    ``sys.meta_path``, an import racing distaff's own): binds the running-loop getters to
    asyncio's and gives CancelledError its asyncio base. Called where only a program with asyncio
    gets: awaiting an Execution, the first async body, an engine's creation, a synchronous call
    while the getters still answer None though asyncio.events is loaded."""
    if _current is _NO_LOOP:
        events = _loaded("asyncio.events")
        if events is not None:
            _rebind(events)
    exceptions = _loaded("asyncio.exceptions")
    if exceptions is not None:
        _adopt(exceptions)


def late_running_loop() -> Any:
    """For a caller whose getter still answers None: the running loop after a refresh(), if
    asyncio.events is loaded; None at the cost of one dict lookup otherwise."""
    if "asyncio.events" not in _modules:
        return None
    refresh()
    return _current()


def bind(namespace: dict, name: str) -> None:
    """Sets ``namespace[name]`` to a running-loop getter, which answers None until asyncio is
    imported and is asyncio's own C-level ``_get_running_loop`` after."""
    _bound.append((namespace, name))
    namespace[name] = _current


# -- distaff.CancelledError becomes an asyncio.CancelledError with asyncio ---------------------------

_adopters: list = []  # callables taking asyncio.exceptions.CancelledError


def _adopt(exceptions_module: Any) -> None:
    base = getattr(exceptions_module, "CancelledError", None)
    if base is None:
        return
    for adopt in _adopters:
        adopt(base)


# What runs right after one of asyncio's modules has been executed.
_AFTER = {"asyncio.exceptions": _adopt, "asyncio.events": _rebind}


class _Loader:
    """The loader of one of the modules in _AFTER: runs the module, then the hook of every copy of
    the finder on ``sys.meta_path`` (more than one after distaff was purged from ``sys.modules`` and
    imported again; the C core still raises the first import's CancelledError)."""

    def __init__(self, inner: Any, name: str) -> None:
        self._inner = inner
        self._name = name

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._inner.exec_module(module)
        for finder in list(sys.meta_path):
            if getattr(finder, "_distaff_asyncio_finder", False):
                finder.after(self._name, module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, is_package, ...
        return getattr(self._inner, name)


class _Finder:
    """First on ``sys.meta_path``: finds the modules in _AFTER with the other finders and wraps
    their loaders; declines every other module.

    It asks the other finders itself, so it must not be asked again while it does: another finder
    of the same kind (one that asks the rest of ``sys.meta_path``), or a second copy of this one
    (distaff's modules purged from ``sys.modules`` and imported again), would otherwise call back
    into it without end (RecursionError at ``import asyncio``: an outsider's finding). A name being
    found on this thread is declined, and copies of this finder are skipped."""

    _distaff_asyncio_finder = True  # the mark every copy of this class carries
    _finding = threading.local()

    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in _AFTER:
            return None
        busy = cls._finding.__dict__.setdefault("names", set())
        if name in busy:
            return None  # asked again from inside our own search: let the asker go on
        busy.add(name)
        try:
            for finder in list(sys.meta_path):
                if getattr(finder, "_distaff_asyncio_finder", False):
                    continue
                find = getattr(finder, "find_spec", None)
                spec = find(name, path, target) if find is not None else None
                if spec is not None:
                    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                        spec.loader = _Loader(spec.loader, name)
                    return spec
            return None
        finally:
            busy.discard(name)

    @classmethod
    def after(cls, name: str, module: Any) -> None:
        _AFTER[name](module)


def _loaded(name: str) -> Any:
    """The module if it is imported and has finished executing, else None."""
    module = _modules.get(name)
    if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
        return None
    return module


def install(adopt: Callable[[type], None]) -> None:
    """Calls ``adopt(asyncio.CancelledError)`` now if asyncio's exceptions module is loaded, else
    the moment it is; binds the running-loop getters to asyncio's once asyncio.events is loaded."""
    _adopters.append(adopt)
    refresh()  # asyncio imported before distaff
    if _Finder not in sys.meta_path:
        sys.meta_path.insert(0, _Finder)  # type: ignore[arg-type]
