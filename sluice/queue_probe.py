"""Where bytes wait on their way out of an SSH connection: a bench-only probe.

When: ``SLUICE_QUEUE_PROBE=<file>`` is in the environment of a process that
opens or accepts a tunnel (the bench sets it; nothing else does), a task
samples the connection every ``SLUICE_QUEUE_PROBE_MS`` (default 5) ms and
appends one JSON line per sample to the file:

- ``chan``: bytes in asyncssh's channel send buffers (written by a stream,
  not yet sent for lack of channel window), summed over channels, and the
  largest channel's;
- ``transport``: bytes in the event loop transport's write buffer (handed
  to the transport, not yet accepted by the kernel);
- ``outq`` / ``notsent``: the kernel send queue of the tunnel socket
  (SIOCOUTQ: written and not yet acknowledged; SIOCOUTQNSD: not yet sent),
  and ``inq``, what the kernel has received and the process not yet read;
- ``lag`` (a line of its own): how late the sampler woke, i.e. how long other
  work held the agent's event loop.

A small answer written now waits behind all of ``transport`` and ``notsent``
(and, on the line, whatever is in flight). Off unless the variable is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import struct
import time
from typing import Any, Final, TextIO

import asyncssh

SWITCH: Final = "SLUICE_QUEUE_PROBE"
PERIOD: Final = "SLUICE_QUEUE_PROBE_MS"
_SIOCOUTQ: Final = 0x5411  # TIOCOUTQ
_SIOCOUTQNSD: Final = 0x894B
_SIOCINQ: Final = 0x541B  # FIONREAD
_TASKS: set[asyncio.Task[None]] = set()  # running probes (a task needs a reference)


def _ioctl_int(fd: int, request: int) -> int:
    got = fcntl.ioctl(fd, request, b"\0\0\0\0")
    return int(struct.unpack("i", got)[0])


def sample(ssh: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> dict[str, Any]:
    """One look at *ssh*'s queues (see the module docstring)."""
    # asyncssh's private state, read only: this is a measuring tool.
    chans = [c._send_buf_len for c in list(ssh._channels.values())]
    transport = ssh._transport
    row: dict[str, Any] = {
        "t": time.monotonic(),
        "chan": sum(chans),
        "chan_max": max(chans, default=0),
        "channels": len(chans),
        "transport": transport.get_write_buffer_size() if transport is not None else 0,
    }
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            fd = sock.fileno()
            row["outq"] = _ioctl_int(fd, _SIOCOUTQ)
            row["notsent"] = _ioctl_int(fd, _SIOCOUTQNSD)
            row["inq"] = _ioctl_int(fd, _SIOCINQ)
    return row


def start(
    ssh: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection, name: str
) -> asyncio.Task[None] | None:
    """If the probe is switched on, sample *ssh* until it closes; else nothing."""
    path = os.environ.get(SWITCH, "")
    if not path:
        return None
    period = float(os.environ.get(PERIOD, "5")) / 1000
    out = open(path, "a", buffering=1 << 16)  # noqa: SIM115 (closed by _run)
    task = asyncio.get_running_loop().create_task(_run(ssh, name, out, period))
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return task


async def _run(
    ssh: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection,
    name: str,
    out: TextIO,
    period: float,
) -> None:
    loop = asyncio.get_running_loop()
    with out:
        while ssh._transport is not None:
            row = sample(ssh)
            row["conn"] = name
            out.write(json.dumps(row) + "\n")
            asked = loop.time() + period
            await asyncio.sleep(period)
            # How late the loop woke: time other work held the event loop.
            row_lag = loop.time() - asked
            out.write(json.dumps({"lag": row_lag}) + "\n")
