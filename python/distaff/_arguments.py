"""Execution arguments: finding them (what ``wait=True`` waits for) and replacing them by their
values (``resolve=True``, and bodies that run elsewhere, whose arguments travel as values)."""

from __future__ import annotations

import functools
from typing import Any, Callable

from . import _core


def _scan_executions(args: tuple, kwargs: dict) -> tuple:
    """What wait=True waits for: Executions among the arguments, also inside lists, tuples and
    dicts (exact types, as the C++ scan does)."""
    out = []
    for v in (*args, *(kwargs.values() if kwargs else ())):
        vals = v if v.__class__ in (list, tuple) else v.values() if v.__class__ is dict else (v,)
        out.extend(x for x in vals if isinstance(x, _core.Execution))
    return tuple(out)


def _resolve_value(v: Any) -> Any:
    # Containers are rebuilt only when they hold Executions: a shared dict or list without any
    # reaches the body as the same object (PocketFlow's shared store is mutated in place).
    E = _core.Execution
    if v.__class__ is E:
        return v.result()
    if v.__class__ is list:
        return [x.result() if x.__class__ is E else x for x in v] if any(x.__class__ is E for x in v) else v
    if v.__class__ is tuple:
        return tuple(x.result() if x.__class__ is E else x for x in v) if any(x.__class__ is E for x in v) else v
    if v.__class__ is dict:
        if any(x.__class__ is E for x in v.values()):
            return {k: (x.result() if x.__class__ is E else x) for k, x in v.items()}
    return v


def _resolving(fn: Callable) -> Callable:
    """resolve=True: Execution arguments (top level, and inside lists, tuples and dict values one
    level down) arrive as their values. They are all done by then (resolve implies wait=True)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*[_resolve_value(a) for a in args], **{k: _resolve_value(v) for k, v in kwargs.items()})

    return call
