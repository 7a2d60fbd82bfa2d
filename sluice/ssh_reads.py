"""Reading an SSH connection's socket in reads that hold whole packets.

uvloop reads a plain protocol's socket 256,000 bytes at a time, and a full
256 KiB channel packet is 262,180 bytes on the wire: every bulk packet used
to span two reads, which cost a second read and wakeup, and a join of the
whole packet (``sluice.ssh_tuning.feed_in_pieces``) before it could be
decrypted. ``read_whole_packets`` puts a buffered protocol in front of the
connection that reads up to ``READ_SIZE`` at a time into a buffer shared by
every connection of the process, so a packet that has arrived whole is read
whole. The tuned ``data_received`` (``sluice.ssh_tuning.feed_in_pieces``)
gets a view of the read and decrypts the whole packets in it from there,
copying only the start of a packet that the next read completes; asyncssh's
own gets a copy, as the event loop gave it. (Holding that start in place in
the shared buffer, the next read landing right after it, was tried on branch
issue-28g: the 0.36 MB copied per MiB of a loopback download went to 0, but
relay CPU per MiB and MB/s did not move beyond noise in 16 interleaved runs,
and a view into a buffer every connection reuses needs care; not kept.)

Only with the asyncssh tweaks in place (``SLUICE_SSH_TUNING`` on, asyncssh of
the shape they were written for): the protocol in front uses the connection's
transport (``SSHConnection._transport``), which ``sluice.ssh_shape`` checks.
"""

from __future__ import annotations

import asyncio

from asyncssh.connection import SSHConnection

from sluice import ssh_tuning

# Two full packets and their framing, with room to spare.
READ_SIZE = 1024 * 1024


class ReadBuffer:
    """The buffer the SSH connections of one process read into, one read at a time."""

    def __init__(self, size: int = READ_SIZE) -> None:
        self.view = memoryview(bytearray(size))


class _WholePackets(asyncio.BufferedProtocol):
    """Reads for *ssh* into the shared buffer and hands each read on as bytes."""

    def __init__(self, ssh: SSHConnection, buffer: ReadBuffer) -> None:
        self._ssh = ssh
        self._buffer = buffer
        self._views = "feed_in_pieces" in ssh_tuning.applied()

    def __repr__(self) -> str:
        return f"<_WholePackets {self._ssh!r}>"

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer.view

    def buffer_updated(self, nbytes: int) -> None:
        if self._views:
            # A view, valid during the call: the tuned data_received copies
            # what it keeps (the start of a packet that spans reads).
            with self._buffer.view[:nbytes] as data:
                # Not typing.cast: a Python call on every read.
                self._ssh.data_received(data)  # type: ignore[arg-type]
            return
        # A copy, as the event loop's own reads are: asyncssh may keep the
        # start of a packet until the rest arrives.
        self._ssh.data_received(self._buffer.view[:nbytes].tobytes())

    def eof_received(self) -> None:
        self._ssh.eof_received()  # None, as asyncssh's: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._ssh.connection_lost(exc)

    def pause_writing(self) -> None:
        self._ssh.pause_writing()

    def resume_writing(self) -> None:
        self._ssh.resume_writing()


def read_whole_packets(ssh: SSHConnection, buffer: ReadBuffer) -> bool:
    """Read *ssh*'s socket through *buffer* from now on (call it once, from
    the connection's ``connection_made`` or after connecting). Returns whether
    it did: not with the tweaks off, nor on a connection already closed."""
    transport = ssh._transport
    if not ssh_tuning.applied() or transport is None or transport.is_closing():
        return False
    transport.pause_reading()
    transport.set_protocol(_WholePackets(ssh, buffer))
    transport.resume_reading()
    return True
