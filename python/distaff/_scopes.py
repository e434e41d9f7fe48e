"""Workflow ids: the automatic ones a ``@workflow`` opens its scope with (``wf-`` + 8 hex digits).
The scope itself is a context variable of the engine (Engine.workflow_scope, docs/scopes.md)."""

from __future__ import annotations

import itertools
import os


class _WorkflowIds:
    """Automatic workflow ids: ``wf-`` + 8 hex digits, unique in the process.

    The n-th id is a keyed bijection of n on 32 bits, so the first 2**32 ids of a process never repeat
    (random ids did: 150k of them held 1-5 duplicates, and cancel_workflow(id) then cancelled
    unrelated runs). They still look random, and the key is drawn per process: a forked child
    re-draws it, so it does not hand out the ids its parent goes on using. Past 2**32 ids the counter
    no longer fits in 8 hex digits and the ids grow longer (``wf-`` + 16 hex digits), still unique.
    """

    def __init__(self) -> None:
        self._count = itertools.count()  # next() is atomic under the GIL
        self._rekey()

    def _rekey(self) -> None:
        # os.urandom is what secrets.randbits draws from; importing secrets (random, hashlib,
        # libcrypto) cost every `import distaff` 0.5 MiB of RSS (issue 15).
        k = int.from_bytes(os.urandom(8), "little")
        self._k1, self._k2 = k & 0xFFFFFFFF, k >> 32

    def __call__(self) -> str:
        n = next(self._count)
        if n >> 32:
            return f"wf-{n:016x}"
        # Each step is a bijection on 32-bit integers: add, multiply by an odd number, xor-shift, xor.
        x = (n + self._k1) & 0xFFFFFFFF
        x = (x * 0x9E3779B1) & 0xFFFFFFFF
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & 0xFFFFFFFF
        x ^= x >> 13
        x ^= self._k2
        return f"wf-{x:08x}"


_new_workflow_id = _WorkflowIds()
os.register_at_fork(after_in_child=_new_workflow_id._rekey)
