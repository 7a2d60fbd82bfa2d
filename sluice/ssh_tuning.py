"""One tweak to asyncssh, kept in one place and applied explicitly.

asyncssh sends an empty SSH_MSG_IGNORE before every packet once encryption
is on. That is a countermeasure for CBC ciphers (RFC 4251 §9.3.1); with the
AEAD ciphers Sluice negotiates (AES-GCM, ChaCha20-Poly1305) it protects
nothing, yet it doubles the packets, the encryptions and the socket writes
per chunk of data. OpenSSH does not send them. This skips exactly those
automatic packets, and only under an AEAD cipher; anything else asyncssh
sends is untouched.
"""

from __future__ import annotations

from typing import Any

import asyncssh.connection as _connection
from asyncssh.constants import MSG_IGNORE
from asyncssh.encryption import ChachaEncryption, GCMEncryption
from asyncssh.packet import String

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

