"""The checks of user input shared by the whole facade: one behaviour everywhere (docs/concepts.md,
"Bad input"). Wrong type: TypeError; wrong value: ValueError; raised where the value is given.

Numbers of seconds go through the bindings' own check (``_core._seconds``, parse_seconds in
cpp/bindings), the one the C entry points (``result(timeout=)``, ``wait``, ``sleep``...) use.
"""

from __future__ import annotations

from typing import Any

from . import _core

# The kinds of parse_seconds (cpp/bindings/bindings.hpp, enum Seconds), as plain ints: hot paths pass them.
WAIT, OPTION, LENGTH, CAP, DELAY, FACTOR = (int(k) for k in _core.SecondsKind)
_NO_LIMIT = 1e9  # seconds; from there on a wait has no deadline (kNoLimitSeconds)

seconds = _core._seconds


def wait_timeout(timeout: Any) -> float | None:
    """A wait's ``timeout=``: None for no limit (None, inf, >= 1e9 s, 10**400), else seconds >= 0
    (a negative timeout is an expired one, as in concurrent.futures)."""
    t = seconds(timeout, "timeout", WAIT)
    return None if t is None or t >= _NO_LIMIT else t


def _text(value: Any, what: str) -> str:
    """A non-empty str that C code can carry whole (no NUL, encodable as UTF-8)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if "\0" in value:
        raise ValueError(f"{what} must not contain NUL characters: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be encodable as UTF-8 (no lone surrogates): {value!r}") from None
    return value


def name(value: Any, what: str = "name") -> str:
    """A task's name."""
    return _text(value, what)


def workflow_id(value: Any) -> str | None:
    """A workflow id: None (none given) or a non-empty str — at submit, in scopes and in .options."""
    return None if value is None else _text(value, "workflow_id")


def flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, not {value!r}")
    return value


def count(value: Any, what: str, minimum: int = 0) -> int:
    """An int option (retries, workers...): bool and non-ints are a TypeError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, not {value!r}")
    return value
