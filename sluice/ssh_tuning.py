"""Tweaks to asyncssh's hot path, kept in one place and applied explicitly
(``tune_asyncssh()``, idempotent).

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

Receiving: asyncssh keeps unparsed input in one bytes object, appends every
read to it and slices each packet off its front, copying the rest every
time. Under AES-GCM, ``feed_in_pieces`` decrypts channel data straight from
each read instead (``_take_data_packets``); a packet that spans reads is
gathered into one buffer as its reads come, and any other packet
goes to asyncssh alone, so the data after it still takes the short path.
A bulk packet is decrypted (``decrypt_into``) into one of a few buffers kept
for it, reused once no view of it is left. Without AES-GCM keys in place (a
key exchange, another cipher), asyncssh gets a large read in 32 KiB pieces,
so each slice copies at most that much.

Sending from the read: ``send_framed`` sends a bulk read that landed in a
``FrameBuffer`` (the agent's reads of an API) as one packet, framed and
encrypted in place (``encrypt_into``) into an output buffer reused once the
transport holds no view of it, when the channel may send it at once; else
the caller writes it to the channel as usual.

AES-GCM key schedule: asyncssh builds a new AESGCM object for every packet;
``reuse_gcm_keys`` keeps one per direction and key.

Per packet, less of asyncssh's own work: ``quiet_channel_writes`` drops
``SSHChannel.write``'s debug call and cast (it logs nothing below debug
level 2); the receive path hands channel data to the session inline where
``_accept_data``/``_deliver_data`` would only count it and pass it on, and
both paths count the GCM invocation inline; ``lazy_keepalive``
(``sluice.ssh_keepalive``) notes a read's time instead of making a new
keepalive timer; the padding of the packets framed here is cut from a pool
of random bytes (``sluice.ssh_padding``), not one ``getrandom`` a packet.

A short sender's queue: ``sluice.send_scheduler`` (its own module; installed
here, after the others, unless ``SLUICE_SEND_SCHEDULER=off``) interleaves
the channels' packets and keeps the transport's and the kernel's queues
short, so a small answer does not wait behind a download's window.

One write per loop turn: ``sluice.send_coalescing`` (installed here too,
unless ``SLUICE_SEND_COALESCING=off``) holds the batches of the channel
flushes of one event-loop turn and writes them together as the turn ends;
any other packet writes what is held first.

Safety: nothing is patched on import. ``tune_asyncssh()`` (called when the
relay starts listening and when the agent opens a tunnel) first checks that
asyncssh still has the shape the tweaks were written for
(``sluice.ssh_shape``; pyproject.toml pins that release); if not, it logs one
warning and leaves asyncssh stock. ``SLUICE_SSH_TUNING=off`` in the
environment leaves it stock too. The patches are typed with asyncssh's own
classes, so mypy sees a renamed attribute.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import asyncssh.channel as _channel
import asyncssh.connection as _connection
import asyncssh.crypto.cipher as _cipher
import structlog
from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_IGNORE
from asyncssh.crypto.cipher import GCMCipher
from asyncssh.encryption import ChachaEncryption, GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.packet import SSHPacketLogger, String
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sluice import send_coalescing, send_scheduler, ssh_keepalive, ssh_shape
from sluice.ssh_padding import PADDING
from sluice.ssh_padding import POOL as _PAD_POOL
from sluice.switches import switched_on

# The environment variable that turns the tweaks off ("off", "0", "false", "no").
SWITCH: Final = "SLUICE_SSH_TUNING"

_EMPTY_IGNORE = String(b"")
_AEAD = (GCMEncryption, ChachaEncryption)
# Sluice's own per-object state, kept in the instance's __dict__ under these
# names (not as class attributes: nothing is added to asyncssh's classes).
_CONN_STATE: Final = "_sluice_state"
_AEAD_KEY: Final = "_sluice_aead"
_VIEWS: Final = "_sluice_views"


class _ConnState:
    """Per connection: the packets of the flush under way, and a packet that
    spans reads (what has arrived of it, and the whole packet's length)."""

    __slots__ = ("batch", "need", "pending")

    def __init__(self) -> None:
        self.batch: list[bytes] | None = None
        self.pending: bytearray | None = None
        self.need = 0


def _state(ssh: SSHConnection) -> _ConnState:
    # Annotated, not typing.cast: a cast is a Python call, on every packet.
    state: _ConnState | None = ssh.__dict__.get(_CONN_STATE)
    if state is None:
        state = ssh.__dict__[_CONN_STATE] = _ConnState()
    return state


class _Applied:
    """Which tweaks are in place in this process (each is applied once)."""

    checked: bool | None = None  # None: not yet; False: asyncssh differs, run stock
    names: set[str] = set()
    told = False  # the state was logged
    # asyncssh's channel classes that receive data with SSHChannel's own
    # methods (not the TUN/TAP channel's): their data may be handed on inline.
    plain_channels: frozenset[type] = frozenset()


def tuning_enabled(environ: Mapping[str, str]) -> bool:
    """Whether SLUICE_SSH_TUNING in *environ* leaves the tweaks on (the default)."""
    return switched_on(environ, SWITCH)


def _shape_ok() -> bool:
    """Check asyncssh once per process; log one warning if the tweaks do not fit it."""
    if _Applied.checked is None:
        found = ssh_shape.mismatches()
        _Applied.checked = not found
        if found:
            structlog.get_logger("sluice.ssh_tuning").warning(
                "asyncssh differs from what the SSH tweaks were written for; running it stock",
                asyncssh_version=ssh_shape.installed_version(),
                tuned_for=ssh_shape.TUNED_FOR,
                differences=found[:5],
            )
    return _Applied.checked


def _apply(name: str, patch: Callable[[], None]) -> None:
    if name not in _Applied.names and _shape_ok():
        patch()
        _Applied.names.add(name)


def applied() -> frozenset[str]:
    """The tweaks in place in this process."""
    return frozenset(_Applied.names)


def _plain_channel_classes() -> frozenset[type]:
    found: set[type] = set()
    todo: list[type[SSHChannel[Any]]] = [SSHChannel]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if (
            cls._accept_data is SSHChannel._accept_data
            and cls._deliver_data is SSHChannel._deliver_data
        ):
            found.add(cls)
    return frozenset(found)


def skip_aead_ignore_packets() -> None:
    """Patch asyncssh (once) to drop its automatic IGNORE packets under AEAD."""
    _apply("skip_aead_ignore_packets", _patch_send_packet)


def _patch_send_packet() -> None:
    original = SSHConnection.send_packet

    def send_packet(
        self: SSHConnection, pkttype: int, *args: bytes, handler: SSHPacketLogger | None = None
    ) -> None:
        if (
            pkttype == MSG_IGNORE
            and args == (_EMPTY_IGNORE,)
            and isinstance(self._send_encryption, _AEAD)
        ):
            return
        original(self, pkttype, *args, handler=handler)

    _connection.SSHConnection.send_packet = send_packet  # type: ignore[method-assign]


def batch_channel_writes() -> None:
    """Patch asyncssh (once): the packets of one channel flush go out in
    one write, and channel data under AES-GCM is framed with two copies, not a dozen."""
    _apply("batch_channel_writes", _patch_flush)


def _patch_flush() -> None:
    original_flush = SSHChannel._flush_send_buf
    original_send = SSHConnection._send

    def _send(self: SSHConnection, data: bytes) -> None:
        state: _ConnState | None = self.__dict__.get(_CONN_STATE)
        batch = state.batch if state is not None else None
        if batch is not None:
            batch.append(data)
            return
        held = send_coalescing.outbox(self)
        if held is not None and held.parts:
            # A packet of asyncssh's own (window adjust, open, close, kex,
            # keepalive, disconnect) never waits for the turn's end, and
            # leaves after the channel data produced before it.
            held.flush()
        original_send(self, data)

    def _flush_send_buf(self: SSHChannel[Any]) -> None:
        ssh = self._conn
        if ssh is None:
            original_flush(self)  # not connected
            return
        state: _ConnState | None = ssh.__dict__.get(_CONN_STATE)  # (inline: per packet)
        if state is None:
            state = _state(ssh)
        elif state.batch is not None:
            original_flush(self)  # inside a flush already
            return
        batch: list[bytes] = []
        state.batch = batch
        # The transport as the flush began: a session callback inside the
        # flush may close the connection, which drops ssh._transport at once
        # (asyncssh's own writes would have reached the socket before that).
        transport = ssh._transport
        try:
            _send_data_fast(self, ssh, batch)
            if self._send_buf or self._send_paused or self._send_state != "open":
                original_flush(self)  # the rest: extended data, EOF/close, pause/resume
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
                    _write_all(transport, batch)
                else:
                    held.add(transport, batch)  # written once, as the loop turn ends

    _connection.SSHConnection._send = _send  # type: ignore[method-assign]
    _channel.SSHChannel._flush_send_buf = _flush_send_buf  # type: ignore[method-assign]


def _write_all(transport: Any, batch: list[bytes]) -> None:
    # Any: asyncssh types it as a Transport, but it may be its own tunnel
    # object (a proxy command) with write() only.
    try:  # not contextlib.suppress: three Python calls, on every flush
        if len(batch) == 1:
            transport.write(batch[0])
        elif hasattr(transport, "writelines"):
            transport.writelines(batch)
        else:  # e.g. asyncssh's proxy-command tunnel
            transport.write(b"".join(batch))
    except ConnectionError:  # as asyncssh's own _send
        pass


_U32 = struct.Struct(">I")
_U64_MASK: Final = 0xFFFFFFFFFFFFFFFF
# A channel that no longer takes data (SSHChannel._accept_data drops it).
_CLOSING: Final = frozenset({"close_pending", "closed"})
_DATA_FIELDS = struct.Struct(">II")  # channel, length
_DATA_PREFIX = struct.Struct(">BBII")  # padding length, MSG_CHANNEL_DATA, channel, length


def _gcm_ready(ssh: SSHConnection) -> GCMCipher | None:
    """The connection's AES-GCM send cipher, if plain channel data may take the
    short path now (keys in place, no compression, no rekey due); else None."""
    encryption = ssh._send_encryption
    if type(encryption) is not GCMEncryption or ssh._compressor is not None:
        return None
    if not (ssh._kex_complete and ssh._auth_complete):
        return None
    if ssh._rekey_bytes_sent >= ssh._rekey_bytes or (
        ssh._rekey_seconds and time.monotonic() >= ssh._rekey_time
    ):
        return None  # asyncssh's own send_packet starts the rekey
    return encryption._cipher


def _send_data_fast(chan: SSHChannel[Any], ssh: SSHConnection, batch: list[bytes]) -> None:
    """Send what the window allows of *chan*'s plain data, as asyncssh would
    (same packets, padding, sequence numbers and rekey accounting), copying
    each piece once into the plaintext and once by the cipher; the packets
    go into *batch*, the flush's."""
    send_chan = chan._send_chan
    if send_chan is None or not chan._send_buf:
        return
    cipher = _gcm_ready(ssh)
    if cipher is None:
        return
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
        view = memoryview(buf)
        piece = view[:size]
        # Random padding cut from the pool (ssh_padding), inline: per packet.
        pad_end = padding.pos + padlen
        if pad_end > _PAD_POOL:
            padding.refill()
            pad_end = padlen
        padding.pos = pad_end
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
        iv = cipher._iv
        if pktlen >= _POOLED_LEAST and _ENCRYPT_INTO:
            # Into a reused buffer, not a fresh zeroed one: the view sent
            # keeps it from reuse until the transport has let go of it.
            packet = memoryview(_SEALED.take(4 + pktlen + _GCM_TAG))[: 4 + pktlen + _GCM_TAG]
            packet[:4] = header
            aead.encrypt_into(iv, plain, header, packet[4:])
            batch.append(packet)  # type: ignore[arg-type]
        else:
            batch.append(header)
            batch.append(aead.encrypt(iv, plain, header))
        # GCMCipher._update_iv, inline (per packet): the invocation counter + 1.
        cipher._iv = iv[:4] + ((int.from_bytes(iv[4:], "big") + 1) & _U64_MASK).to_bytes(8, "big")
        ssh._send_seq = (ssh._send_seq + 1) & 0xFFFFFFFF
        ssh._rekey_bytes_sent += pktlen
        if size == len(buf):
            del send_buf[0]
        else:
            del buf[:size]
        chan._send_buf_len -= size
        chan._send_window -= size
        if ssh._rekey_bytes_sent >= ssh._rekey_bytes:
            return


_GCM_TAG = 16
# Room after a framed packet's data for its padding (at most a block + 3).
_PAD_ROOM = 32
# AESGCM.encrypt_into and decrypt_into (cryptography 45 on; pyproject allows
# older): without them, send_framed leaves every packet to SSHChannel.write,
# and each packet read is decrypted into a new object.
_ENCRYPT_INTO: Final = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")
# Output buffers a FrameBuffer keeps (one is usually enough: the transport
# takes a packet at once unless the socket is full).
_OUTPUTS = 4


class FrameBuffer:
    """Where an API's answer is read, framed and encrypted as SSH channel
    data in place (``send_framed``), one read at a time.

    When: the agent reads every API connection of a process into ``data`` and
    hands each read on in the same call. A read lands where the packet's
    plaintext has its data, after room for the packet's head; the cipher
    writes into an output buffer kept for the next packets once no view of it
    is left (the transport took it all). Through ``SSHChannel.write`` each
    256 KiB packet was copied into the channel's send buffer, joined into a
    plaintext and encrypted into a fresh, zeroed output.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._plain = memoryview(bytearray(_DATA_PREFIX.size + size + _PAD_ROOM))
        self.data = self._plain[_DATA_PREFIX.size : _DATA_PREFIX.size + size]
        self._outputs: list[bytearray] = []

    def output(self, size: int) -> bytearray:
        """An output buffer of at least *size* bytes nothing holds a view of
        (reused, or a new one)."""
        for out in self._outputs:
            if _unshared(out):
                return out
        if len(self._outputs) >= _OUTPUTS:
            return bytearray(size)  # not kept: its own size
        # One spare byte at the end: _unshared resizes by it.
        out = bytearray(4 + _DATA_PREFIX.size + self.size + _PAD_ROOM + _GCM_TAG + 1)
        self._outputs.append(out)
        return out


def _unshared(buf: bytearray) -> bool:
    """Whether no buffer view of *buf* is alive (a transport that has not
    sent it all keeps one): a bytearray with views refuses to change size."""
    try:
        del buf[-1]
    except BufferError:
        return False
    buf.append(0)  # back to its size, within what it has allocated
    return True


class _BufferPool:
    """A few buffers for bulk packets, one process's, each reused once no
    view of it is left: the packets read are decrypted into one (until the
    channel's session wrote its data on, and that transport took it all), the
    packets sent encrypted into another (until the transport took it all)."""

    def __init__(self) -> None:
        self._buffers: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        """A buffer of at least *size* bytes nothing holds a view of."""
        for buf in self._buffers:
            if len(buf) > size and _unshared(buf):
                return buf
        if size > _SEND_SIZE or len(self._buffers) >= _OUTPUTS:
            # Not kept: its own size (a session that holds views of smaller
            # packets pins no more than a copy of each held).
            return bytearray(size + 1)
        buf = bytearray(_SEND_SIZE + 1)  # one spare byte: _unshared resizes by it
        self._buffers.append(buf)
        return buf


_PLAINTEXTS = _BufferPool()
_SEALED = _BufferPool()
# A bulk packet's plaintext: decrypted into a reused buffer from this size on
# (a small answer's own object costs little, and a view that a session keeps
# of it pins no larger buffer).
_POOLED_LEAST: Final = 64 * 1024
# What the pool's buffers hold: a full packet of Sluice's channels.
_SEND_SIZE: Final = 256 * 1024 + 64


# send_framed sends no read smaller than this: a caller may skip the call.
FRAMED_LEAST: Final = send_coalescing.LIMIT


def send_framed(chan: SSHChannel[Any], frames: FrameBuffer, size: int) -> bool:
    """Send the *size* bytes just read into ``frames.data`` on *chan* as one
    channel-data packet, framed and encrypted in place, as asyncssh would
    (same packet, padding, sequence number and rekey accounting), if it may
    go now: the tweaks on, AES-GCM keys in place, nothing queued on the
    channel before it, the window and packet size allow it, and the send
    scheduler lets the connection write (``send_scheduler.clear_to_send``).
    Only a read of ``send_coalescing.LIMIT`` or more: smaller packets wait
    for the end of the loop turn with the other answers of the turn (and the
    outbox writes one this size at once anyway). Returns False, having sent
    nothing, otherwise (then write it the usual way)."""
    ssh = chan._conn
    send_chan = chan._send_chan
    if (
        not (_Applied.names and _ENCRYPT_INTO)
        or ssh is None
        or send_chan is None
        or chan._send_buf
        or chan._send_state != "open"
        or not send_coalescing.LIMIT
        <= size
        <= min(chan._send_window, chan._send_pktsize, frames.size)
        or ssh._transport is None
    ):
        return False
    state: _ConnState | None = ssh.__dict__.get(_CONN_STATE)
    if state is not None and state.batch is not None:
        return False  # inside a flush: its packets go first
    cipher = _gcm_ready(ssh)
    if cipher is None or not send_scheduler.clear_to_send(ssh):
        return False
    padlen = -(ssh._send_enchdrlen + 9 + size) % ssh._send_blocksize
    if padlen < 4:
        padlen += ssh._send_blocksize
    plain = frames._plain
    end = _DATA_PREFIX.size + size
    _DATA_PREFIX.pack_into(plain, 0, padlen, MSG_CHANNEL_DATA, send_chan, size)
    plain[end : end + padlen] = PADDING.take(padlen)
    pktlen = end + padlen
    header = _U32.pack(pktlen)
    out = frames.output(4 + pktlen + _GCM_TAG)
    with memoryview(out) as view:
        view[:4] = header
        with plain[:pktlen] as clear, view[4 : 4 + pktlen + _GCM_TAG] as sealed:
            _aead(cipher).encrypt_into(cipher._iv, clear, header, sealed)
        cipher._update_iv()
        ssh._send_seq = (ssh._send_seq + 1) & 0xFFFFFFFF
        ssh._rekey_bytes_sent += pktlen
        chan._send_window -= size
    # Not released here: a transport may keep this very object until its
    # socket takes it (Python 3.12+'s selector transport appends it to its
    # buffer; uvloop takes a view of its own). The view alive keeps *out*
    # from reuse (``_unshared``) until the transport lets go of it.
    packet = memoryview(out)[: 4 + pktlen + _GCM_TAG]
    ssh._send(packet)  # type: ignore[arg-type]  # what is held in the outbox first
    return True


def _aead(cipher: GCMCipher) -> AESGCM:
    """The AESGCM object of an asyncssh GCMCipher, made once."""
    aead: AESGCM | None = cipher.__dict__.get(_AEAD_KEY)
    if aead is None:
        aead = cipher.__dict__[_AEAD_KEY] = AESGCM(cipher._key)
    return aead


def quiet_channel_writes() -> None:
    """Patch asyncssh (once): ``SSHChannel.write`` of bytes without its debug
    log call and its cast (three Python calls a write), while asyncssh's
    debug level is below 2, where that call logs nothing."""
    _apply("quiet_channel_writes", _patch_write)


def _patch_write() -> None:
    original = SSHChannel.write

    def write(self: SSHChannel[Any], data: Any, datatype: int | None = None) -> None:
        # Any: AnyStr as asyncssh's; only bytes-like data (no encoding) comes here.
        if (
            datatype is None
            and self._send_state == "open"
            and not self._encoding
            and SSHLogger._debug_level < 2
        ):
            if data:
                self._send_buf.append((bytearray(data), None))
                self._send_buf_len += len(data)
                self._flush_send_buf()
            return
        original(self, data, datatype)

    _channel.SSHChannel.write = write  # type: ignore[method-assign]


def lazy_keepalive() -> None:
    """Patch asyncssh (once): a read notes its time instead of making a new
    keepalive timer (``sluice.ssh_keepalive``)."""
    _apply("lazy_keepalive", ssh_keepalive.install)


def reuse_gcm_keys() -> None:
    """Patch asyncssh (once): one AESGCM object per cipher, not per packet."""
    _apply("reuse_gcm_keys", _patch_gcm)


def _patch_gcm() -> None:
    def encrypt_and_sign(self: GCMCipher, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        sealed = _aead(self).encrypt(self._iv, data, header)
        self._update_iv()
        return header + sealed[:-_GCM_TAG], sealed[-_GCM_TAG:]

    def decrypt_packet(
        self: GCMEncryption, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
    ) -> bytes | None:
        # As GCMEncryption's own (its only use of GCMCipher.verify_and_decrypt),
        # with ciphertext and tag joined in one copy.
        cipher = self._cipher
        try:
            opened: bytes | None = _aead(cipher).decrypt(
                cipher._iv, b"".join((first[header_len:], rest, mac)), first[:header_len]
            )
        except InvalidTag:
            opened = None
        cipher._update_iv()
        return opened

    _cipher.GCMCipher.encrypt_and_sign = encrypt_and_sign  # type: ignore[method-assign]
    GCMEncryption.decrypt_packet = decrypt_packet  # type: ignore[method-assign]


_PIECE = 32 * 1024


def feed_in_pieces() -> None:
    """Patch asyncssh (once): plain channel data under AES-GCM is taken
    straight from a read (see ``_take_data_packets``); any other packet goes to
    asyncssh on its own, and the reads after it are taken again. Without
    AES-GCM keys in place (a key exchange, another cipher) asyncssh parses a
    large read 32 KiB at a time."""
    _apply("feed_in_pieces", _patch_data_received)


def _patch_data_received() -> None:
    original = SSHConnection.data_received
    _Applied.plain_channels = _plain_channel_classes()

    def data_received(self: SSHConnection, data: bytes, datatype: int | None = None) -> None:
        state: _ConnState | None = self.__dict__.get(_CONN_STATE)  # (inline: per read)
        if state is None:
            state = _state(self)
        while state.pending is not None:
            # The rest of a packet that began in an earlier read: what it
            # lacks is gathered (*data* may be a view of a buffer the next
            # read reuses), the packet taken once whole, then the rest.
            pending = state.pending
            missing = state.need - len(pending)
            if len(data) < missing:
                pending += data
                return
            view = memoryview(data)
            pending += view[:missing]
            data = view[missing:]  # type: ignore[assignment]
            state.pending = None
            feed(self, pending, datatype)  # type: ignore[arg-type]
            if not data or self._transport is None:
                return
        feed(self, data, datatype)

    def feed(self: SSHConnection, data: bytes, datatype: int | None) -> None:
        rest: bytes | memoryview = data
        # While channel data may be taken from the input: AES-GCM keys in
        # place, no compression, asyncssh between packets, not inside one.
        while (
            type(self._recv_encryption) is GCMEncryption
            and self._decompressor is None
            and self._kex_complete
            and self._auth_complete
            and self._recv_handler == self._recv_pkthdr
        ):
            rest = _take_data_packets(self, rest)
            if not rest:
                return
            # A packet asyncssh must see (not channel data, or a check to
            # fail): it gets that packet alone, and the fast path goes on.
            size = _whole_packet(self, rest)
            if not size:
                break
            view = memoryview(rest)
            original(self, view[:size], datatype)  # type: ignore[arg-type]
            rest = view[size:]
            if not rest or self._transport is None:
                return
        if len(rest) <= _PIECE:
            original(self, rest, datatype)  # type: ignore[arg-type]
            return
        with memoryview(rest) as view:
            for start in range(0, len(rest), _PIECE):
                if self._transport is None:
                    break  # a fatal error in an earlier piece closed the connection
                original(self, view[start : start + _PIECE], datatype)  # type: ignore[arg-type]

    _connection.SSHConnection.data_received = data_received  # type: ignore[method-assign]


_GCM_OVERHEAD = 4 + 16  # length field, tag


def _whole_packet(ssh: SSHConnection, data: bytes | memoryview) -> int:
    """The size of the AES-GCM packet at the front of *data* if it is all
    there and within the length limit, else 0."""
    if len(data) < 4:
        return 0
    pktlen: int = _U32.unpack_from(data)[0]
    if pktlen > ssh._max_recv_pktlen or pktlen + _GCM_OVERHEAD > len(data):
        return 0
    return pktlen + _GCM_OVERHEAD


def _take_data_packets(ssh: SSHConnection, data: bytes | memoryview) -> bytes | memoryview:
    """Handle the whole plain channel-data packets at the front of the input as
    asyncssh would (same checks, sequence numbers, window accounting and
    delivery), decrypting each in place: one copy by the cipher, one for the
    data. An incomplete packet at the end waits, unparsed, until the reads
    that complete it are in (gathered, then joined once). Anything else
    (another packet type, a check that fails, a bad tag) stops the loop: the
    input from there is returned for asyncssh's own parser, which then sees
    exactly what it would have."""
    buf: bytes | memoryview = ssh._inpbuf + data if ssh._inpbuf else data
    ssh._inpbuf = b""
    encryption: GCMEncryption = ssh._recv_encryption  # type: ignore[assignment]  # feed checked it
    cipher = encryption._cipher
    aead: AESGCM | None = cipher.__dict__.get(_AEAD_KEY)  # (inline: per read)
    if aead is None:
        aead = _aead(cipher)
    channels = ssh._channels
    limit = ssh._max_recv_pktlen
    pooled = _ENCRYPT_INTO and _Applied.names
    size = len(buf)
    pos = 0
    taken = False
    complete = True  # False: the loop stopped at a packet asyncssh must see
    with memoryview(buf) as view:
        while True:
            if size - pos < 4:
                break
            pktlen = _U32.unpack_from(buf, pos)[0]
            end = pos + pktlen + _GCM_OVERHEAD
            if pktlen > limit:
                complete = False
                break
            if end > size:
                break
            complete = False
            plain: bytes | memoryview
            try:
                if pooled and pktlen >= _POOLED_LEAST:
                    plain = memoryview(_PLAINTEXTS.take(pktlen))[:pktlen]
                    aead.decrypt_into(cipher._iv, view[pos + 4 : end], view[pos : pos + 4], plain)
                else:
                    plain = aead.decrypt(cipher._iv, view[pos + 4 : end], view[pos : pos + 4])
            except InvalidTag:
                break  # asyncssh decrypts it again and reports the failure
            try:
                if len(plain) < 10 or plain[1] != MSG_CHANNEL_DATA:
                    break
                recv_chan, length = _DATA_FIELDS.unpack_from(plain, 2)
                chan = channels.get(recv_chan)
                if (
                    chan is None
                    or chan._recv_state != "open"
                    or length > chan._recv_window
                    or 10 + length + plain[0] != len(plain)
                ):
                    break  # asyncssh raises the matching protocol error
                # GCMCipher._update_iv, inline (per packet).
                iv = cipher._iv
                cipher._iv = iv[:4] + ((int.from_bytes(iv[4:], "big") + 1) & _U64_MASK).to_bytes(
                    8, "big"
                )
                ssh._recv_seq = (ssh._recv_seq + 1) & 0xFFFFFFFF
                pos = end
                taken = True
                complete = True
                delivered: bytes | memoryview
                if chan.__dict__.get(_VIEWS):
                    # A view into the decrypted packet: the data is not
                    # copied again out of it (a pooled buffer is reused only
                    # once no such view is left).
                    delivered = memoryview(plain)[10 : 10 + length]
                else:
                    delivered = bytes(plain[10 : 10 + length])
                session = chan._session
                window = chan._recv_window - length
                if (
                    length
                    and chan.__class__ in _Applied.plain_channels
                    and window >= chan._init_recv_window / 2
                    and not chan._recv_paused
                    and not chan._encoding
                    and session is not None
                    and chan._send_state not in _CLOSING
                ):
                    # SSHChannel._accept_data and _deliver_data, inline (per
                    # packet), where they would only count and hand it on: a
                    # class that keeps asyncssh's own, no window top-up due,
                    # reading on, bytes, the channel open.
                    chan._recv_window = window
                    session.data_received(delivered, None)
                else:
                    chan._accept_data(delivered)  # type: ignore[arg-type]
            finally:
                if isinstance(plain, memoryview):
                    plain.release()  # (the channel's view keeps its own)
        rest: bytes | bytearray | memoryview
        if pos == size:
            rest = b""
        elif complete:  # the start of the next packet, kept (a copy: *data* may be a view)
            rest = bytearray(view[pos:])
        else:
            rest = buf if pos == 0 else view[pos:].tobytes()
    if taken:
        # sluice.ssh_keepalive.seen, inline (per read): note the time, while
        # its timer runs; nothing without keepalives; else asyncssh's reset.
        if ssh._keepalive_timer is None:
            if ssh._keepalive_interval:
                ssh._reset_keepalive_timer()
        elif (
            ssh.__dict__.get(ssh_keepalive.ARMED) == ssh._keepalive_interval and ssh._auth_complete
        ):
            ssh.__dict__[ssh_keepalive.SEEN] = ssh_keepalive.monotonic()
        else:
            ssh._reset_keepalive_timer()
    if complete and ssh._transport is not None:
        if rest:  # kept until the rest of the packet is in
            state = _state(ssh)
            state.pending = rest  # type: ignore[assignment]
            state.need = _U32.unpack_from(rest)[0] + _GCM_OVERHEAD if len(rest) >= 4 else 4
        return b""
    return rest  # type: ignore[return-value]


def schedule_sends(environ: Mapping[str, str]) -> None:
    """Install the send scheduler (``sluice.send_scheduler``; once, after
    ``batch_channel_writes``, whose flush it wraps) unless
    SLUICE_SEND_SCHEDULER in *environ* is off."""
    if send_scheduler.high_water(environ):
        _apply("send_scheduler", lambda: send_scheduler.install(environ))


def coalesce_sends(environ: Mapping[str, str]) -> None:
    """Allow ``sluice.send_coalescing`` (after ``batch_channel_writes``, whose
    batches it holds) unless SLUICE_SEND_COALESCING in *environ* is off."""
    if send_coalescing.enabled(environ):
        _apply("send_coalescing", lambda: send_coalescing.install(environ))


def tune_asyncssh(environ: Mapping[str, str] | None = None) -> bool:
    """Apply every tweak above, once per process, unless SLUICE_SSH_TUNING is
    off in *environ* (default: the process's) or asyncssh differs from what
    they were written for (then one warning is logged); the send scheduler
    too, unless SLUICE_SEND_SCHEDULER is off, and the write coalescing, unless
    SLUICE_SEND_COALESCING is off. Returns whether the tweaks are in place."""
    env = os.environ if environ is None else environ
    enabled = tuning_enabled(env)
    if enabled:
        skip_aead_ignore_packets()
        feed_in_pieces()
        batch_channel_writes()
        reuse_gcm_keys()
        quiet_channel_writes()
        lazy_keepalive()
        schedule_sends(env)
        coalesce_sends(env)
    if not _Applied.told:
        _Applied.told = True
        structlog.get_logger("sluice.ssh_tuning").info(
            "ssh_tuning",
            state="on" if _Applied.names else ("off" if not enabled else "stock"),
            send_scheduler="on" if send_scheduler.installed() else "off",
            send_coalescing="on" if send_coalescing.installed() else "off",
            asyncssh_version=ssh_shape.installed_version(),
        )
    return bool(_Applied.names)


def deliver_views(chan: SSHChannel[Any]) -> None:
    """Let *chan*'s session receive channel data as memoryviews.

    Under AES-GCM, with the tweaks in place, such a channel's data arrives as
    a view into the packet just decrypted (a bulk packet's buffer is reused
    once no view of it is left), saving one copy of every packet; its
    session must take any bytes-like object: write it on, join it, slice it,
    keep it, but not call bytes methods such as ``decode`` or ``startswith``
    on it, nor ``release()`` a view it handed on (a transport may keep that
    very object). Call it from the session's ``connection_made``."""
    chan.__dict__[_VIEWS] = True


def channel_write_copies() -> bool:
    """Whether ``SSHChannel.write`` copies its data before it returns (the
    tweaks are on, so asyncssh passed ``sluice.ssh_shape``'s check of that):
    then a caller may write from a buffer it reuses for its next read."""
    return bool(_Applied.names)


def send_window(chan: SSHChannel[Any]) -> int | None:
    """How many bytes *chan* may send now (what the peer's window has left),
    or None with the tweaks off."""
    return chan._send_window if _Applied.names else None


def set_receive_window(chan: SSHChannel[Any], size: int) -> None:
    """Make *size* bytes the receive window *chan* tops up to from now on.

    asyncssh grants more window once less than half of it is left, up to the
    size given when the channel opened; a smaller size takes effect as the
    peer uses up what it holds, a larger one at the next packet received.
    """
    chan._init_recv_window = size
