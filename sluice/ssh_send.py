"""The tuned send path (``sluice.ssh_tuning``): packets and channel flushes.

IGNORE packets: asyncssh sends an empty SSH_MSG_IGNORE before every packet once encryption
is on. That is a countermeasure for CBC ciphers (RFC 4251 §9.3.1); with the
AEAD ciphers Sluice negotiates (AES-GCM, ChaCha20-Poly1305) it protects
nothing, yet it doubles the packets, the encryptions and the socket writes
per chunk of data. OpenSSH does not send them. This skips exactly those
automatic packets, and only under an AEAD cipher; anything else asyncssh
sends is untouched.

One write per channel flush: when a channel sends what its window allows,
asyncssh writes each packet to the socket on its own: with its default
32 KiB packets, a 256 KiB read from an API became eight system calls (a
window adjust or a second stream's data adds more). ``batch_channel_writes``
gathers the packets of one flush and writes them together, before the flush
returns: nothing is deferred, and the order of every byte is asyncssh's own.

Channel data under AES-GCM is framed with two copies, not a dozen
(``_send_data_fast``), and ``quiet_channel_writes`` drops
``SSHChannel.write``'s debug call and cast.

Immutable data is not copied as it is written: asyncssh copies everything
written to a channel into a bytearray, so that a packet cut at the window's
edge can drop what it sent (``del buf[:size]``, which copies the rest again
once less than half is left). ``write`` keeps a ``bytes`` object as it is
(nothing can change it while it waits), and a piece cut at the window's
edge leaves the rest as a view, not a copy. A relay's upload is written as
the caller's reads, ``bytes`` of 256,000: those two copies were 8% of the
relay's CPU time (perf). Anything else written (a view of a buffer the
caller reuses) is still copied before ``write`` returns. Entries that are
not bytearrays become bytearrays before asyncssh's own flush may cut them
(``_mutable``).

Applied only by ``sluice.ssh_tuning.tune_asyncssh`` (after its shape check):
nothing is patched on import.
"""

from __future__ import annotations

import struct
import threading
import time
from threading import get_ident
from typing import Any

import asyncssh.channel as _channel
import asyncssh.connection as _connection
from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_CHANNEL_WINDOW_ADJUST, MSG_IGNORE
from asyncssh.crypto.cipher import GCMCipher
from asyncssh.encryption import ChachaEncryption, GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.packet import SSHPacketLogger, String
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sluice import send_coalescing, send_scheduler
from sluice.gathered_write import write_parts
from sluice.ssh_gcm import (
    _AEAD_KEY,
    _ENCRYPT_INTO,
    _GCM_TAG,
    _IV,
    _POOLED_LEAST,
    _SEALED,
    _SEND_SIZE,
    _U32,
    _U64_MASK,
    _aead,
)
from sluice.ssh_padding import PADDING
from sluice.ssh_padding import POOL as _PAD_POOL
from sluice.ssh_state import _CONN_STATE, _Applied, _ConnState, _state, channel_classes_where

_EMPTY_IGNORE = String(b"")
_AEAD = (GCMEncryption, ChachaEncryption)


def _stock_senders() -> frozenset[type]:
    """asyncssh's channel classes that send a packet with SSHChannel's own
    ``send_packet`` and log it with asyncssh's own ``log_sent_packet``."""
    return channel_classes_where(
        lambda cls: (
            cls.send_packet is SSHChannel.send_packet
            and cls.log_sent_packet is SSHPacketLogger.log_sent_packet
        )
    )


def _patch_send_packet() -> None:
    original = SSHConnection.send_packet
    _Applied.adjust_senders = _stock_senders()

    def send_packet(
        self: SSHConnection, pkttype: int, *args: bytes, handler: SSHPacketLogger | None = None
    ) -> None:
        if (
            pkttype == MSG_IGNORE
            and args == (_EMPTY_IGNORE,)
            and isinstance(self._send_encryption, _AEAD)
        ):
            return
        if pkttype == MSG_CHANNEL_WINDOW_ADJUST:
            held: send_coalescing.Outbox | None = self.__dict__.get(send_coalescing.KEY)
            if held is not None and _sent_now(self):
                # A window top-up joins the channel packets of this loop
                # turn (held to its end, never later; _send): alone, each
                # was a write of its own that woke the peer (issue 26h).
                held.joining = True
                try:
                    original(self, pkttype, *args, handler=handler)
                finally:
                    held.joining = False
                return
        original(self, pkttype, *args, handler=handler)

    _connection.SSHConnection.send_packet = send_packet  # type: ignore[method-assign]
    _Applied.tuned_send_packet = send_packet


