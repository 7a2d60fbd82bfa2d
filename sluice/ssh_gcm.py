"""AES-GCM for the tuned SSH paths (``sluice.ssh_tuning``): one key
schedule per key, and reused buffers for bulk packets.

AES-GCM key schedule: asyncssh builds a new AESGCM object for every packet;
``reuse_gcm_keys`` keeps one per direction and key (``_aead``; ``_patch_gcm``
for asyncssh's own per-packet calls).

Bulk packets are encrypted (``encrypt_into``) and decrypted
(``decrypt_into``) into a few buffers kept for them (``_BufferPool``),
each reused once no view of it is left.

Applied only by ``sluice.ssh_tuning.tune_asyncssh`` (after its shape check):
nothing is patched on import.
"""

from __future__ import annotations

import struct
from typing import Final

import asyncssh.crypto.cipher as _cipher
from asyncssh.crypto.cipher import GCMCipher
from asyncssh.encryption import GCMEncryption
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# Sluice's own per-cipher state, kept in the instance's __dict__ (see sluice.ssh_state).
_AEAD_KEY: Final = "_sluice_aead"
_U32 = struct.Struct(">I")
_U64_MASK: Final = 0xFFFFFFFFFFFFFFFF
# An AES-GCM nonce as RFC 5647 has it: a fixed field and the invocation
# counter, stepped by one a packet (GCMCipher._update_iv). Through this, one
# unpack and one pack a packet: slicing, two int conversions and a join cost
# about 330 ns against 190.
_IV = struct.Struct(">IQ")
_GCM_TAG = 16
# AESGCM.encrypt_into and decrypt_into (cryptography 45 on; pyproject allows
# older): without them, send_framed leaves every packet to SSHChannel.write,
# and each packet read is decrypted into a new object.
_ENCRYPT_INTO: Final = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")
# Output buffers a FrameBuffer keeps (one is usually enough: the transport
# takes a packet at once unless the socket is full).
_OUTPUTS = 4


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


def _aead(cipher: GCMCipher) -> AESGCM:
    """The AESGCM object of an asyncssh GCMCipher, made once."""
    aead: AESGCM | None = cipher.__dict__.get(_AEAD_KEY)
    if aead is None:
        aead = cipher.__dict__[_AEAD_KEY] = AESGCM(cipher._key)
    return aead


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
