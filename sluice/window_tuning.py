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

import time
from collections.abc import Callable
from typing import Any

from asyncssh.channel import SSHChannel

from sluice.ssh_tuning import set_receive_window

# A wait for credit this long means the peer is far away (a loopback or LAN
# hop answers a window top-up well within it, even on a busy machine).
STALL = 0.004  # seconds
# Stalls in a row before the window grows.
STALLS_TO_GROW = 2


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
        "_left",
        "_stalls",
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
        # (data that may arrive before the top-up reaches the peer).
        self._left: int | None = None
        self._emptied_at: float | None = None  # when that old credit was used up
        self._stalls = 0

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
        self._credit = credit
        if self._emptied_at is not None:
            # The first data after the peer had used up all the credit it had
            # when the last top-up went out: it waited this long for that top-up.
            waited = self._clock() - self._emptied_at
            self._emptied_at = None
            self._stalls = self._stalls + 1 if waited >= STALL else 0
            if self._stalls >= (1 if self.grown else STALLS_TO_GROW):
                self._stalls = 0
                self._grow(chan)
        elif self._left is not None:
            self._left -= size
            if self._left <= 0:
                self._left = None
                self._emptied_at = self._clock()
        if credit > before and self._left is None and self._emptied_at is None:
            # A top-up went out just now.
            if before <= 0:
                self._emptied_at = self._clock()
            else:
                self._left = before

    def _grow(self, chan: SSHChannel[Any]) -> None:
        more = self._budget.take(self.window)
        if more:
            self.window += more
            set_receive_window(chan, self.window)

    def release(self) -> None:
        """The stream closed: its growth goes back to the budget."""
        self._budget.give_back(self.window - self.base)
        self.window = self.base
