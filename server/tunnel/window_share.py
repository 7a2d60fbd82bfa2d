"""Channel windows by traffic class, per agent connection.

Every stream of an agent shares one SSH connection. A bulk answer keeps a
whole receive window (1 MiB: ``sluice.sshconfig.CHANNEL_WINDOW``; 256 KiB
when the table below was measured) in flight, and in each process on the way
(agent and relay) a small answer beside it waits for that much bulk data to
be read, encrypted, written and decrypted ahead of it: about a millisecond
on loopback. While small answers flow beside it, a bulk stream's window
shrinks to SHARED_WINDOW, so less waits ahead of each one; alone, it gets the
whole window back at its next packet. (A smaller window for every stream
slows every download; granting window more eagerly under sharing did not
speed the shared download.)

Interleaved A/B on loopback, c=1 GETs beside a 1 GiB download through the
same agent; each range spans the medians (of 5 rounds) of separate runs, as
the VM's speed drifts between runs:

| shared window | GET p50 | download beside the GETs / alone |
|---|---|---|
| 256 KiB (none) | 1.21-1.47 ms, 0.76-1.26 ms | 0.81-0.97x |
| 128 KiB | 0.76-1.04 ms | 0.70-0.72x |
| 96 KiB | 0.70-0.79 ms | 0.53-0.59x (make bench: p50 0.82 ms, 0.59x) |

The GETs themselves cost CPU (about 0.4 ms of relay and agent time each, so
c=1 at ~1,200 req/s takes half a core of two), so the download cannot keep
its solo speed beside them; 128 KiB is where both the p50 (1 ms) and the
download (0.7x its solo speed) stay within the targets of issue #5.

Tried again at 84b1553 and dropped (issue 22, branch issue-28c): 256 KiB
(one whole packet; also what an eighth of the 2 MiB short-link window would
give) and 192 KiB. Interleaved ``bench.ab --points mixed,down1g --reps 7
--openssh --sched``, five runs, both orders, load 1.2-4.5. Quiet pairs at
256 KiB: the download beside the GETs -2% to +6% with ``make bench``'s
timing (GETs for 1 s of it), +17-21% with GETs for all of it; GET p50 -25%
to +70% (0.61-0.83 -> 0.53-1.03 ms). Under outside load (medians of 7):
download +11% and 0%, p50 1.28 -> 1.95 and 1.31 -> 2.09 ms. 192 KiB:
download +5-9%, p50 +10-25% (quiet pairs). The GETs' cost bounds the
download more than the window: the mixed point's CPU (relay and agent)
above the solo download's is 0.4-0.7 ms per GET, against 0.13-0.21 ms for a
GET alone (256 KiB saved 0.05 ms of it); ``perf`` (no Python frames on
3.11) shows the same profile with and without the GETs (the relay 15-17% in
the kernel's loopback send, ``_raw_spin_unlock_irqrestore``), so where the
rest goes is open; 0.7x with ``make bench``'s timing needs ~575 MB/s
while the GETs run (340-450 now).

Tried and dropped (issue 22, session 32): small answers on an SSH
connection of their own, the download keeping its whole window on another
(a second agent process and connection carrying the GETs, so nothing of the
download queued ahead of them in any socket). ``bench.ab --points
mixed,down1g --reps 7 --sched``, GETs for 1 s of the download, quiet
machine (load 1.4-1.8): the GETs' p50 1.19 ms (p99 7.6) against 0.71 ms
(p99 2.8) shared, the download beside them 773 against 551 MB/s. On two
cores the GETs wait for the CPU that the unthrottled download takes, not
for bytes queued ahead of them: the shared window keeps them fast because
it slows the download.

The cost on a long link: a stream moves at most one window per round trip,
so while shared a bulk answer there gets half its solo bound (128 KiB per
round trip: ~2.6 MB/s at 50 ms), for as long as small answers keep flowing.

A stream counts as bulk while it receives packets of at least BULK_PACKET
bytes; a packet below that on a stream that has not done so within RECENT
seconds is small traffic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from asyncssh.channel import SSHChannel

from sluice.ssh_tuning import set_receive_window

BULK_PACKET = 16 * 1024
RECENT = 0.005  # seconds
SHARED_WINDOW = 128 * 1024


class WindowShare:
    """The traffic classes of one SSH connection's streams."""

    def __init__(
        self,
        full: int,
        shared: int,
        clock: Callable[[], float] = time.monotonic,
        resize: Callable[[SSHChannel[Any], int], None] = set_receive_window,
    ) -> None:
        self.full = full
        self.shared = shared
        self._small_at = -math.inf
        self._small_from: object | None = None
        self._clock = clock
        self._resize = resize

    def received(self, stream: StreamClass, chan: SSHChannel[Any], size: int) -> None:
        """*stream* (on channel *chan*) received a packet of *size* bytes."""
        now = self._clock()
        if size >= BULK_PACKET:
            stream.bulk_at = now
            beside_small = now - self._small_at < RECENT and self._small_from is not stream
            self._resize(chan, self.shared if beside_small else self.full)
        elif now - stream.bulk_at >= RECENT:
            self._small_at = now
            self._small_from = stream


class StreamClass:
    """Per stream: when it last received a bulk-sized packet."""

    __slots__ = ("bulk_at",)

    def __init__(self) -> None:
        self.bulk_at = -math.inf
