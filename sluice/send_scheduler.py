"""A short sender's queue on the tunnel: small answers do not wait behind a
download's grown window (issue 22).

asyncssh 2.24.1 writes all that a channel's window allows into the event
loop's transport at once and ignores the transport's ``pause_writing``; the
kernel then takes up to its autotuned send buffer. With windows grown to a
long link (``sluice.window_tuning``), a small answer on another channel of
the same connection waited behind megabytes there: 25 MB in the transport
plus 4 MB in the kernel at a download's start on a 100 ms, 50 MB/s link,
a GET of 1.1 s (docs/22q-sender-queue.md). So, per tunnel connection:

- ``TCP_NOTSENT_LOWAT`` on the socket keeps the kernel's not-yet-sent queue
  near ``LOWAT_SECONDS`` of the connection's rate while busy (``TCP_INFO``,
  taken at most every ``SAMPLE_SECONDS`` as channel data is sent),
  within ``LOWAT`` and ``LOWAT_MAX``: the socket takes more only as the link
  sends. A fixed 128 KiB made the agent write each 256 KiB packet of a
  loopback download in two or more system calls whenever the relay's socket
  was full (11-13 writes per MiB instead of 4; tests/integration/
  test_packet_writes.py); where the link is that fast, a packet's worth of
  queue costs a small answer under 3 ms, and on a 50 MB/s line the mark
  stayed at 128-290 KiB (bench.long_link);
- the transport's write-buffer limits are ``HIGH_WATER`` / half of it, and a
  channel's flush goes through a round robin: a channel with data and window
  sends one ``QUANTUM`` (one packet) per turn, and only while the transport
  is not paused; the rest waits in the channel's own send buffer, where
  asyncssh's backpressure on the channel stops the stream's reader, until
  the transport drains (``resume_writing``). Packets of different streams
  interleave, a packet at a time.

Control packets (window adjusts, opens, EOF, close) bypass the scheduler,
as does a channel's flush while nothing else waits, the transport is not
paused and all the channel may send fits in one turn: the common case
(a small answer) costs no call of the round robin's.

When: applied (class patches) by ``sluice.ssh_tuning.tune_asyncssh`` — so
``SLUICE_SSH_TUNING=off`` turns it off with the rest, and an asyncssh of
another shape (``sluice.ssh_shape``) leaves it out — unless
``SLUICE_SEND_SCHEDULER=off``; then ``start()`` puts each tunnel connection
under it (the agent's: downloads; the relay's: uploads and requests).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Mapping
from typing import Any, Final

from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection

from sluice.switches import OFF, ON

# "off" (or 0, false, no) turns the scheduler alone off; "on" or unset: on
# with HIGH_WATER; a number of bytes (at least QUANTUM): that high-water mark
# (for benchmarks).
SWITCH: Final = "SLUICE_SEND_SCHEDULER"

# The transport's high-water mark: what may wait in the event loop ahead of
# a small answer, besides the kernel's LOWAT (256 KiB: 5 ms at 50 MB/s).
# A/B on a 50 ms, 50 MB/s link (notes of branch issue-22s): 1 MiB and 4 MiB
# gained no rate and no better p99; stock asyncssh held up to 25 MB here.
HIGH_WATER: Final = 256 * 1024
# The kernel's not-yet-sent queue at the least (and until a connection's
# rate is known): under 3 ms at 50 MB/s. A/B (50 and 100 ms, 50 MB/s;
# loopback): 64 KiB no lower p99 over 4 runs, a fixed 512 KiB a higher
# p50/p99.
LOWAT: Final = 128 * 1024
# The low-water mark follows the link: this long a queue at the connection's
# rate while busy (128 KiB at 50 MB/s; 1 MiB from 420 MB/s on).
LOWAT_SECONDS: Final = 0.0025
LOWAT_MAX: Final = 1024 * 1024
# How often (at most) a connection under load takes its rate: a
# getsockopt, and a setsockopt when the mark moves by a quarter or more.
SAMPLE_SECONDS: Final = 0.05
# One turn: a whole packet of Sluice's size (sshconfig.CHANNEL_MAX_PKTSIZE).
# 64 KiB turns made 64 KiB packets and cost a third of the loopback
# download rate (127 -> 85 MB/s); 256 KiB turns cost nothing measurable.
QUANTUM: Final = 256 * 1024

_TCP_NOTSENT_LOWAT: Final = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # linux/tcp.h
_TCP_INFO: Final = getattr(socket, "TCP_INFO", 11)
# struct tcp_info (linux/tcp.h, Linux 4.10+): __u64 tcpi_bytes_acked at 120 and
# tcpi_busy_time (µs with data in flight or waiting for window or buffer;
# never the idle time) at 168.
_U64: Final = struct.Struct("=Q")
_BYTES_ACKED_AT: Final = 120
_BUSY_TIME_AT: Final = 168
_TCP_INFO_LEN: Final = _BUSY_TIME_AT + _U64.size
# tcpi_rtt (__u32, µs): the kernel's smoothed round trip (kernel_rtt).
_U32: Final = struct.Struct("=I")
_RTT_AT: Final = 68
# The least busy time (µs; the kernel counts it in jiffies) and bytes a rate
# is taken over: a few small answers, each busy for a jiffy or so, would make
# a loopback connection look slow and reset the mark between downloads.
_MIN_BUSY_US: Final = 20_000
_MIN_ACKED: Final = 1024 * 1024
_KEY: Final = "_sluice_scheduler"
# A socket that closed (the connection lost, asyncssh not told yet): OSError
# (EBADF) from asyncio's socket object, ValueError ("negative file
# descriptor") from uvloop's; the fixed mark from then on.
_CLOSED: Final = (OSError, ValueError)
_NEVER: Final = float("inf")


def kernel_rtt(sock: Any) -> float | None:
    """The kernel's smoothed round trip of TCP socket *sock* (``TCP_INFO``
    tcpi_rtt), in seconds; None if it has none (not TCP, closed).

    Only as far as the next TCP hop: behind a TCP proxy (or a user-space
    delay line) it is the proxy's round trip, not the link's."""
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _RTT_AT + _U32.size)
    except _CLOSED:
        return None
    if len(info) < _RTT_AT + _U32.size:
        return None
    (rtt_us,) = _U32.unpack_from(info, _RTT_AT)
    return float(rtt_us) / 1e6 if rtt_us else None


class _Scheduler:
    """Per connection: whether the transport is paused, the channels
    waiting for a turn (a dict as an ordered set), and the socket's
    low-water mark (``sock`` None: not a TCP socket, or a kernel without
    the counters: the fixed mark)."""

    __slots__ = ("acked", "busy_us", "lowat", "next_sample", "paused", "pumping", "ready", "sock")

    def __init__(self, sock: Any = None) -> None:
        self.paused = False
        self.pumping = False
        self.ready: dict[SSHChannel[Any], None] = {}
        self.sock = sock  # Any: uvloop's PseudoSocket or a socket.socket
        self.lowat = LOWAT
        # When the rate is next due (never without a socket to take it from:
        # the flush tests this before the call).
        self.next_sample = 0.0 if sock is not None else _NEVER
        self.acked = -1  # tcpi_bytes_acked and tcpi_busy_time at the last rate taken
        self.busy_us = 0

    def follow_rate(self) -> None:
        """Set the socket's low-water mark from its rate while busy, if due.

        The rate is bytes acknowledged per µs of busy time since the last
        one taken, not the kernel's per-packet delivery rate: a receiver that
        reads in bursts (a relay back from a stop, a line that paces its
        reads) makes single samples look like loopback."""
        now = time.monotonic()
        if self.sock is None or now < self.next_sample:
            return
        self.next_sample = now + SAMPLE_SECONDS
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
        except _CLOSED:
            self.sock, self.next_sample = None, _NEVER
            return
        if len(info) < _TCP_INFO_LEN:
            self.sock, self.next_sample = None, _NEVER  # a kernel before 4.10: the fixed mark
            return
        (acked,) = _U64.unpack_from(info, _BYTES_ACKED_AT)
        (busy_us,) = _U64.unpack_from(info, _BUSY_TIME_AT)
        if self.acked < 0:
            self.acked, self.busy_us = acked, busy_us
            return
        busy = busy_us - self.busy_us
        if busy < _MIN_BUSY_US or acked - self.acked < _MIN_ACKED:
            return
        rate = (acked - self.acked) / (busy / 1e6)
        self.acked, self.busy_us = acked, busy_us
        lowat = min(max(int(rate * LOWAT_SECONDS), LOWAT), LOWAT_MAX)
        if abs(lowat - self.lowat) * 4 < self.lowat:
            return
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, lowat)
        except _CLOSED:
            self.sock, self.next_sample = None, _NEVER
            return
        self.lowat = lowat


class _Installed:
    """The class patches in this process: the high-water mark, 0 while not in place."""

    high_water = 0


def high_water(environ: Mapping[str, str]) -> int:
    """The high-water mark SLUICE_SEND_SCHEDULER in *environ* asks for; 0: off."""
    value = environ.get(SWITCH, "").strip().lower()
    if value in OFF:
        return 0
    if value in ON:
        return HIGH_WATER
    try:
        hwm = int(value)
    except ValueError:
        hwm = -1
    if hwm < QUANTUM:
        raise ValueError(
            f"{SWITCH}={value!r}: must be 'on', 'off' or a high-water mark of at least "
            f"{QUANTUM} bytes"
        )
    return hwm


def installed() -> bool:
    """Whether the scheduler's class patches are in place in this process."""
    return _Installed.high_water > 0


