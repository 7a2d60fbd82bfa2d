"""Sending an API's bulk read as it landed (``sluice.ssh_tuning``).

Sending from the read: ``send_framed`` sends a bulk read that landed in a
``FrameBuffer`` (the agent's reads of an API) as one packet, framed and
encrypted in place (``encrypt_into``) into an output buffer reused once the
transport holds no view of it, when the channel may send it at once; else
the caller writes it to the channel as usual. With the tweaks off
(``sluice.ssh_tuning``) it sends nothing.
"""

from __future__ import annotations

from typing import Any, Final

from asyncssh.channel import SSHChannel
from asyncssh.constants import MSG_CHANNEL_DATA
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sluice import send_coalescing, send_scheduler
from sluice.ssh_gcm import (
    _AEAD_KEY,
    _ENCRYPT_INTO,
    _GCM_TAG,
    _IV,
    _OUTPUTS,
    _U32,
    _U64_MASK,
    _aead,
    _unshared,
)
from sluice.ssh_padding import PADDING
from sluice.ssh_padding import POOL as _PAD_POOL
from sluice.ssh_send import _DATA_PREFIX, _gcm_ready
from sluice.ssh_state import _CONN_STATE, _Applied, _ConnState

# Room after a framed packet's data for its padding (at most a block + 3).
_PAD_ROOM = 32


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
    # Per packet, inline (each a Python call otherwise, on cold caches after
    # the packet's 256 KiB went through them): the AESGCM object (_aead), the
    # padding (Padding.take), the first output buffer (output, _unshared),
    # the invocation counter (GCMCipher._update_iv), the outbox (_send).
    aead: AESGCM | None = cipher.__dict__.get(_AEAD_KEY)
    if aead is None:
        aead = _aead(cipher)
    padlen = -(ssh._send_enchdrlen + 9 + size) % ssh._send_blocksize
    if padlen < 4:
        padlen += ssh._send_blocksize
    plain = frames._plain
    end = _DATA_PREFIX.size + size
    _DATA_PREFIX.pack_into(plain, 0, padlen, MSG_CHANNEL_DATA, send_chan, size)
    padding = PADDING
    pad_end = padding.pos + padlen
    if pad_end > _PAD_POOL:
        padding.refill()
        pad_end = padlen
    padding.pos = pad_end
    plain[end : end + padlen] = padding.data[pad_end - padlen : pad_end]
    pktlen = end + padlen
    header = _U32.pack(pktlen)
    outputs = frames._outputs
    out = outputs[0] if outputs else None
    if out is not None:
        try:  # _unshared, inline: no view of it is left
            del out[-1]
            out.append(0)
        except BufferError:
            out = None
    if out is None:
        out = frames.output(4 + pktlen + _GCM_TAG)
    iv = cipher._iv
    with memoryview(out) as view:
        view[:4] = header
        with plain[:pktlen] as clear, view[4 : 4 + pktlen + _GCM_TAG] as sealed:
            aead.encrypt_into(iv, clear, header, sealed)
    fixed, counter = _IV.unpack(iv)
    cipher._iv = _IV.pack(fixed, (counter + 1) & _U64_MASK)
    ssh._send_seq = (ssh._send_seq + 1) & 0xFFFFFFFF
    ssh._rekey_bytes_sent += pktlen
    chan._send_window -= size
    # Not released here: a transport may keep this very object until its
    # socket takes it (Python 3.12+'s selector transport appends it to its
    # buffer; uvloop takes a view of its own). The view alive keeps *out*
    # from reuse (``_unshared``) until the transport lets go of it.
    packet = memoryview(out)[: 4 + pktlen + _GCM_TAG]
    # The tuned _send, inline (no flush under way, checked above): after
    # what the outbox holds, else written at once (as the outbox would: the
    # packet is past its LIMIT), without the outbox's two calls.
    held: send_coalescing.Outbox | None = ssh.__dict__.get(send_coalescing.KEY)
    if held is not None and held.parts:
        held.add(ssh._transport, [packet])  # type: ignore[list-item]
    else:
        try:  # noqa: SIM105 (as asyncssh's own _send; contextlib.suppress is three calls)
            ssh._transport.write(packet)
        except ConnectionError:
            pass
    return True
