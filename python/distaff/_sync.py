"""Fiber-aware locks, semaphores and events, and the per-task concurrency limit.

A ``threading.Lock`` belongs to an OS thread: a body that holds one across a suspension and a
second body on the same worker that wants it deadlock the worker (docs/limits.md). These
primitives belong to whoever acquired them — a body, a thread, an asyncio task — and a waiter waits
the way its context waits for an Execution: a body suspends only its fiber, a plain thread blocks
(Ctrl-C still interrupts it), a coroutine awaits. One mechanism serves all three: each waiter parks
on a *promise* (an Execution finished from outside, ``_core.promise``), and whoever releases hands
the lock to the oldest waiter by settling its promise (FIFO, no barging).

The internal ``threading.Lock`` (``_mu``) guards the fields only, never across a wait, so holding
it cannot block a fiber switch.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

from . import _core, _validate
from ._errors import CancelledError
from ._errors import TimeoutError as _DistaffTimeout



def _check_timeout(timeout: Any, what: str, lock: bool = False) -> float | None:
    """A wait's timeout, through the facade's one check (_validate.wait_timeout: TypeError for
    non-numbers and bools, ValueError for NaN, no limit for None/inf/huge, a negative value is a
    wait whose time is up — as threading.Event.wait and Semaphore.acquire treat it). ``lock``:
    threading.Lock.acquire's rule instead: -1 means no timeout, another negative is a ValueError."""
    if timeout is None:
        return None
    if lock and not isinstance(timeout, bool) and isinstance(timeout, (int, float)) and timeout < 0:
        if timeout == -1:
            return None
        raise ValueError(f"{what}: timeout must be non-negative (or -1/None for no timeout), not {timeout!r}")
    t = _validate.wait_timeout(timeout)
    return None if t is None else max(0.0, t)


class _Waitable:
    """The FIFO of promises shared by Lock, Semaphore and the concurrency limiter."""

    __slots__ = ("_mu", "_waiters", "_name")

    def __init__(self, name: str) -> None:
        self._mu = threading.Lock()
        self._waiters: collections.deque = collections.deque()
        self._name = name

    # -- subclasses ---------------------------------------------------------------------------
    def _try_take(self) -> bool:  # under _mu
        raise NotImplementedError

    def _give_back(self) -> None:  # under _mu: nobody was waiting
        raise NotImplementedError

    # -- the protocol ---------------------------------------------------------------------------
    def _enqueue(self) -> Any:
        """Takes a unit at once (returns None) or queues a promise for one (returns it)."""
        with self._mu:
            if self._try_take():
                return None
            p = _core.promise(self._name)
            self._waiters.append(p)
            return p

    def _handoff(self) -> None:
        """Releases one unit: to the oldest waiter whose promise can still be settled, else back."""
        with self._mu:
            while self._waiters:
                p = self._waiters.popleft()
                if _core.settle(p, True, None):
                    return
            self._give_back()

    def _abandon(self, p: Any) -> bool:
        """The waiter behind `p` stops waiting (timeout, cancel, Ctrl-C). Returns True if
        release() handed it the unit meanwhile: the caller then owns it."""
        with self._mu:
            try:
                self._waiters.remove(p)
                queued = True
            except ValueError:
                queued = False  # _handoff popped it: settled under _mu, so done by now
        if queued:
            _core.settle(p, False, None)  # finish the record (cancelled)
            return False
        return p.done() and not p.cancelled()

    def _wait_sync(self, p: Any, timeout: float | None) -> bool:
        try:
            p.result(timeout=timeout)
            return True
        except _DistaffTimeout:
            # The body's own timeout= fired while it waited here (or had fired before: every later
            # wait of a timed-out body raises it again). Only this wait's own timeout elapsing
            # raises the built-in TimeoutError, below.
            if self._abandon(p):
                self._handoff()
            raise
        except TimeoutError:
            return self._abandon(p)
        except BaseException:
            if self._abandon(p):
                self._handoff()  # handed over while we were being cancelled: pass it on
            raise

    async def _wait_async(self, p: Any, timeout: float | None) -> bool:
        import asyncio

        try:
            if timeout is None:
                await p
            else:
                await asyncio.wait_for(asyncio.shield(_as_future(p)), timeout)
            return True
        except asyncio.TimeoutError:
            return self._abandon(p)
        except BaseException:
            if self._abandon(p):
                self._handoff()
            raise