def start(ssh: SSHConnection) -> bool:
    """Put *ssh* (a tunnel connection, its transport connected) under the
    scheduler, if the tuning call installed it. Returns whether it did."""
    hwm = _Installed.high_water
    transport: Any = ssh._transport  # Any: asyncssh's proxy-command tunnel is no Transport
    if not hwm or transport is None or _KEY in ssh.__dict__:
        return False
    if not hasattr(transport, "set_write_buffer_limits"):
        return False  # a proxy-command tunnel: nothing would pause it
    transport.set_write_buffer_limits(high=hwm, low=hwm // 2)
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, LOWAT)
        except _CLOSED:
            sock = None
    else:
        sock = None
    ssh.__dict__[_KEY] = _Scheduler(sock)
    return True


def clear_to_send(ssh: SSHConnection) -> bool:
    """Whether channel data may go out on *ssh* now, past the round robin: the
    transport is not paused and no channel waits for a turn (always, for a
    connection not under the scheduler). Takes the connection's rate, if due,
    as the scheduler's own flush does."""
    sched: _Scheduler | None = ssh.__dict__.get(_KEY)
    if sched is None:
        return True
    if sched.paused or sched.ready:
        return False
    if time.monotonic() >= sched.next_sample:  # (inline: a call per packet otherwise)
        sched.follow_rate()
    return True


