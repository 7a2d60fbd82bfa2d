"""PROTOTYPE (issue 22, off by default): a short sender's queue on the tunnel.

When: ``SLUICE_SEND_SCHEDULER=<high-water bytes>`` is in the agent's
environment (unset or 0: off, asyncssh as before). Then, on the agent's
tunnel connection:

- ``TCP_NOTSENT_LOWAT`` (``SLUICE_SEND_LOWAT``, default 128 KiB) keeps the
  kernel's not-yet-sent queue short: the socket takes more only as the link
  sends;
- the event loop transport's write buffer limits are set to the high-water
  mark, and asyncssh's channel flushes go through a round-robin scheduler:
  a channel with data and window sends one quantum (256 KiB) per turn, and
  only while the transport is not paused; the rest stays in the channel's
  own send buffer (where asyncssh's own backpressure stops the stream's
  reader) until the transport drains (``resume_writing``).

asyncssh 2.24.1 writes a channel's whole window into the transport at once
and ignores the transport's pause_writing, so with windows grown for a long
link a small answer waits behind megabytes (docs/22q-sender-queue.md).
Control packets (window adjusts, opens, keepalives) bypass the scheduler.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Final

from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection

SWITCH: Final = "SLUICE_SEND_SCHEDULER"
LOWAT: Final = "SLUICE_SEND_LOWAT"
# One turn: a whole packet of Sluice's size (sshconfig.CHANNEL_MAX_PKTSIZE).
# 64 KiB turns (64 KiB packets) cost a third of the loopback download rate.
QUANTUM: Final = 256 * 1024
_TCP_NOTSENT_LOWAT: Final = 25  # linux/tcp.h
_KEY: Final = "_sluice_scheduler"


class _Scheduler:
    """Per connection: whether the transport is paused, and the channels
    waiting for a turn (a dict as an ordered set)."""

    __slots__ = ("paused", "pumping", "ready")

    def __init__(self) -> None:
        self.paused = False
        self.pumping = False
        self.ready: dict[SSHChannel[Any], None] = {}


class _Patched:
    done = False


def high_water(environ: dict[str, str] | None = None) -> int:
    """The high-water mark the environment asks for; 0: the scheduler is off."""
    value = (os.environ if environ is None else environ).get(SWITCH, "").strip()
    if not value or value.lower() in ("off", "0"):
        return 0
    hwm = int(value)
    if hwm < QUANTUM:
        raise ValueError(f"{SWITCH}={value}: must be at least {QUANTUM} bytes, or 0 for off")
    return hwm


def start(ssh: SSHConnection) -> bool:
    """Put *ssh* under the scheduler if the environment asks for it."""
    hwm = high_water()
    transport = ssh._transport
    if not hwm or transport is None:
        return False
    _patch_once()
    ssh.__dict__[_KEY] = _Scheduler()
    transport.set_write_buffer_limits(high=hwm, low=hwm // 2)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        lowat = int(os.environ.get(LOWAT, str(128 * 1024)))
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, lowat)
    return True


def _sched(chan: SSHChannel[Any]) -> _Scheduler | None:
    ssh = chan._conn
    return None if ssh is None else ssh.__dict__.get(_KEY)


def _patch_once() -> None:
    if _Patched.done:
        return
    _Patched.done = True
    inner = SSHChannel._flush_send_buf  # asyncssh's, or ssh_tuning's batching one

    def flush_quantum(chan: SSHChannel[Any]) -> None:
        window = chan._send_window
        cap = min(window, QUANTUM)
        chan._send_window = cap
        try:
            inner(chan)
        finally:
            chan._send_window += window - cap

    def pump(sched: _Scheduler) -> None:
        if sched.pumping:
            return
        sched.pumping = True
        try:
            while sched.ready and not sched.paused:
                chan = next(iter(sched.ready))
                del sched.ready[chan]
                if chan._conn is None or chan._send_chan is None:
                    continue
                if chan._send_buf and chan._send_window:
                    flush_quantum(chan)
                    if chan._send_buf and chan._send_window:
                        sched.ready[chan] = None  # to the back of the round
                else:
                    inner(chan)  # EOF/close after the data, pause/resume
        finally:
            sched.pumping = False

    def _flush_send_buf(self: SSHChannel[Any]) -> None:
        sched = _sched(self)
        if sched is None or not (self._send_buf and self._send_window):
            inner(self)
            return
        sched.ready[self] = None
        pump(sched)
        if self in sched.ready:
            # Waiting for its turn: asyncssh's own backpressure on the stream
            # (its session pauses above the channel's high-water mark).
            self._pause_resume_writing()

    original_pause = SSHConnection.pause_writing
    original_resume = SSHConnection.resume_writing

    def pause_writing(self: SSHConnection) -> None:
        sched: _Scheduler | None = self.__dict__.get(_KEY)
        if sched is not None:
            sched.paused = True
        original_pause(self)

    def resume_writing(self: SSHConnection) -> None:
        original_resume(self)
        sched: _Scheduler | None = self.__dict__.get(_KEY)
        if sched is not None:
            sched.paused = False
            pump(sched)

    SSHChannel._flush_send_buf = _flush_send_buf  # type: ignore[method-assign]
    SSHConnection.pause_writing = pause_writing  # type: ignore[method-assign]
    SSHConnection.resume_writing = resume_writing  # type: ignore[method-assign]