def _as_future(p: Any) -> Any:
    import asyncio

    return asyncio.ensure_future(_await(p))


async def _await(p: Any) -> Any:
    return await p


class _Acquirable(_Waitable):
    """What Lock and Semaphore share: acquire (sync and async) and the context managers."""

    __slots__ = ()
    _kind = ""
    _lock_timeouts = False  # threading.Lock's rule for acquire(timeout=): -1 means no timeout

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Takes a unit; returns False if ``blocking=False`` or ``timeout`` seconds passed first."""
        t = _check_timeout(timeout, f"{self._kind}.acquire", lock=self._lock_timeouts)
        if not blocking:
            if t is not None:  # as threading's Lock and Semaphore: a timeout needs a blocking call
                raise ValueError(f"{self._kind}.acquire: can't specify a timeout for a non-blocking call")
            with self._mu:
                return self._try_take()
        p = self._enqueue()
        return True if p is None else self._wait_sync(p, t)

    async def acquire_async(self, timeout: float | None = None) -> bool:
        """``await x.acquire_async()``: takes a unit without blocking the event loop."""
        t = _check_timeout(timeout, f"{self._kind}.acquire_async")
        p = self._enqueue()
        return True if p is None else await self._wait_async(p, t)

    def release(self) -> None:
        raise NotImplementedError

    # C, bound as methods: acquire()/release() with the body's interrupts (cancel, timeout)
    # deferred to their end, so no bytecode boundary lies between taking the unit and the `with`
    # block, or inside the hand-over: a unit is never lost to an interrupt (cpp/bindings/cancel.cpp).
    __enter__ = _core.deferring_enter
    __exit__ = _core.deferring_exit

    async def __aenter__(self):
        await self.acquire_async()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()


class Lock(_Acquirable):
    """A mutual-exclusion lock for task bodies, threads and asyncio alike (not reentrant).

    ``with lock:`` in a body or a thread, ``async with lock:`` in a coroutine. A body may hold it
    across any suspension (``distaff.sleep``, ``.result()``, another lock): waiters suspend only their
    own fiber. Waiters get the lock in arrival order. Like ``threading.Lock``, any holder context
    may release it.
    """

    __slots__ = ("_locked",)
    _kind = "Lock"
    _lock_timeouts = True

    def __init__(self) -> None:
        super().__init__("Lock.acquire")
        self._locked = False

    def _try_take(self) -> bool:
        if self._locked or self._waiters:
            return False
        self._locked = True
        return True

    def _give_back(self) -> None:
        self._locked = False

    def release(self) -> None:
        with self._mu:
            if not self._locked:
                raise RuntimeError("release of an unlocked distaff.Lock")
        self._handoff()

    def locked(self) -> bool:
        return self._locked

    def __repr__(self) -> str:
        return f"<distaff.Lock {'locked' if self._locked else 'unlocked'}, {len(self._waiters)} waiting>"


class Semaphore(_Acquirable):
    """A counting semaphore for task bodies, threads and asyncio alike: at most ``value`` holders.

    ``with sem:`` / ``async with sem:``; waiters are served in arrival order and suspend only their
    fiber. ``release()`` beyond the initial value raises ValueError (a bounded semaphore).
    """

    __slots__ = ("_value", "_initial")
    _kind = "Semaphore"

    def __init__(self, value: int = 1) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"Semaphore value must be an int, not {type(value).__name__}")
        if value < 0:
            raise ValueError(f"Semaphore value must be >= 0, got {value}")
        super().__init__("Semaphore.acquire")
        self._value = value
        self._initial = value

    def _try_take(self) -> bool:
        if self._value <= 0 or self._waiters:
            return False
        self._value -= 1
        return True

    def _give_back(self) -> None:
        if self._value >= self._initial:
            raise ValueError("distaff.Semaphore released more times than acquired")
        self._value += 1

    def release(self) -> None:
        self._handoff()

    @property
    def value(self) -> int:
        """Units free now."""
        return self._value

    def __repr__(self) -> str:
        return f"<distaff.Semaphore value={self._value}/{self._initial}, {len(self._waiters)} waiting>"


class Event:
    """A flag that bodies, threads and coroutines can wait for: ``set()`` wakes every waiter.

    ``event.wait(timeout=None)`` suspends a body's fiber (blocks a thread); ``await
    event.wait_async()`` in a coroutine. Both return True once set, False on timeout.
    """

    __slots__ = ("_mu", "_flag", "_waiters")

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._flag = False
        # A promise per current waiter (settled by set()): one waiter's cancel — its asyncio task
        # cancelled, Ctrl-C, its loop closing — ends only its own wait, never the others'.
        self._waiters: dict = {}

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._mu:
            self._flag = True
            waiters, self._waiters = self._waiters, {}
        for p in waiters:
            _core.settle(p, True, None)  # False for one cancelled meanwhile: it left on its own

    def clear(self) -> None:
        with self._mu:
            self._flag = False

    def _waiter(self) -> Any:
        with self._mu:
            if self._flag:
                return None
            p = _core.promise("Event.wait")
            self._waiters[p] = None
            return p

    def _leave(self, p: Any) -> None:
        """The waiter behind `p` stops waiting (timeout, cancel, Ctrl-C): out of the queue, and its
        record finished (cancelled) unless set() settled it meanwhile."""
        with self._mu:
            queued = self._waiters.pop(p, 0) is None
        if queued:
            _core.settle(p, False, None)

    def wait(self, timeout: float | None = None) -> bool:
        t = _check_timeout(timeout, "Event.wait")
        p = self._waiter()
        if p is None:
            return True
        try:
            p.result(timeout=t)
        except BaseException as e:
            self._leave(p)
            # This wait's own timeout; the body's own timeout= (see _wait_sync) and the rest go on.
            if isinstance(e, TimeoutError) and not isinstance(e, _DistaffTimeout):
                return self._flag
            raise
        return True

    async def wait_async(self, timeout: float | None = None) -> bool:
        import asyncio

        t = _check_timeout(timeout, "Event.wait_async")
        p = self._waiter()
        if p is None:
            return True
        try:
            if t is None:
                await p
            else:
                await asyncio.wait_for(asyncio.shield(_as_future(p)), t)
        except BaseException as e:
            self._leave(p)
            if isinstance(e, asyncio.TimeoutError):
                return self._flag
            raise
        return True

    def __repr__(self) -> str:
        return f"<distaff.Event {'set' if self._flag else 'unset'}>"


class _Limiter(_Waitable):
    """``@task(concurrency=n)``: at most n executions of the task run at once. A submission beyond
    the limit gets a gate — a promise added to its ``wait=`` dependencies — so it waits in the
    ``waiting`` state, holding no fiber and no stack, until a running one finishes and settles it.
    """

    __slots__ = ("limit", "running")

    def __init__(self, limit: int, name: str) -> None:
        super().__init__(f"{name} (concurrency slot)")
        self.limit = limit
        self.running = 0

    def _try_take(self) -> bool:
        if self.running >= self.limit or self._waiters:
            return False
        self.running += 1
        return True

    def _give_back(self) -> None:
        self.running -= 1

    def watch(self, execution: Any, gate: Any, slot: "_Slot | None" = None) -> None:
        """Releases the slot when `execution` finishes — and, with `slot` (a body running in this
        process), not before that body has returned: a body cancelled or timed out while stuck in
        a blocking call keeps its slot until it returns, so the limit also bounds what is really
        running. A queued execution that never got a slot forgets its gate instead."""

        def finished(_ex: Any) -> None:
            if gate is not None:
                with self._mu:
                    got_slot = gate.done()
                    if not got_slot:
                        try:
                            self._waiters.remove(gate)
                        except ValueError:
                            pass
                if not got_slot:
                    _core.settle(gate, False, None)
                    return
            if slot is None or slot.execution_done():
                self._handoff()

        execution._add_done_callback(finished)


class _Slot:
    """The body side of a concurrency slot (see _Limiter.watch): whichever of "the execution
    finished" and "the body returned" comes last releases the slot. A body that returns an
    Execution (forwarding) has returned: its slot is released then, not when the execution it
    forwarded to ends — that one may be a call of the same task, queued for this very slot. A body
    with retries= that waits for the execution it returned (_retry.py) holds no slot meanwhile
    (``pause``) and takes one again before its next attempt (``resume``)."""

    __slots__ = ("limiter", "mu", "running", "finished", "released")

    def __init__(self, limiter: _Limiter) -> None:
        self.limiter = limiter
        self.mu = threading.Lock()
        self.running = False
        self.finished = False
        self.released = False

    def enter(self) -> bool:
        with self.mu:
            if self.finished:  # ended (cancelled, timed out) before the body started
                return False
            self.running = True
            return True

    def leave(self) -> None:
        with self.mu:
            self.running = False
            release = self.finished and not self.released
            self.released = self.released or release
        if release:
            self.limiter._handoff()

    def pause(self) -> None:
        """The body returned an Execution (it forwards, or waits for it under a retry policy):
        the slot is free from now on, whether or not the execution has finished."""
        with self.mu:
            release = not self.released
            self.released = True
        if release:
            self.limiter._handoff()

    def resume(self) -> None:
        """Takes a slot again after ``pause``, in the body's fiber, queued behind the executions
        already waiting for one (FIFO). A cancel or timeout while queued raises here; a slot handed
        over in that instant is passed on (_Waitable._wait_sync)."""
        limiter = self.limiter
        p = limiter._enqueue()
        if p is not None:
            limiter._wait_sync(p, None)
        with self.mu:
            self.released = False  # held again: released by leave() (or the next pause)

    async def resume_async(self) -> None:
        """``resume`` for an ``async def`` body's next attempt, on its event loop."""
        limiter = self.limiter
        p = limiter._enqueue()
        if p is not None:
            await limiter._wait_async(p, None)
        with self.mu:
            self.released = False

    def execution_done(self) -> bool:
        """The execution finished: True if the slot is to be released now (no body running)."""
        with self.mu:
            self.finished = True
            release = not self.running and not self.released
            self.released = self.released or release
            return release


