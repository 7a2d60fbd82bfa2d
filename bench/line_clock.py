"""When the delay line's held bytes are due: wake-ups at a time on
``time.monotonic()``, never before it.

The event loop's own timers cannot do it cheaply: uvloop's clock counts whole
milliseconds as of the start of the loop's turn, so a ``call_later`` fires up
to a millisecond and a half early, and one rounded up to the next millisecond
fires up to one late on each of the line's two ways (a 50 ms line was a 52 ms
one). The stock loop's timers wait on ``epoll_wait``'s millisecond timeout,
rounded up: late by half a millisecond on average.

``TimerfdClock`` (the default) arms one Linux ``timerfd`` per line at the
earliest due time, to the nanosecond, and watches it like a socket: the line
wakes when the first bytes are due and releases everything due by then, and a
busy line wakes no more often than its bytes fall due.

``SpinClock`` is the line's old clock, kept for A/B runs of the instrument
only (``python -m bench.delay_line … --timer spin``): a loop timer one
millisecond early, then ``call_later(0)`` turns (a busy loop of up to 0.7 ms
before every release) until bytes are within 0.3 ms of due. It cost the line
1.0-1.8 CPU seconds per GiB carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import itertools
import math
import os
import time
from collections.abc import Callable
from typing import Protocol

# Due times, and the line's "now": the same clock as the timerfd's (CLOCK_MONOTONIC).
now = time.monotonic
TIMERS = ("timerfd", "spin")
DEFAULT_TIMER = "timerfd"


class Releasing(Protocol):
    """What a clock wakes: one direction of one connection through the line."""

    arm_token: int | None  # the clock's mark of the wake-up this side waits for

    def release(self) -> None:
        """Pass on what is due; called at or after the due time it was armed for."""


class Clock(Protocol):
    # How long before its due time a release may pass bytes on (0: never early).
    early: float

    def arm(self, side: Releasing, due: float) -> None:
        """Wake *side* at *due* (it has no wake-up pending)."""

    def disarm(self, side: Releasing) -> None:
        """*side* no longer waits for its wake-up."""

    def close(self) -> None:
        """Release the clock's resources; no wake-up comes after this."""


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


class _Timerfd:
    """A Linux timerfd on CLOCK_MONOTONIC (``os.timerfd_*`` is Python 3.13's)."""

    _libc = ctypes.CDLL(None, use_errno=True)

    def __init__(self) -> None:
        fd = self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"timerfd_create: {os.strerror(errno)}")
        self.fd: int = fd
        self._spec = _Itimerspec()

    def set(self, due: float | None) -> None:
        """Expire at *due* on CLOCK_MONOTONIC (at once if past); None: disarm."""
        value = self._spec.it_value
        if due is None:
            value.tv_sec = value.tv_nsec = 0
        else:
            # Rounded up: a float's nanoseconds must not make the wake-up early.
            ns = max(1, math.ceil(due * 1e9))
            value.tv_sec, value.tv_nsec = divmod(ns, 1_000_000_000)
        flags = 0 if due is None else _TFD_TIMER_ABSTIME
        if self._libc.timerfd_settime(self.fd, flags, ctypes.byref(self._spec), None) < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"timerfd_settime: {os.strerror(errno)}")

    def clear(self) -> None:
        """Consume an expiry (the fd stays readable until then)."""
        # Not readable if re-armed or disarmed since it was.
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


class TimerfdClock:
    """One timerfd for all of a line's sides: a heap of their due times, the
    fd armed at the earliest."""

    early = 0.0

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer = _Timerfd()
        self._heap: list[tuple[float, int, Releasing]] = []
        self._tokens = itertools.count(1)
        self._armed_at: float | None = None  # what the fd is set to
        self._firing = False
        self._closed = False
        loop.add_reader(self._timer.fd, self._fired)

    def arm(self, side: Releasing, due: float) -> None:
        if self._closed:  # a connection lost after its line closed
            return
        token = next(self._tokens)
        side.arm_token = token
        heapq.heappush(self._heap, (due, token, side))
        if not self._firing and (self._armed_at is None or due < self._armed_at):
            self._timer.set(due)
            self._armed_at = due

    def disarm(self, side: Releasing) -> None:
        # Its heap entry stays, stale: dropped when it comes up.
        side.arm_token = None

    def _fired(self) -> None:
        self._timer.clear()
        self._firing = True
        try:
            heap = self._heap
            # A side's release may arm it again, for bytes already due: those too.
            while heap and heap[0][0] <= now():
                _, token, side = heapq.heappop(heap)
                if side.arm_token == token:
                    side.arm_token = None
                    side.release()
            while heap and heap[0][2].arm_token != heap[0][1]:
                heapq.heappop(heap)
        finally:
            self._firing = False
            if not self._closed:
                self._armed_at = self._heap[0][0] if self._heap else None
                self._timer.set(self._armed_at)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._timer.fd)
            self._timer.close()
            self._heap.clear()


# The old clock's lead and slack (see SpinClock).
SPIN_TIMER_LEAD = 0.001
SPIN_RELEASE_EARLY = 0.0003


class SpinClock:
    """The old clock, for A/B runs only: a loop timer 1 ms early, then loop
    turns until the bytes are within 0.3 ms of due."""

    early = SPIN_RELEASE_EARLY

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handles: dict[int, asyncio.TimerHandle] = {}
        self._tokens = itertools.count(1)
        self._closed = False

    def arm(self, side: Releasing, due: float) -> None:
        if self._closed:  # a connection lost after its line closed
            return
        token = next(self._tokens)
        side.arm_token = token
        self._handles[token] = self._loop.call_later(
            max(0.0, due - now() - SPIN_TIMER_LEAD), self._fire, side, token
        )

    def _fire(self, side: Releasing, token: int) -> None:
        self._handles.pop(token, None)
        if side.arm_token == token:
            side.arm_token = None
            side.release()

    def disarm(self, side: Releasing) -> None:
        if side.arm_token is not None:
            handle = self._handles.pop(side.arm_token, None)
            if handle is not None:
                handle.cancel()
            side.arm_token = None

    def close(self) -> None:
        self._closed = True
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()


def make_clock(timer: str, loop: asyncio.AbstractEventLoop) -> Clock:
    """The clock named *timer* (one of ``TIMERS``) on *loop*."""
    makers: dict[str, Callable[[asyncio.AbstractEventLoop], Clock]] = {
        "timerfd": TimerfdClock,
        "spin": SpinClock,
    }
    if timer not in makers:
        raise ValueError(f"timer: must be one of {', '.join(TIMERS)}, not {timer!r}")
    return makers[timer](loop)
