"""One socket write per event-loop turn for the tunnel's channel data (issue 22).

At c=32 keep-alive requests a loop turn on the agent handles many answers,
each a channel flush of one or two SSH packets; uvloop tries a ``send`` for
every write while its buffer is empty, so 20 answers made 20 system calls on
the tunnel socket where one ``writev`` of all of them does. With this on, the
packets of a channel flush (``sluice.ssh_tuning``'s batching flush, already
encrypted, sequence numbers taken) go to the connection's ``Outbox``; the
first of a turn schedules one ``loop.call_soon`` that writes them all, in
order, at the end of the turn.

Why it cannot stall the tunnel (an earlier coalescing, a wrapper around the
whole transport, stalled the agent's ready signal):

- only channel flushes and window top-ups are held, never the other
  packets asyncssh sends on its own: channel opens and their replies, close
  and EOF sent outside a flush, keepalives, global requests, key exchange
  and disconnect go through ``SSHConnection._send`` as before, which first
  writes whatever the outbox holds (``flush``): every byte leaves in the
  order asyncssh produced it, and no such packet waits for the end of the
  turn. A window top-up (sent only while no key exchange is due) waits for
  the end of the turn it was made in, never later, and leaves with the
  turn's other packets: beside a download, each top-up was a write of its
  own that woke the peer (a 128 KiB window tops up after every packet).
  (Tried and dropped, issue 28d: a top-up written at once when nothing else
  is held, so a shared-window sender stalled for it starts its next packet
  while the relay still writes the last to its caller: a download forced to
  the shared window, 7 interleaved rounds, 394 vs 380 MB/s, within noise.);
- the end-of-turn write is a plain ``call_soon`` on the connection's loop;
  holding at most ``LIMIT`` bytes (a bulk packet is written at once, so the
  send scheduler's high-water mark still pauses the channels in time);
- closing: asyncssh's ``disconnect`` sends its packet through ``_send``
  (which flushes first), and its ``_force_close`` aborts the transport with a
  ``call_soon`` that comes after the turn's flush (a flush during which a
  session callback closed the connection is written at once, not held: its
  turn's end would come after that abort); what is still held when the
  transport is already closing is dropped, as asyncssh's abort drops its
  buffer.

When: ``sluice.ssh_tuning.tune_asyncssh`` installs it with the other tweaks
(so ``SLUICE_SSH_TUNING=off`` and the shape check leave it out) unless
``SLUICE_SEND_COALESCING=off``; then ``start()`` puts each tunnel connection
under it (the relay's when it connects, the agent's once its tunnel is set
up).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

from asyncssh.connection import SSHConnection

from sluice.gathered_write import JOINED_FOR
from sluice.switches import switched_on

# "off" (or 0, false, no) turns the coalescing alone off; "on" or unset: on.
SWITCH: Final = "SLUICE_SEND_COALESCING"

# What an outbox may hold before it writes at once: many small answers, but
# not a bulk packet (256 KiB), which gains nothing from waiting and must reach
# the transport before the send scheduler decides whether it is paused.
LIMIT: Final = 64 * 1024

# Where a connection's Outbox is kept, in its __dict__ (ssh_send reads it inline).
KEY: Final = "_sluice_outbox"


class _Installed:
    on = False


def enabled(environ: Mapping[str, str]) -> bool:
    """Whether SLUICE_SEND_COALESCING in *environ* leaves the coalescing on (the default)."""
    return switched_on(environ, SWITCH)


def install(environ: Mapping[str, str]) -> None:
    """Allow ``start()`` in this process unless SLUICE_SEND_COALESCING in
    *environ* is off. Only ``sluice.ssh_tuning.tune_asyncssh`` calls it, after
    the shape check and ``batch_channel_writes`` (whose batches go here)."""
    if enabled(environ):
        _Installed.on = True


def installed() -> bool:
    """Whether tunnel connections in this process coalesce their writes."""
    return _Installed.on


class Outbox:
    """The encrypted packets of one connection's channel flushes in this
    loop turn, written together when the turn ends or before any other packet."""

    __slots__ = ("joining", "loop", "parts", "scheduled", "size", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # While asyncssh sends a window top-up (ssh_send): it is held too.
        self.joining = False
        self.parts: list[bytes] = []
        self.size = 0
        self.scheduled = False
        self.transport: Any = None  # Any: asyncssh's, typed as a plain Transport

    def __repr__(self) -> str:
        return f"<Outbox packets={len(self.parts)} bytes={self.size} scheduled={self.scheduled}>"

    def add(self, transport: Any, batch: list[bytes]) -> None:
        """Hold *batch* (a flush's packets, in order) for *transport*."""
        if transport is not self.transport and self.parts:
            self.flush()  # (a connection has one transport; kept simple if not)
        self.transport = transport
        self.parts.extend(batch)
        for part in batch:
            self.size += len(part)
        if self.size >= LIMIT:
            self.flush()
        elif not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush, True)

    def flush(self, turn_ended: bool = False) -> None:
        """Write what is held, in one call, now (*turn_ended*: the call
        scheduled for the end of the loop turn; one Python call, not two)."""
        if turn_ended:
            self.scheduled = False
        parts = self.parts
        if not parts:
            return
        transport = self.transport
        self.parts = []
        self.size = 0
        self.transport = None  # (a closed connection's outbox keeps no transport alive)
        if transport.is_closing():
            return  # aborted: asyncssh drops what its transport holds, too
        # gathered_write.write_parts, inline (a call per flush): joined for
        # the asyncio transport whose writelines never pauses its protocol.
        try:  # not contextlib.suppress: three Python calls, on every flush
            if len(parts) == 1:
                transport.write(parts[0])
            elif type(transport) is JOINED_FOR:
                transport.write(b"".join(parts))
            else:
                transport.writelines(parts)
        except ConnectionError:  # as asyncssh's own _send
            pass


def outbox(ssh: SSHConnection) -> Outbox | None:
    """*ssh*'s outbox, if it is under the coalescing."""
    held: Outbox | None = ssh.__dict__.get(KEY)  # not typing.cast: a call per packet
    return held


def start(ssh: SSHConnection) -> bool:
    """Coalesce *ssh*'s channel writes from now on (a tunnel connection, its
    transport connected), if the tuning call installed the coalescing.
    Returns whether it did."""
    transport: Any = ssh._transport  # Any: asyncssh's proxy-command tunnel is no Transport
    if not _Installed.on or transport is None or KEY in ssh.__dict__:
        return False
    if not (hasattr(transport, "writelines") and hasattr(transport, "is_closing")):
        return False  # a proxy-command tunnel: written as it comes
    ssh.__dict__[KEY] = Outbox(asyncio.get_running_loop())
    return True
