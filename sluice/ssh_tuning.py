"""Two tweaks to asyncssh, kept in one place and applied explicitly.

IGNORE packets: asyncssh sends an empty SSH_MSG_IGNORE before every packet once encryption
is on. That is a countermeasure for CBC ciphers (RFC 4251 §9.3.1); with the
AEAD ciphers Sluice negotiates (AES-GCM, ChaCha20-Poly1305) it protects
nothing, yet it doubles the packets, the encryptions and the socket writes
per chunk of data. OpenSSH does not send them. This skips exactly those
automatic packets, and only under an AEAD cipher; anything else asyncssh
sends is untouched.

Write coalescing (``coalesce_writes``): see ``_CoalescingTransport``. It is
switched on per connection once the tunnel is set up (listener registered,
ready signal exchanged), so login and setup run exactly as asyncssh wrote
them; an earlier version that coalesced from the first byte could stall the
setup.
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



class _CoalescingTransport:
    """Gathers what asyncssh writes in one event-loop turn into one write.

    asyncssh writes every packet separately, and the event loop turns each
    write into a system call while the socket keeps up. Under load many
    streams write in the same loop turn (each request's head, each answer's
    chunk); sending their packets together saves the calls. Order is kept,
    and close/abort send what is pending first.
    """

    __slots__ = ("_loop", "_pending", "_scheduled", "_transport")

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._pending:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._flush()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalesce_writes(conn: Any) -> bool:
    """From now on, *conn* (an asyncssh connection) writes once per loop turn.

    Returns False (and changes nothing) if the connection has no transport.
    """
    transport = getattr(conn, "_transport", None)
    if transport is None or isinstance(transport, _CoalescingTransport):
        return transport is not None
    conn._transport = _CoalescingTransport(transport, conn._loop)
    return True
