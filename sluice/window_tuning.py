"""Receive windows that grow to the link, within a per-agent budget.

A stream moves at most one receive window per round trip: 256 KiB at 50 ms
is 5 MB/s, whatever the link could carry. OpenSSH is bounded the same way by
its fixed 2 MiB; HPN-SSH lifts that bound with windows that grow, as Linux
grows a socket's receive buffer (tcp_rcv_space_adjust) and QUIC stacks grow
their flow-control windows.

Here a stream's window doubles when the stream has been waiting for it:
after a top-up (asyncssh grants more once half the window is used), the
peer sends what credit it still had, and if the next data comes only after
a pause of at least ``STALL`` — the round trip of a long link, which a
loopback or LAN hop never shows — the peer sat with no credit, waiting for
the top-up. The first growth takes two such waits in a row, so one
scheduling hiccup does not count. A
reader that stops reading stops its stream's growth by itself: asyncssh
returns credit only as data is delivered, so no top-up, no growth, and what
the stream holds stays within its window. Every growth comes out of a
per-agent ``WindowBudget`` (a setting, e.g. 32 MiB): the most all of an
agent's streams may have in flight beyond their starting windows. A stream
gives its growth back when it closes.

A window only grows: a stream that stalled on a long link will stall again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from asyncssh.channel import SSHChannel
from asyncssh.constants import MSG_CHANNEL_WINDOW_ADJUST
from asyncssh.packet import UInt32

from sluice.ssh_tuning import set_receive_window

# A wait for credit this long means the peer is far away (a loopback or LAN
# hop answers a window top-up well within it, even on a busy machine).
STALL = 0.004  # seconds
# Stalls in a row before the window first grows.
STALLS_TO_GROW = 2
# A growth that did not speed the stream up by this factor was futile; after
# PLATEAU futile growths in a row, the window stops growing.
SPEEDUP = 1.2
PLATEAU = 2
# A grown window is topped up once this share of it has been used.
TOP_UP_SHARE = 8


class WindowBudget:
    """Per agent: how much all its streams' windows may grow beyond their start."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.granted = 0

    def __repr__(self) -> str:
        return f"<WindowBudget {self.granted}/{self.cap}>"

    def take(self, wanted: int) -> int:
        """Up to *wanted* bytes of growth, as much as the budget has left."""
        got = max(0, min(wanted, self.cap - self.granted))
        self.granted += got
        return got

    def give_back(self, amount: int) -> None:
        self.granted -= amount


class WindowTuner:
    """One stream's receive window: starts at *base*, grows while the stream
    waits on it (see the module docstring). Feed it every data delivery."""

    __slots__ = (
        "_budget",
        "_clock",
        "_credit",
        "_emptied_at",
        "_futile",
        "_grown_at",
        "_left",
        "_old_credit",
        "_pace",
        "_rate",
        "_rtt",
        "_since_growth",
        "_stalls",
        "_topped_at",
        "base",
        "window",
    )

    def __init__(
        self, budget: WindowBudget, base: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._budget = budget
        self._clock = clock
        self.base = base
        self.window = base
        self._credit = base  # the peer's credit as of the last delivery
        # After a top-up: the credit the peer still had when it went out
        # (data that may arrive before the top-up reaches the peer), when it
        # went out, when that old credit was used up, and how fast it came in.
        self._left: int | None = None
        self._old_credit = 0
        self._topped_at = 0.0
        self._emptied_at: float | None = None
        self._rate = 0.0  # bytes/s
        self._rtt = math.inf  # the shortest time from a top-up to the data it let through
        self._stalls = 0
        # Plateau: bytes and time since the last growth, the best pace so far,
        # and growths in a row that did not speed the stream up.
        self._since_growth = 0
        self._grown_at = clock()
        self._pace = 0.0
        self._futile = 0

    def __repr__(self) -> str:
        return f"<WindowTuner {self.window} (base {self.base})>"

    @property
    def grown(self) -> bool:
        return self.window > self.base

    def received(self, chan: SSHChannel[Any], size: int) -> None:
        """*size* bytes were delivered from *chan* (asyncssh has already topped
        the window up, if it was due)."""
        credit = chan._recv_window
        before = self._credit - size  # the peer's credit before any top-up now
        if self.grown and credit <= self.window - self.window // TOP_UP_SHARE:
            # Top up in smaller steps than asyncssh's half window: a grown
            # window then flows at the pace data is delivered, not in bursts
            # of half a window that queue up at the slower end.
            chan.send_packet(MSG_CHANNEL_WINDOW_ADJUST, UInt32(self.window - credit))
            chan._recv_window = credit = self.window
        self._credit = credit
        self._since_growth += size
        now = self._clock()
        if self._emptied_at is not None:
            # The first data after the peer had used up all the credit it had
            # when the last top-up went out: it waited this long for that top-up.
            waited = now - self._emptied_at
            self._emptied_at = None
            if waited >= STALL:
                self._stalls += 1
                self._rtt = min(self._rtt, now - self._topped_at)
            else:
                self._stalls = 0
            if self._stalls >= (1 if self.grown else STALLS_TO_GROW):
                self._stalls = 0
                self._grow(chan, now)
        elif self._left is not None:
            self._left -= size
            if self._left <= 0:
                self._left = None
                self._emptied_at = now
                took = now - self._topped_at
                self._rate = self._old_credit / took if took > 0 else 0.0
        if credit > before and self._left is None and self._emptied_at is None:
            # A top-up went out just now.
            self._topped_at = now
            if before <= 0:
                self._emptied_at = now
                self._rate = 0.0
            else:
                self._left = self._old_credit = before

    def _grow(self, chan: SSHChannel[Any], now: float) -> None:
        # A larger window that did not make the stream faster means the waits
        # are not the round trip (a busy machine, an application pausing):
        # after PLATEAU such growths in a row the window stays as it is.
        pace = self._since_growth / max(now - self._grown_at, 1e-6)
        if self.grown:
            self._futile = self._futile + 1 if pace < self._pace * SPEEDUP else 0
            if self._futile >= PLATEAU:
                return
        self._pace = max(self._pace, pace)
        self._since_growth = 0
        self._grown_at = now
        # A round trip's worth at the pace data comes in when it flows (at
        # most double): not more, since what is beyond it only queues at the
        # slower end, ahead of every other stream's data.
        if self._rate > 0 and self._rtt < math.inf:
            wanted = int(self._rate * self._rtt) - self.window
            if wanted <= 0:
                return  # the window already covers the round trip: a hiccup
            more = min(self.window, max(wanted, self.window // 4))
        else:
            more = self.window
        more = self._budget.take(more)
        if more:
            self.window += more
            set_receive_window(chan, self.window)

    def release(self) -> None:
        """The stream closed: its growth goes back to the budget."""
        self._budget.give_back(self.window - self.base)
        self.window = self.base
