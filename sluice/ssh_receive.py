"""The tuned receive path (``sluice.ssh_tuning``).

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

Applied only by ``sluice.ssh_tuning.tune_asyncssh`` (after its shape check):
nothing is patched on import.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import asyncssh.connection as _connection
from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_CHANNEL_WINDOW_ADJUST
from asyncssh.encryption import GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.misc import DisconnectError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sluice import ssh_keepalive
from sluice.ssh_gcm import (
    _AEAD_KEY,
    _ENCRYPT_INTO,
    _IV,
    _PLAINTEXTS,
    _POOLED_LEAST,
    _U32,
    _U64_MASK,
    _aead,
)
from sluice.ssh_send import send_window_adjust
from sluice.ssh_state import (
    _CONN_STATE,
    _VIEWS,
    _Applied,
    _ConnState,
    _state,
    channel_classes_where,
)


def _stock_dispatch(cls: type[SSHChannel[Any]], pkttype: int) -> bool:
    """Whether *cls* receives a packet of *pkttype* as SSHChannel does: the
    same dispatch, logging and handler (what the tuned path does in its
    place)."""
    return (
        cls.process_packet is SSHChannel.process_packet
        and cls.log_received_packet is SSHChannel.log_received_packet
        and SSHChannel._packet_handlers.get(pkttype) is not None
        and cls._packet_handlers.get(pkttype) is SSHChannel._packet_handlers.get(pkttype)
    )


def _plain_channel_classes() -> frozenset[type]:
    return channel_classes_where(
        lambda cls: (
            cls._accept_data is SSHChannel._accept_data
            and cls._deliver_data is SSHChannel._deliver_data
            and _stock_dispatch(cls, MSG_CHANNEL_DATA)
        )
    )


def _adjusting_channel_classes() -> frozenset[type]:
    """asyncssh's channel classes that take a window adjust with
    SSHChannel's own handler (``_take_data_packets`` does what it does)."""
    return channel_classes_where(lambda cls: _stock_dispatch(cls, MSG_CHANNEL_WINDOW_ADJUST))


# A channel that no longer takes data (SSHChannel._accept_data drops it).
_CLOSING: Final = frozenset({"close_pending", "closed"})
_DATA_FIELDS = struct.Struct(">II")  # channel, length (also: channel, adjust)
# A window adjust's plaintext: padding length, type, channel, adjust, padding.
_ADJUST_SIZE: Final = 1 + 1 + 4 + 4
# SSHChannel._process_window_adjust's check: the channel still receives.
_ADJUSTABLE: Final = frozenset({"open", "eof_pending", "eof"})
# Channel data up to this size is delivered as bytes of its own even to a
# channel that takes views (``ssh_tuning.deliver_views``): copying it costs
# less than making a view and working with one.
_COPIED_MOST: Final = 2048


_PIECE = 32 * 1024