def send_window_adjust(chan: SSHChannel[Any], amount: int) -> None:
    """Send ``SSH_MSG_CHANNEL_WINDOW_ADJUST`` of *amount* bytes on *chan*.

    Under AES-GCM (keys in place, no rekey due, asyncssh's packet log off),
    framed and encrypted here, as asyncssh would (same packet, padding
    length, sequence number and rekey accounting), with padding from the
    pool (``sluice.ssh_padding``), and held with the loop turn's channel
    packets as the tuned ``send_packet`` holds it. asyncssh's own way
    (``SSHChannel.send_packet``) was some 20 Python calls a top-up (the
    payload's and packet's builders, the IGNORE packet it then drops, the
    cipher's wrapper, the packet log's formatting) and a ``getrandom``
    system call for its padding: a bulk stream's receiver sends 1.4-1.6
    top-ups per MiB (issue 27a). Otherwise it goes that way."""
    ssh = chan._conn
    send_chan = chan._send_chan
    if (
        ssh is None
        or send_chan is None
        or chan.__class__ not in _Applied.adjust_senders
        or type(ssh).send_packet is not _Applied.tuned_send_packet
        or "send_packet" in ssh.__dict__  # wrapped on the instance (tests record packets so)
        or SSHLogger._debug_level >= 3  # asyncssh logs the packet
    ):
        chan.send_packet(MSG_CHANNEL_WINDOW_ADJUST, _U32.pack(amount))
        return
    cipher = _gcm_ready(ssh)
    if cipher is None:
        chan.send_packet(MSG_CHANNEL_WINDOW_ADJUST, _U32.pack(amount))
        return
    aead: AESGCM | None = cipher.__dict__.get(_AEAD_KEY)  # (inline: per top-up)
    if aead is None:
        aead = _aead(cipher)
    blocksize = ssh._send_blocksize
    padlen = -(ssh._send_enchdrlen + 9) % blocksize
    if padlen < 4:
        padlen += blocksize
    pktlen = 10 + padlen
    header = _U32.pack(pktlen)
    padding = PADDING  # (inline: Padding.take)
    pad_end = padding.pos + padlen
    if pad_end > _PAD_POOL:
        padding.refill()
        pad_end = padlen
    padding.pos = pad_end
    iv = cipher._iv
    sealed = aead.encrypt(
        iv,
        _DATA_PREFIX.pack(padlen, MSG_CHANNEL_WINDOW_ADJUST, send_chan, amount)
        + padding.data[pad_end - padlen : pad_end],
        header,
    )
    # GCMCipher._update_iv, inline.
    fixed, counter = _IV.unpack(iv)
    cipher._iv = _IV.pack(fixed, (counter + 1) & _U64_MASK)
    ssh._send_seq = (ssh._send_seq + 1) & 0xFFFFFFFF
    ssh._rekey_bytes_sent += pktlen
    # The tuned _send, as the tuned send_packet has it send a top-up: into
    # the flush under way, else held to the loop turn's end (joining).
    state: _ConnState | None = ssh.__dict__.get(_CONN_STATE)
    if state is not None and state.batch is not None:
        state.batch.append(header)
        state.batch.append(sealed)
        return
    held: send_coalescing.Outbox | None = ssh.__dict__.get(send_coalescing.KEY)
    transport = ssh._transport
    if held is not None and transport is not None:
        held.add(transport, [header, sealed])
    else:
        ssh._send(header + sealed)


def _sent_now(ssh: SSHConnection) -> bool:
    """Whether asyncssh's ``send_packet`` would send a channel packet on
    *ssh* now as that one packet: keys and auth in place, no rekey due
    (else a KEXINIT would go first, or the packet wait for the key exchange)."""
    if not (ssh._kex_complete and ssh._auth_complete):
        return False
    if ssh._rekey_bytes_sent >= ssh._rekey_bytes:
        return False
    return not (ssh._rekey_seconds and time.monotonic() >= ssh._rekey_time)


