"""Several buffers to a transport in one call, with flow control intact.

The tunnel's packets of a loop turn leave in one ``transport.writelines``
(``sluice.send_coalescing``, ``sluice.ssh_send``): one ``sendmsg`` instead of
a system call per packet, and no copy. Python 3.12 gave asyncio's own socket
transport that ``writelines``; up to 3.12.8 and 3.13.1 it never told the
protocol to pause once its buffer passed the high-water mark (CPython
gh-127655, advisory PSF-2024-14). asyncssh's flow control and the send
scheduler (``sluice.send_scheduler``) both wait for that pause, so a peer
that stopped reading let the writer's buffer grow without bound. uvloop's
transport (the default loop; ``SLUICE_NO_UVLOOP=1`` turns it off) pauses,
and 3.11's ``writelines`` joins the buffers and writes them, which pauses.

So on the affected versions asyncio's socket transport gets the buffers
joined, through ``write`` (one copy, as 3.11 makes, and the pause); every
other transport gets ``writelines``, and one without it (asyncssh's
proxy-command tunnel) the joined bytes.
"""

from __future__ import annotations

import asyncio
import sys
from asyncio import selector_events
from collections.abc import Sequence
from typing import Any, Final

# The Pythons whose asyncio socket transport skips the pause in writelines.
_VERSION: Final = sys.version_info[:3]
_SKIPS_PAUSE: Final = (3, 12, 0) <= _VERSION < (3, 12, 9) or (3, 13, 0) <= _VERSION < (3, 13, 2)

# The transport class to write joined bytes to on this Python, if any
# (getattr: a private name of asyncio's; without it nothing is joined).
JOINED_FOR: Final[type[asyncio.WriteTransport] | None] = (
    getattr(selector_events, "_SelectorSocketTransport", None) if _SKIPS_PAUSE else None
)


def write_parts(transport: Any, parts: Sequence[bytes | bytearray | memoryview]) -> None:
    """Write *parts* (at least one) to *transport*, in order, as one write; a
    connection already lost is no error here (as asyncssh's own ``_send``:
    its ``connection_lost`` reports it). ``send_coalescing.Outbox.flush``
    makes the same choice inline.

    Any: an asyncio transport, or asyncssh's proxy-command tunnel, which has
    ``write`` only."""
    try:  # not contextlib.suppress: three Python calls, on every flush
        if len(parts) == 1:
            transport.write(parts[0])
        elif type(transport) is JOINED_FOR or not hasattr(transport, "writelines"):
            transport.write(b"".join(parts))
        else:
            transport.writelines(parts)
    except ConnectionError:
        pass
