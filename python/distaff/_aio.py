"""asyncio on demand: ``import distaff`` does not import asyncio (docs/internals/imports.md).

asyncio with the ``ssl`` module it pulls in is ~11 MiB of resident memory and ~35 ms of start-up,
more than the rest of distaff's import together; a program that never runs an event loop does not
pay for it. Two things need care:

- *Is an event loop running in this thread?* distaff asks on every blocking wait and synchronous
  call. No loop can run before asyncio is imported, so :func:`running_loop` answers None until then;
  once asyncio is imported it rebinds every name registered with :func:`bind` to asyncio's own
  C-level ``_get_running_loop``, so the question costs what it did with an eager import.
- *distaff.CancelledError is an asyncio.CancelledError.* The class is created without that base;
  :func:`install` adds it the moment asyncio's exceptions module is executed (a finder at the
  front of ``sys.meta_path`` wraps that one module's loader), or at once if asyncio is already
  imported. Before that no code can name ``asyncio.CancelledError``, so no ``except`` can miss it.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

_modules = sys.modules
_bound: list = []  # (namespace dict, name): rebound to asyncio's _get_running_loop once it exists
_fast: "Callable[[], Any] | None" = None


def _asyncio_ready() -> "Any | None":
    """asyncio.events once fully executed (so its C-level _get_running_loop has replaced the
    Python one), else None."""
    events = _modules.get("asyncio.events")
    if events is None or getattr(getattr(events, "__spec__", None), "_initializing", False):
        return None
    return events


def running_loop() -> Any:
    """The event loop running in this thread, or None (``asyncio._get_running_loop()``)."""
    if _fast is not None:
        return _fast()
    events = _asyncio_ready()
    if events is None:
        return None  # asyncio is not (completely) imported: no loop runs anywhere in this process
    _rebind(events._get_running_loop)
    return _fast()  # type: ignore[misc]


def _rebind(fn: Callable[[], Any]) -> None:
    global _fast
    _fast = fn
    for namespace, name in _bound:
        namespace[name] = fn


def bind(namespace: dict, name: str) -> None:
    """Sets ``namespace[name]`` to a running-loop getter: :func:`running_loop` until asyncio is
    imported, asyncio's own C-level function after."""
    _bound.append((namespace, name))
    namespace[name] = _fast if _fast is not None else running_loop


# -- distaff.CancelledError becomes an asyncio.CancelledError with asyncio ---------------------------

_adopters: list = []  # callables taking asyncio.exceptions.CancelledError


def _adopt(exceptions_module: Any) -> None:
    base = getattr(exceptions_module, "CancelledError", None)
    if base is None:
        return
    for adopt in _adopters:
        adopt(base)


class _Loader:
    """The loader of ``asyncio.exceptions``, which then hands its CancelledError to the adopters."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._inner.exec_module(module)
        _adopt(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, is_package, ...
        return getattr(self._inner, name)


class _Finder:
    """First on ``sys.meta_path``: finds ``asyncio.exceptions`` with the finders after it and wraps
    its loader; declines every other module."""

    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "asyncio.exceptions":
            return None
        for finder in list(sys.meta_path):
            if finder is cls:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install(adopt: Callable[[type], None]) -> None:
    """Calls ``adopt(asyncio.CancelledError)`` now if asyncio's exceptions module is loaded, else
    the moment it is."""
    _adopters.append(adopt)
    loaded = _modules.get("asyncio.exceptions")
    if loaded is not None and hasattr(loaded, "CancelledError"):
        adopt(loaded.CancelledError)
    elif _Finder not in sys.meta_path:
        sys.meta_path.insert(0, _Finder)  # type: ignore[arg-type]
