"""A keepalive timer that is not made again for every read (``sluice.ssh_tuning``).

asyncssh cancels its keepalive timer and makes a new one each time a read
brings packets: three Python calls, a timer handle and the event loop's
timer bookkeeping, on every read of a busy tunnel. Here a read only notes
its time (``seen``); the one timer running, when it fires, sees the note and
sets itself again for the interval after the last read, else it does what
asyncssh's does (counts a missed round and sends a keepalive request, or
closes the connection). So a keepalive goes out when it would have: the
interval after the last packet received.

Applied only by ``sluice.ssh_tuning.tune_asyncssh`` (after its shape check).
"""

from __future__ import annotations

import time

from asyncssh.connection import SSHConnection

# Per connection, in its __dict__ (nothing added to asyncssh's class):
# when the last packet was received while the lazy timer ran, and the
# interval the running timer was set with.
SEEN = "_sluice_seen"
ARMED = "_sluice_keepalive"

monotonic = time.monotonic


def seen(self: SSHConnection) -> None:
    """Packets arrived on this connection now: what asyncssh's ``_reset_keepalive_timer``
    does, without a new timer while one runs with the current interval.
    (``sluice.ssh_receive``'s receive path does the same inline.)"""
    if self._keepalive_timer is None:
        if self._keepalive_interval:
            _Stock.reset(self)
        # else: asyncssh's would cancel no timer and set none
    elif self.__dict__.get(ARMED) == self._keepalive_interval and self._auth_complete:
        self.__dict__[SEEN] = monotonic()
    else:
        _Stock.reset(self)


class _Stock:
    """asyncssh's own methods, kept when the patch is applied."""

    reset = SSHConnection._reset_keepalive_timer


def install() -> None:
    """Patch asyncssh's connection class (once: ``sluice.ssh_tuning._apply``)."""
    original_set = SSHConnection._set_keepalive_timer
    original_callback = SSHConnection._keepalive_timer_callback
    _Stock.reset = SSHConnection._reset_keepalive_timer

    def _set_keepalive_timer(self: SSHConnection) -> None:
        original_set(self)
        self.__dict__[ARMED] = self._keepalive_interval

    def _keepalive_timer_callback(self: SSHConnection) -> None:
        last: float | None = self.__dict__.pop(SEEN, None)
        interval = self._keepalive_interval
        if last is not None and interval:
            left = last + interval - monotonic()
            if left > 0:
                # Packets came since the timer was set: the round starts
                # again from the last of them, as asyncssh's reset would.
                self._keepalive_timer = self._loop.call_later(left, self._keepalive_timer_callback)
                return
        original_callback(self)

    SSHConnection._set_keepalive_timer = _set_keepalive_timer  # type: ignore[method-assign]
    SSHConnection._keepalive_timer_callback = _keepalive_timer_callback  # type: ignore[method-assign]
    SSHConnection._reset_keepalive_timer = seen  # type: ignore[method-assign]