def _patch_flush() -> None:
    original_flush = SSHChannel._flush_send_buf
    original_send = SSHConnection._send

    def _send(self: SSHConnection, data: bytes) -> None:
        state: _ConnState | None = self.__dict__.get(_CONN_STATE)
        batch = state.batch if state is not None else None
        if batch is not None:
            batch.append(data)
            return
        held: send_coalescing.Outbox | None = self.__dict__.get(send_coalescing.KEY)
        if held is not None:
            if held.joining and self._transport is not None:
                held.add(self._transport, [data])  # a window top-up (send_packet)
                return
            if held.parts:
                # A packet of asyncssh's own (open, close, kex, keepalive,
                # disconnect) never waits for the turn's end, and leaves
                # after the channel data produced before it.
                held.flush()
        original_send(self, data)

    def asyncssh_flush(chan: SSHChannel[Any]) -> None:
        if chan._send_buf and chan._send_window:
            _mutable(chan._send_buf)  # asyncssh's flush cuts what it sends
        original_flush(chan)

    def _flush_send_buf(self: SSHChannel[Any]) -> None:
        ssh = self._conn
        if ssh is None:
            asyncssh_flush(self)  # not connected
            return
        state: _ConnState | None = ssh.__dict__.get(_CONN_STATE)  # (inline: per packet)
        if state is None:
            state = _state(ssh)
        elif state.batch is not None:
            # Inside a flush already: a session's callback (its resume_writing,
            # as asyncio's SSLProtocol's) wrote more.
            asyncssh_flush(self)
            return
        batch: list[bytes] = []
        state.batch = batch
        # The transport as the flush began: a session callback inside the
        # flush may close the connection, which drops ssh._transport at once
        # (asyncssh's own writes would have reached the socket before that).
        transport = ssh._transport
        try:
            _send_data_fast(self, ssh, batch)
            session = self._session
            if self._send_state != "open" or (self._send_buf and self._send_window):
                asyncssh_flush(self)  # the rest: extended data, EOF/close (or a rekey due)
            elif (
                SSHLogger._debug_level < 2
                and session is not None
                and type(self)._pause_resume_writing is _STOCK_PAUSE_RESUME
            ):
                # asyncssh's flush would send nothing now (no data left, or
                # no window): it would only pause or resume the session
                # (_pause_resume_writing), here without its four calls (the
                # flush, the check, its logger and a debug call that logs
                # nothing below level 2). A bulk stream's writer pauses and
                # resumes about once per MiB (issue 27a).
                if self._send_paused:
                    if self._send_buf_len <= self._send_low_water:
                        self._send_paused = False
                        session.resume_writing()
                elif self._send_buf_len > self._send_high_water:
                    self._send_paused = True
                    session.pause_writing()
            elif self._send_buf or self._send_paused:
                asyncssh_flush(self)
            # else asyncssh's flush would do nothing: no data left, so
            # nothing to pause, nothing paused to resume, no EOF or close due.
        finally:
            state.batch = None
            if batch and transport is not None:
                # send_coalescing.outbox, inline (per flush).
                held: send_coalescing.Outbox | None = ssh.__dict__.get(send_coalescing.KEY)
                if held is None or ssh._transport is not transport:
                    # Closed inside the flush (a session callback): asyncssh
                    # queued the abort already, so what waited for the turn's
                    # end would be dropped (this flush's data and the
                    # disconnect packet in it): out now, after what is held.
                    if held is not None:
                        held.flush()
                    write_parts(transport, batch)
                else:
                    held.add(transport, batch)  # written once, as the loop turn ends

    _connection.SSHConnection._send = _send  # type: ignore[method-assign]
    _channel.SSHChannel._flush_send_buf = _flush_send_buf  # type: ignore[method-assign]


# (getattr: an asyncssh without it must still import this module, and run stock.)
_STOCK_PAUSE_RESUME = getattr(SSHChannel, "_pause_resume_writing", None)


_DATA_PREFIX = struct.Struct(">BBII")  # padding length, MSG_CHANNEL_DATA, channel, length
# Where a bulk packet's plaintext is gathered before it is encrypted (one
# per process, used on its main thread only: the cipher has read it before
# anything else runs there).
_SEND_PLAIN = memoryview(bytearray(_SEND_SIZE))
_MAIN_THREAD = threading.main_thread().ident


