"""Signature checks made once, at decoration: the argument checker a submit calls (Python's own
TypeError, in the caller, at submit time), the shapes of call the C submit may skip it for,
``wait=`` parameter names and ``fallback=``'s ``exc`` keyword."""

from __future__ import annotations

import inspect
import types
from typing import Any, Callable, Iterable

from . import _core


def _make_checker(fn: Callable, name: str, sig: Any = None) -> Callable | None:
    """A function with ``fn``'s parameters and an empty body: calling it checks arguments exactly.

    Built once at decoration, so a bad call fails in the caller at submit time with Python's own
    TypeError ("load_user() missing 1 required positional argument: 'uid'") at ~60 ns a call,
    instead of inspect.Signature.bind's ~2 µs. ``sig``: ``inspect.signature(fn)`` if the caller
    has it already.
    """
    if sig is None:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return None  # builtins and C callables without a signature are checked when called
    # The checker's source depends only on each parameter's name, kind and whether it has a
    # default (annotations dropped, defaults all None): that is its template's key, so a
    # parameter list seen before costs no rendering of the signature.
    empty = inspect.Parameter.empty
    key = tuple((p.name, p.kind, p.default is not empty) for p in sig.parameters.values())
    template = _templates.get(key)
    if template is None:
        params = []
        for p in sig.parameters.values():
            p = p.replace(annotation=empty)
            if p.default is not empty:
                p = p.replace(default=None)
            params.append(p)
        src_sig = str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))
        ns: dict[str, Any] = {}
        exec(f"def _check{src_sig}: pass", ns)  # noqa: S102 - parameters come from a real signature
        template = ns["_check"]
        if len(_templates) < _TEMPLATES_MAX:
            _templates[key] = template
    # Python names the function in argument errors by its __qualname__: make it the task's.
    short = name.rpartition(".")[2]
    check = types.FunctionType(template.__code__.replace(co_name=short, co_qualname=name), template.__globals__,
                               short, template.__defaults__)
    if template.__kwdefaults__:
        check.__kwdefaults__ = dict(template.__kwdefaults__)
    check.__qualname__ = name
    return check


# Checkers by parameter list: compiling one (exec) is ~90 us of a decoration's ~130 us, and many
# tasks share a parameter list (the asyncflow layer's all do). A checker is the template's code
# under the task's name; its defaults are all None.
_templates: dict[tuple, Callable] = {}
_TEMPLATES_MAX = 4096


def _positional_range(params: Any) -> tuple[int, int]:
    """(least, most) positional arguments a call may pass with no keywords and be certainly valid,
    most ``_core.NO_BOUND`` for *args; (NO_BOUND, NO_BOUND) when such a call still needs the full check
    (a required keyword-only parameter). Calls of that shape skip the checker in the C submit
    (cpp/bindings/submit.cpp)."""
    P = inspect.Parameter
    least = most = 0
    unbounded = False
    for p in params.values():
        if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD):
            most += 1
            if p.default is P.empty:
                least = most
        elif p.kind is P.VAR_POSITIONAL:
            unbounded = True
        elif p.kind is P.KEYWORD_ONLY and p.default is P.empty:
            return _core.NO_BOUND, _core.NO_BOUND
    return least, _core.NO_BOUND if unbounded else most


def _parse_wait(wait: Any, fn: Callable) -> bool | tuple[str, ...]:
    if wait is None or wait is False:
        return False
    if wait is True:
        return True
    if isinstance(wait, str):
        names = tuple(n.strip() for n in wait.split(",") if n.strip())
    elif isinstance(wait, (bytes, bytearray, memoryview)):  # iterating them gives ints, not names
        raise TypeError(
            f"wait= must be True, an iterable of parameter names or a comma-separated string, not "
            f"{type(wait).__name__} {wait!r} (decode it to a str)"
        )
    elif isinstance(wait, Iterable):
        names = tuple(wait)
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"wait= names must be strings, got {n!r}")
    else:
        raise TypeError(f"wait= must be True, an iterable of parameter names or a comma-separated string, not {wait!r}")
    if not names:
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        raise ValueError(f"wait={wait!r} names parameters, but {fn!r} has no inspectable signature") from None
    for n in names:
        if n not in params:
            raise ValueError(f"wait= names {n!r}, which is not a parameter of {getattr(fn, '__qualname__', fn)!r}")
    return names


def _check_fallback(fallback: Callable, fn: Callable, name: str) -> None:
    """fallback= is called as ``fallback(*args, **kwargs, exc=error)``: it must take ``exc`` by
    keyword, and the task's own parameters must leave that name free."""
    P = inspect.Parameter
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "exc" in params and params["exc"].kind is not P.VAR_KEYWORD:
        raise ValueError(
            f"fallback= receives the final error as the keyword argument exc=, which clashes with the "
            f"parameter 'exc' of {name!r}: rename that parameter"
        )
    try:
        fparams = inspect.signature(fallback).parameters
    except (TypeError, ValueError):
        return  # a builtin without a signature: checked when called
    p = fparams.get("exc")
    takes = (p is not None and p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)) or any(
        q.kind is P.VAR_KEYWORD for q in fparams.values()
    )
    if not takes:
        raise TypeError(
            f"fallback {getattr(fallback, '__qualname__', fallback)!r} must accept the keyword argument exc= "
            f"(the final error): fallback(*args, exc, **kwargs), e.g. def fallback(x, *, exc): ..."
        )