# The slot each running limited body holds, by execution id (the retry driver pauses it while the
# body waits for an Execution it returned: _retry._retrying).
_held_slots: dict = {}


class _SlotBody:
    """Wraps a body that runs in this process so its concurrency slot is held while it runs."""

    __slots__ = ("fn", "slot")

    def __init__(self, fn: Any, slot: _Slot) -> None:
        self.fn = fn
        self.slot = slot

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        slot = self.slot
        # A cancel or timeout fires at a bytecode boundary, and there is one in slot.enter() after
        # it marked the slot held (the call that leaves its lock): from that point only the finally
        # below gives the slot back (execution_done leaves a held one to the body). So enter() is
        # the try's first step; an interrupt before it finds the slot not held, and the execution's
        # end releases it. Nothing between the lookup and `try` is a boundary (no call, no jump).
        me = _core.current_execution()
        key = me.id if me is not None else None
        r = None
        try:
            if not slot.enter():
                raise CancelledError("the execution ended before its body started")
            if key is not None:
                _held_slots[key] = slot
            r = self.fn(*args, **kwargs)
            return r
        finally:
            # The body has returned (or raised). A cancel or timeout that came meanwhile would fire
            # its exception at the next bytecode boundary — in this tail, where it would skip the
            # slot's release (every later call of the task then waits forever). _shield() drops it
            # and keeps any later one out; no boundary comes before it (no call, no backward jump).
            if me is not None:
                me._shield()
            if key is not None:
                _held_slots.pop(key, None)
            if isinstance(r, _core.Execution):
                slot.pause()  # the body returned: it forwards, and holds no slot while it does
            slot.leave()


def check_concurrency(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"concurrency= must be a positive int or None, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"concurrency= must be at least 1, got {value}")
    return value


__all__ = ["Event", "Lock", "Semaphore", "CancelledError"]