def _gcm_ready(ssh: SSHConnection) -> GCMCipher | None:
    """The connection's AES-GCM send cipher, if plain channel data may take the
    short path now (keys in place, no compression, no rekey due); else None.
    (``_send_data_fast`` makes the same tests inline.)"""
    encryption = ssh._send_encryption
    if type(encryption) is not GCMEncryption or ssh._compressor is not None:
        return None
    if not (ssh._kex_complete and ssh._auth_complete):
        return None
    if ssh._rekey_bytes_sent >= ssh._rekey_bytes or (
        ssh._rekey_seconds and time.monotonic() >= ssh._rekey_time
    ):
        return None  # asyncssh's own send_packet starts the rekey
    # (_sent_now's tests, inline: a call per packet otherwise.)
    return encryption._cipher


def _send_data_fast(chan: SSHChannel[Any], ssh: SSHConnection, batch: list[bytes]) -> None:
    """Send what the window allows of *chan*'s plain data, as asyncssh would
    (same packets, padding, sequence numbers and rekey accounting), copying
    each piece once into the plaintext and once by the cipher; the packets
    go into *batch*, the flush's."""
    send_chan = chan._send_chan
    if send_chan is None or not chan._send_buf:
        return
    # _gcm_ready, inline (a call per flush): the AES-GCM send cipher, if
    # plain channel data may take the short path now.
    encryption = ssh._send_encryption
    if (
        type(encryption) is not GCMEncryption
        or ssh._compressor is not None
        or not (ssh._kex_complete and ssh._auth_complete)
        or ssh._rekey_bytes_sent >= ssh._rekey_bytes
        or (ssh._rekey_seconds and time.monotonic() >= ssh._rekey_time)
    ):
        return  # (a rekey due: asyncssh's own send_packet starts it)
    cipher: GCMCipher = encryption._cipher
    aead: AESGCM | None = cipher.__dict__.get(_AEAD_KEY)  # (inline: per flush)
    if aead is None:
        aead = _aead(cipher)
    padding = PADDING
    send_buf = chan._send_buf
    blocksize = ssh._send_blocksize
    while send_buf and chan._send_window:
        buf, datatype = send_buf[0]
        if datatype is not None:
            return  # extended data: asyncssh's path
        size = min(len(buf), chan._send_window, chan._send_pktsize)
        padlen = -(ssh._send_enchdrlen + 9 + size) % blocksize
        if padlen < 4:
            padlen += blocksize
        pktlen = 10 + size + padlen
        header = _U32.pack(pktlen)
        # Random padding cut from the pool (ssh_padding), inline: per packet.
        pad_end = padding.pos + padlen
        if pad_end > _PAD_POOL:
            padding.refill()
            pad_end = padlen
        padding.pos = pad_end
        iv = cipher._iv
        if (
            pktlen >= _POOLED_LEAST
            and pktlen <= _SEND_SIZE
            and _ENCRYPT_INTO
            and get_ident() == _MAIN_THREAD
        ):
            # The plaintext gathered into one buffer reused for every bulk
            # packet (the cipher reads it before anything else runs; only on
            # the main thread, so that no other thread's loop shares it), not
            # joined into a fresh 256 KiB object each time.
            gathered = _SEND_PLAIN[:pktlen]
            _DATA_PREFIX.pack_into(gathered, 0, padlen, MSG_CHANNEL_DATA, send_chan, size)
            view = memoryview(buf)
            try:
                gathered[10 : 10 + size] = view[:size]
            finally:
                view.release()
            gathered[10 + size :] = padding.data[pad_end - padlen : pad_end]
            plain: bytes | memoryview = gathered
        elif size == len(buf):
            # The whole piece (a request, an answer): joined as it is, without
            # a view to make and release (two calls per packet).
            plain = b"".join(
                (
                    _DATA_PREFIX.pack(padlen, MSG_CHANNEL_DATA, send_chan, size),
                    buf,
                    padding.data[pad_end - padlen : pad_end],
                )
            )
        else:
            view = memoryview(buf)
            piece = view[:size]
            try:
                plain = b"".join(
                    (
                        _DATA_PREFIX.pack(padlen, MSG_CHANNEL_DATA, send_chan, size),
                        piece,
                        padding.data[pad_end - padlen : pad_end],
                    )
                )
            finally:
                piece.release()
                view.release()
        if pktlen >= _POOLED_LEAST and _ENCRYPT_INTO:
            # Into a reused buffer, not a fresh zeroed one: the view sent
            # keeps it from reuse until the transport has let go of it.
            # _SEALED.take, its buffers tried inline (a call to take and
            # one to _unshared per buffer tried otherwise).
            sealed_size = 4 + pktlen + _GCM_TAG
            into = None
            for kept in _SEALED._buffers:
                if len(kept) > sealed_size:
                    try:  # (_unshared, inline: no view of it is left)
                        del kept[-1]
                    except BufferError:
                        continue
                    kept.append(0)
                    into = kept
                    break
            if into is None:
                into = _SEALED.take(sealed_size)
            packet = memoryview(into)[:sealed_size]
            packet[:4] = header
            aead.encrypt_into(iv, plain, header, packet[4:])
            batch.append(packet)  # type: ignore[arg-type]
        else:
            batch.append(header)
            batch.append(aead.encrypt(iv, plain, header))
        # GCMCipher._update_iv, inline (per packet): the invocation counter + 1.
        fixed, counter = _IV.unpack(iv)
        cipher._iv = _IV.pack(fixed, (counter + 1) & _U64_MASK)
        ssh._send_seq = (ssh._send_seq + 1) & 0xFFFFFFFF
        ssh._rekey_bytes_sent += pktlen
        if size == len(buf):
            del send_buf[0]
        else:
            # The rest as a view: ``del buf[:size]`` copies it whenever less
            # than half of the buffer is left.
            send_buf[0] = (memoryview(buf)[size:], None)  # type: ignore[assignment]
        chan._send_buf_len -= size
        chan._send_window -= size
        if ssh._rekey_bytes_sent >= ssh._rekey_bytes:
            return


