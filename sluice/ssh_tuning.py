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
asyncssh writes each packet (32 KiB at most) to the socket on its own. A
256 KiB read from an API becomes eight system calls. ``batch_channel_writes``
gathers the packets of one flush and writes them together, before the flush
returns: nothing is deferred, and the order of every byte is asyncssh's own.

AES-GCM key schedule: asyncssh builds a new AESGCM object for every packet;
``reuse_gcm_keys`` keeps one per direction and key.
"""

from __future__ import annotations

import contextlib
from typing import Any

import asyncssh.channel as _channel
import asyncssh.connection as _connection
import asyncssh.crypto.cipher as _cipher
from asyncssh.constants import MSG_IGNORE
from asyncssh.encryption import ChachaEncryption, GCMEncryption
from asyncssh.packet import String
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_EMPTY_IGNORE = String(b"")
_AEAD = (GCMEncryption, ChachaEncryption)
_applied = False


def skip_aead_ignore_packets() -> None:
    """Patch asyncssh (idempotently) to drop its automatic IGNORE packets under AEAD."""
    global _applied
    if _applied:
        return
    original = _connection.SSHConnection.send_packet

    def send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
        if (pkttype == MSG_IGNORE and args == (_EMPTY_IGNORE,)
                and isinstance(self._send_encryption, _AEAD)):
            return
        original(self, pkttype, *args, handler=handler)

    _connection.SSHConnection.send_packet = send_packet  # type: ignore[method-assign]
    _applied = True



_batching = False


def batch_channel_writes() -> None:
    """Patch asyncssh (idempotently): the packets of one channel flush go out in one write."""
    global _batching
    if _batching:
        return
    original_flush = _channel.SSHChannel._flush_send_buf
    original_send = _connection.SSHConnection._send
    _connection.SSHConnection._sluice_batch = None  # type: ignore[attr-defined]

    def _send(self: Any, data: bytes) -> None:
        batch = self._sluice_batch
        if batch is not None:
            batch.append(data)
        else:
            original_send(self, data)

    def _flush_send_buf(self: Any) -> None:
        conn = self._conn
        if conn is None or conn._sluice_batch is not None:
            original_flush(self)  # not connected, or inside a flush already
            return
        batch: list[bytes] = []
        conn._sluice_batch = batch
        try:
            original_flush(self)
        finally:
            conn._sluice_batch = None
            if len(batch) == 1:
                original_send(conn, batch[0])
            elif batch and conn._transport is not None:
                with contextlib.suppress(ConnectionError):  # as asyncssh's own _send
                    conn._transport.writelines(batch)

    _connection.SSHConnection._send = _send  # type: ignore[method-assign]
    _channel.SSHChannel._flush_send_buf = _flush_send_buf  # type: ignore[method-assign]
    _batching = True


_GCM_TAG = 16
_reusing = False


def reuse_gcm_keys() -> None:
    """Patch asyncssh (idempotently): one AESGCM object per cipher, not per packet."""
    global _reusing
    if _reusing:
        return
    gcm = _cipher.GCMCipher
    gcm._sluice_aead = None  # type: ignore[attr-defined]

    def _aead(self: Any) -> AESGCM:
        aead = self._sluice_aead
        if aead is None:
            aead = self._sluice_aead = AESGCM(self._key)
        return aead  # type: ignore[no-any-return]

    def encrypt_and_sign(self: Any, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        sealed = _aead(self).encrypt(self._iv, data, header)
        self._update_iv()
        return header + sealed[:-_GCM_TAG], sealed[-_GCM_TAG:]

    def verify_and_decrypt(self: Any, header: bytes, data: bytes, mac: bytes) -> bytes | None:
        try:
            opened: bytes | None = _aead(self).decrypt(self._iv, data + mac, header)
        except InvalidTag:
            opened = None
        self._update_iv()
        return opened

    gcm.encrypt_and_sign = encrypt_and_sign  # type: ignore[method-assign]
    gcm.verify_and_decrypt = verify_and_decrypt  # type: ignore[method-assign]
    _reusing = True


def tune_asyncssh() -> None:
    """Apply every tweak above (idempotent)."""
    skip_aead_ignore_packets()
    batch_channel_writes()
    reuse_gcm_keys()
