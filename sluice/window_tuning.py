"""Receive windows that grow to the link, within a per-agent budget.

A stream moves at most one receive window per round trip: 256 KiB at 50 ms
is 5 MB/s, whatever the link could carry. OpenSSH is bounded the same way by
its fixed 2 MiB; HPN-SSH lifts that bound with windows that grow, as Linux
grows a socket's receive buffer (tcp_rcv_space_adjust) and QUIC stacks grow
their flow-control windows.

Here a stream's window grows when the stream has been waiting for it:
after a top-up (asyncssh grants more once half the window is used), the
peer sends what credit it still had, and if the next data comes only after
a pause of at least ``STALL`` (the round trip of a long link, which a
loopback or LAN hop never shows) the peer sat with no credit, waiting for
the top-up. Growth probes as TCP's slow start does: after two such
waits in a row (the pace between them is the current window's), the window
doubles while doubling pays (the pace rose by ``FAST_GAIN``), then grows in
quarter steps, since a window beyond the round trip's worth only queues data
at the slower end, ahead of every other stream's. It stops when the waits
do, or when the budget is spent.
A grown window is topped up every eighth used, so data flows at the pace it
is delivered rather than in bursts of half a window.

A reader that stops reading stops its stream's growth by itself: asyncssh
returns credit only as data is delivered, so no top-up, no growth, and what
the stream holds stays within its window. Every growth comes out of a
per-agent ``WindowBudget`` (a setting, 32 MiB by default): the most all of
an agent's streams may have in flight beyond their starting windows. A
stream gives its growth back when it closes.
"""

from __future__ import annotations

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
# While each growth raises the pace by this factor the window doubles; after
# one that does not, it grows in quarter steps.
FAST_GAIN = 1.6
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
        "_fast",
        "_grown_at",
        "_left",
        "_measuring",
        "_pace",
        "_since_growth",
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
        # After a top-up: the credit the peer still had when it went out (data
        # that may arrive before the top-up reaches the peer), and when that
        # old credit was used up.
        self._left: int | None = None
        self._emptied_at: float | None = None
        self._measuring = False  # since the last wait, at the current window
        # Probing: bytes and time since the last wait, the pace before the
        # last growth, and doubling or quarter steps.
        self._since_growth = 0
        self._grown_at = clock()
        self._pace = 0.0
        self._fast = True  # doubling

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
            if waited < STALL:
                self._measuring = False
            elif self._measuring:
                # A second wait in a row, a round trip or more after the first:
                # the pace in between is the current window's.
                self._measuring = False
                self._grow(chan, now)
            else:
                self._measuring = True
                self._since_growth = 0
                self._grown_at = now
        elif self._left is not None:
            self._left -= size
            if self._left <= 0:
                self._left = None
                self._emptied_at = now
        if credit > before and self._left is None and self._emptied_at is None:
            # A top-up went out just now.
            if before <= 0:
                self._emptied_at = now
            else:
                self._left = before

    def _grow(self, chan: SSHChannel[Any], now: float) -> None:
        # Probe as TCP's slow start does: double while doubling pays (the pace
        # since the last wait well up on the pace before it), then in quarter
        # steps, so that the window ends near the round trip's worth rather
        # than up to twice it: what is beyond it only queues at the slower
        # end, ahead of every other stream's data. Growth ends by itself when
        # the waits do (the window covers the round trip) or the budget is spent.
        pace = self._since_growth / max(now - self._grown_at, 1e-6)
        if self.grown and self._pace > 0 and pace < self._pace * FAST_GAIN:
            self._fast = False  # near the round trip's worth: smaller steps from here
        self._pace = pace
        more = self._budget.take(self.window if self._fast else self.window // 4)
        if more:
            self.window += more
            set_receive_window(chan, self.window)

    def release(self) -> None:
        """The stream closed: its growth goes back to the budget."""
        self._budget.give_back(self.window - self.base)
        self.window = self.base