def _mutable(send_buf: list[tuple[Any, Any]]) -> None:
    """Make every entry of a channel's *send_buf* a bytearray, as asyncssh's
    own flush expects (it cuts what it sent off the front in place)."""
    for i, (buf, datatype) in enumerate(send_buf):
        if type(buf) is not bytearray:
            send_buf[i] = (bytearray(buf), datatype)


def _send_small(chan: SSHChannel[Any], data: Any, size: int) -> bool:
    """Send *data* (*size* bytes, under ``_SMALL``, within the channel's
    window and packet size, nothing queued ahead of it) as one channel-data
    packet into the connection's outbox, as the whole flush would (the send
    scheduler's turn, ``_flush_send_buf``, ``_send_data_fast``,
    ``Outbox.add``: the same packet, padding, sequence number, rekey
    accounting and write), in one Python call instead of five and a third
    of the bytecodes: a request or a small answer on a kept-alive stream
    (issue 22: 560 bytecodes a packet on each side before). Returns False,
    having changed nothing, wherever the flush would do more than that: a
    flush under way, the scheduler holding a
    turn or paused, no AES-GCM keys or a key exchange due; the caller then
    takes the whole path. (Without coalescing the packet is written at once,
    as the flush writes its batch.)"""
    ssh = chan._conn
    send_chan = chan._send_chan
    if ssh is None or send_chan is None:
        return False
    held: send_coalescing.Outbox | None = ssh.__dict__.get(send_coalescing.KEY)
    transport = ssh._transport
    if transport is None or (held is not None and held.parts and held.transport is not transport):
        return False
    state: _ConnState | None = ssh.__dict__.get(_CONN_STATE)
    if state is not None and state.batch is not None:
        return False  # inside a flush: a session callback wrote more
    encryption = ssh._send_encryption
    now = time.monotonic()
    if (
        type(encryption) is not GCMEncryption
        or ssh._compressor is not None
        or not (ssh._kex_complete and ssh._auth_complete)
        or ssh._rekey_bytes_sent >= ssh._rekey_bytes
        or (ssh._rekey_seconds and now >= ssh._rekey_time)
    ):
        return False  # (a rekey due: asyncssh's own send_packet starts it)
    sched: send_scheduler._Scheduler | None = ssh.__dict__.get(send_scheduler._KEY)
    if sched is not None:
        if sched.ready or sched.pumping or sched.paused:
            return False  # other channels wait for a turn, or the transport is full
        if now >= sched.next_sample:
            sched.follow_rate()
    cipher: GCMCipher = encryption._cipher
    aead: AESGCM | None = cipher.__dict__.get(_AEAD_KEY)
    if aead is None:
        aead = _aead(cipher)
    blocksize = ssh._send_blocksize
    padlen = -(ssh._send_enchdrlen + 9 + size) % blocksize
    if padlen < 4:
        padlen += blocksize
    pktlen = 10 + size + padlen
    # Random padding cut from the pool, inline as in _send_data_fast and
    # ssh_framed.send_framed: a helper would be a call per packet, the very
    # thing this path saves (tests/unit/test_packet_calls.py counts them).
    padding = PADDING
    pad_end = padding.pos + padlen
    if pad_end > _PAD_POOL:
        padding.refill()
        pad_end = padlen
    padding.pos = pad_end
    try:
        # (A view of a buffer the caller reuses is copied here, before write returns.)
        plain = b"".join(
            (
                _DATA_PREFIX.pack(padlen, MSG_CHANNEL_DATA, send_chan, size),
                data,
                padding.data[pad_end - padlen : pad_end],
            )
        )
    except (TypeError, BufferError):
        return False  # a view that is not one contiguous run of bytes: bytearray() takes it
    if len(plain) != pktlen:
        return False  # a view of items larger than a byte: len() counted items
    header = _U32.pack(pktlen)
    iv = cipher._iv
    sealed = aead.encrypt(iv, plain, header)
    fixed, counter = _IV.unpack(iv)
    cipher._iv = _IV.pack(fixed, (counter + 1) & _U64_MASK)
    ssh._send_seq = (ssh._send_seq + 1) & 0xFFFFFFFF
    ssh._rekey_bytes_sent += pktlen
    chan._send_window -= size
    if held is None:  # no coalescing: written now, as the flush would
        write_parts(transport, [header, sealed])
        return True
    # Outbox.add, inline.
    held.transport = transport
    parts = held.parts
    parts.append(header)
    parts.append(sealed)
    held.size += 4 + len(sealed)
    if held.size >= send_coalescing.LIMIT:
        held.flush()
    elif not held.scheduled:
        held.scheduled = True
        held.loop.call_soon(held.flush, True)
    return True