def install(environ: Mapping[str, str]) -> None:
    """Patch asyncssh's classes (once; after ``batch_channel_writes``, whose
    flush this one wraps) unless SLUICE_SEND_SCHEDULER in *environ* is off.
    Only ``sluice.ssh_tuning.tune_asyncssh`` calls it, after the shape check."""
    hwm = high_water(environ)
    if not hwm or installed():
        return
    _patch()
    _Installed.high_water = hwm


def _patch() -> None:
    inner = SSHChannel._flush_send_buf  # asyncssh's, or ssh_send's batching one

    def flush_quantum(chan: SSHChannel[Any], turn: int) -> None:
        window = chan._send_window
        cap = min(window, turn)
        chan._send_window = cap
        try:
            inner(chan)
        finally:
            chan._send_window += window - cap

    def pump(sched: _Scheduler) -> None:
        if sched.pumping:
            return  # a flush inside a turn (a session callback): the loop below takes it
        sched.pumping = True
        try:
            while sched.ready and not sched.paused:
                chan = next(iter(sched.ready))
                del sched.ready[chan]
                if chan._conn is None or chan._send_chan is None:
                    continue  # closed while it waited
                if chan._send_buf and chan._send_window:
                    # Alone: as much as the kernel's mark takes at once, in
                    # one write (a packet a write cost the relay 3 system
                    # calls per MiB of an upload); else a packet a turn.
                    flush_quantum(chan, QUANTUM if sched.ready else max(QUANTUM, sched.lowat))
                    if chan._send_buf and chan._send_window:
                        sched.ready[chan] = None  # to the back of the round
                else:
                    inner(chan)  # EOF/close after the data, pause/resume
        finally:
            sched.pumping = False

    def _flush_send_buf(self: SSHChannel[Any]) -> None:
        # _sched, inline (per flush).
        ssh = self._conn
        sched: _Scheduler | None = ssh.__dict__.get(_KEY) if ssh is not None else None
        if sched is None or not (self._send_buf and self._send_window):
            inner(self)
            return
        # Channel data to send: the time to take the rate, if due. (Not only
        # as the transport resumes: a packet the kernel takes in two writes
        # need not fill the transport to its high-water mark.) The test
        # inline: a call per flush otherwise.
        if time.monotonic() >= sched.next_sample:
            sched.follow_rate()
        if not (sched.ready or sched.pumping or sched.paused):
            turn = QUANTUM if sched.lowat < QUANTUM else sched.lowat
            if self._send_buf_len <= turn or self._send_window <= turn:
                # Alone, and all it may send fits in one turn: the turn
                # itself, without the round's calls (ready, pump,
                # flush_quantum: what they would do here). A flush from a
                # session callback inside it waits its turn, as inside pump.
                sched.pumping = True
                try:
                    inner(self)
                finally:
                    sched.pumping = False
                if not sched.ready:
                    return
                pump(sched)
                if self in sched.ready:
                    self._pause_resume_writing()
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
            sched.follow_rate()
            pump(sched)

    SSHChannel._flush_send_buf = _flush_send_buf  # type: ignore[method-assign]
    SSHConnection.pause_writing = pause_writing  # type: ignore[method-assign]
    SSHConnection.resume_writing = resume_writing  # type: ignore[method-assign]