def _patch_data_received() -> None:
    original = SSHConnection.data_received
    _Applied.plain_channels = _plain_channel_classes()
    _Applied.adjusting_channels = _adjusting_channel_classes()

    def data_received(self: SSHConnection, data: bytes, datatype: int | None = None) -> None:
        # As asyncssh's _recv_data: an error in a packet's handling (a
        # session's data_received included, which the fast path calls
        # inline) ends the connection through asyncssh, not the event loop.
        try:
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
                    # A read, if not a whole packet: asyncssh resets the keepalive
                    # timer on every read (a packet on a slow link spans many).
                    self._reset_keepalive_timer()
                    return
                view = memoryview(data)
                pending += view[:missing]
                data = view[missing:]  # type: ignore[assignment]
                state.pending = None
                feed(self, pending, datatype)  # type: ignore[arg-type]
                if not data or self._transport is None:
                    return
            feed(self, data, datatype)
        except DisconnectError as exc:
            self._send_disconnect(exc.code, exc.reason, exc.lang)
            self._force_close(exc)
        except Exception:
            self.internal_error()

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
                    # _PLAINTEXTS.take, its buffers tried inline (a call to
                    # take and one to _unshared per buffer tried otherwise):
                    # one is free once no view of it is left.
                    into = None
                    for kept in _PLAINTEXTS._buffers:
                        if len(kept) > pktlen:
                            try:  # (_unshared, inline)
                                del kept[-1]
                            except BufferError:
                                continue
                            kept.append(0)
                            into = kept
                            break
                    if into is None:
                        into = _PLAINTEXTS.take(pktlen)
                    plain = memoryview(into)[:pktlen]
                    aead.decrypt_into(cipher._iv, view[pos + 4 : end], view[pos : pos + 4], plain)
                else:
                    plain = aead.decrypt(cipher._iv, view[pos + 4 : end], view[pos : pos + 4])
            except InvalidTag:
                break  # asyncssh decrypts it again and reports the failure
            try:
                if len(plain) < 10 or not plain[0]:
                    # Too short, or no padding: asyncssh's payload slice
                    # (packet[1:-padlen]) is then empty, and it ends the
                    # connection; so it parses this one.
                    break
                if plain[1] != MSG_CHANNEL_DATA:
                    if plain[1] != MSG_CHANNEL_WINDOW_ADJUST:
                        break
                    # A window top-up (one per half window a bulk stream
                    # sends): taken here, not by asyncssh's parser.
                    recv_chan, adjust = _DATA_FIELDS.unpack_from(plain, 2)
                    chan = channels.get(recv_chan)
                    if (
                        chan is None
                        or chan.__class__ not in _Applied.adjusting_channels
                        or chan._recv_state not in _ADJUSTABLE
                        or _ADJUST_SIZE + plain[0] != len(plain)
                        or SSHLogger._debug_level >= 2
                    ):
                        break  # asyncssh's own (an error, a debug log)
                    iv = cipher._iv
                    fixed, counter = _IV.unpack(iv)
                    cipher._iv = _IV.pack(fixed, (counter + 1) & _U64_MASK)
                    ssh._recv_seq = (ssh._recv_seq + 1) & 0xFFFFFFFF
                    pos = end
                    taken = True
                    complete = True
                    # SSHChannel._process_window_adjust, inline: the window
                    # grows, and what waited for it is sent.
                    chan._send_window += adjust
                    chan._flush_send_buf()
                    if ssh._transport is None:
                        break  # the flush failed and closed the connection
                    continue
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
                fixed, counter = _IV.unpack(iv)
                cipher._iv = _IV.pack(fixed, (counter + 1) & _U64_MASK)
                ssh._recv_seq = (ssh._recv_seq + 1) & 0xFFFFFFFF
                pos = end
                taken = True
                complete = True
                delivered: bytes | memoryview
                if length <= _COPIED_MOST and type(plain) is bytes:
                    # Little data (a request, a small answer): its own bytes,
                    # one small copy, not a view; a view costs more to make,
                    # and to compare and slice where it goes (about 0.3 us
                    # a packet on the relay's answer path).
                    delivered = plain[10 : 10 + length]
                elif chan.__dict__.get(_VIEWS):
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
                    and not chan._recv_paused
                    and not chan._encoding
                    and session is not None
                    and chan._send_state not in _CLOSING
                    and (window >= chan._init_recv_window / 2 or SSHLogger._debug_level < 2)
                ):
                    # SSHChannel._accept_data and _deliver_data, inline (per
                    # packet): a class that keeps asyncssh's own, reading on,
                    # bytes, the channel open, no debug log of a top-up due.
                    if window < chan._init_recv_window / 2:
                        # A top-up due: sent here as asyncssh would, before
                        # the data goes on (without its two calls and log).
                        send_window_adjust(chan, chan._init_recv_window - window)
                        window = chan._init_recv_window
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
    if taken or complete:
        # sluice.ssh_keepalive.seen, inline (per read, as asyncssh's reset on
        # every read, whole packets in it or only the start of one): note the
        # time, while its timer runs; nothing without keepalives; else
        # asyncssh's reset. (Not complete: asyncssh's parser gets the rest.)
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
