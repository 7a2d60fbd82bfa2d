"""Half-closing a TCP connection whose peer may be gone already."""

from __future__ import annotations

import asyncio


def half_close(transport: asyncio.WriteTransport) -> Exception | None:
    """Send EOF on *transport* (the caller checked ``can_write_eof``). If the
    peer is gone already, abort the connection and return why: asyncio's
    transport raises ENOTCONN from the shutdown of a socket its peer reset
    while nobody read it, uvloop's a RuntimeError once its handle is closed.
    Raised inside a protocol callback, either ended more than this
    connection (the relay's request task; asyncssh closed the agent's whole
    tunnel)."""
    try:
        transport.write_eof()
    except (OSError, RuntimeError) as exc:
        transport.abort()
        return exc
    return None