# A write below this size on an idle channel may take ``_send_small`` (its
# packet is framed and encrypted as a fresh object, never into the pooled
# buffers of bulk packets).
_SMALL = _POOLED_LEAST - 1024


def _patch_write() -> None:
    original = SSHChannel.write
    # Immutable data waits uncopied only where the batching flush (which
    # makes the entries mutable before asyncssh's flush) is in place.
    keep_bytes = "batch_channel_writes" in _Applied.names
    # The channel classes whose flush is SSHChannel's own (tuned): a small
    # write on one of them may skip it (_send_small), with the batching flush in place.
    small_senders = (
        channel_classes_where(lambda cls: cls._flush_send_buf is SSHChannel._flush_send_buf)
        if keep_bytes
        else frozenset()
    )

    def write(self: SSHChannel[Any], data: Any, datatype: int | None = None) -> None:
        # Any: AnyStr as asyncssh's; only bytes-like data (no encoding) comes here.
        if (
            datatype is None
            and self._send_state == "open"
            and not self._encoding
            and SSHLogger._debug_level < 2
        ):
            if data:
                size = len(data)
                if (
                    size < _SMALL
                    and not self._send_buf
                    and size <= self._send_window
                    and size <= self._send_pktsize
                    and not self._send_paused
                    and self.__class__ in small_senders
                    and _send_small(self, data, size)
                ):
                    return
                # bytes: kept as it is, nothing can change it while it waits.
                kept = data if keep_bytes and type(data) is bytes else bytearray(data)
                # (Typed bytearray by asyncssh; _mutable makes it one for asyncssh's flush.)
                self._send_buf.append((kept, None))  # type: ignore[arg-type]
                self._send_buf_len += size
                self._flush_send_buf()
            return
        original(self, data, datatype)

    _channel.SSHChannel.write = write  # type: ignore[method-assign]
