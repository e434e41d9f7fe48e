"""distaff's Python helper threads leave the process's signals to the main thread while they idle.

Linux hands a signal sent to the process (Ctrl-C's SIGINT, kill's SIGTERM) to any thread that does
not block it when the main thread is not ready to take it. CPython runs Python handlers on the main
thread only: a signal its C handler took on another thread is only flagged, and a main thread asleep
in a system call (``epoll_wait`` under ``asyncio.run``, ``time.sleep``) is not woken, so the Ctrl-C
seemed lost. distaff's C++ threads block these signals around their waits
(``cpp/include/distaff/detail/idle_signals.hpp``); its Python helper threads (the loop watcher, the
retry timer, the live-trace flusher) do the same around their sleeps with :func:`idle`. Outside those
waits the mask is the thread's own: what they run there (done-callbacks of what they cancel or
retry) may start processes, which inherit the mask.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

from . import _core

_SIGNALS = frozenset(_core._idle_signals())  # the C++ threads' list (idle_signals.hpp)
_mask = getattr(signal, "pthread_sigmask", None)


@contextmanager
def idle() -> Iterator[None]:
    """Blocks the process's asynchronous signals in this thread for the ``with`` block."""
    if _mask is None:
        yield
        return
    old = _mask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        _mask(signal.SIG_SETMASK, old)
