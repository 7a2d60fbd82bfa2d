"""Channel windows by traffic class, per agent connection.

Every stream of an agent shares one SSH connection. A bulk answer keeps a
whole receive window (1 MiB: ``sluice.sshconfig.CHANNEL_WINDOW``) in
flight, and in each process on the way (agent and relay) a small answer
beside it waits for that much bulk data to be read, encrypted, written and
decrypted ahead of it: about a millisecond on loopback. While small answers
flow beside it, a bulk stream's window shrinks to SHARED_WINDOW, so less
waits ahead of each one; alone, it gets the whole window back at its next
packet. (A smaller window for every stream slows every download; granting
window more eagerly under sharing did not speed the shared download, nor
did it at 512 KiB: see below.)

SHARED_WINDOW is one whole packet (``sluice.sshconfig.CHANNEL_MAX_PKTSIZE``):
below that, the agent sends half packets, each waiting for its own top-up
(twice the packets, adjusts and wake-ups per MiB on both sides, while the
small answers take their share of the CPU). Larger, more bulk data waits at
the relay ahead of each small answer: on loopback the bytes in flight sit
in the relay's socket, where no sender's queue can put a small answer
first.

Interleaved A/B on loopback (issue 22, branch issue-25d): c=1 GETs beside a
1 GiB download through the same agent (``bench.ab --points mixed``, the
GETs kept inside the download), 5-6 repetitions per run, both orders (the
order matters: 256 KiB's p50 was +3 to +10 % when it ran second in each
repetition, one run +43 %, and +7 to +33 % when it ran first); change
against 128 KiB, of the medians per run, the machine loaded 3-7
(0.9-1.5 foreign cores):

| shared window | runs | GET p50 | download beside the GETs |
|---|---|---|---|
| 256 KiB | 10 | +3 to +43 %, median +9 % | -4 to +26 %, median +15 % |
| 512 KiB, topped up at every packet | 2 | +43, +86 % | +12, +4 % |
| 512 KiB | 2 | +84, +33 % | +3, +4 % |
| 1 MiB (none; a run of five trees) | 1 | +55 % | +28 % |

With 256 KiB the relay made 10.7 instead of 13.8 system calls and 3.7
instead of 5.1 context switches per MiB of the mixed load, the agent 11.6
instead of 13.7 and 3.3 instead of 4.0 (``--sched``). A 50 ms link
(``bench.long_link --rtt 50 --points beside``, 7 interleaved runs of 3):
GET p50 61.5 -> 61.7 ms, p99 138 -> 150 ms (62-203 ms either way), the
download beside them 145 -> 139 MB/s: within noise (a window grown to the
link is not shared).

Before (a 256 KiB starting window, 32-256 KiB packets), 128 KiB was the
choice: GET p50 0.76-1.04 ms and the download at 0.70-0.72x its solo speed
(96 KiB: 0.53-0.59x); make bench later gave 0.853 ms and 0.63x with it.

The GETs themselves cost CPU (about 0.4 ms of relay and agent time each, so
c=1 at ~1,200 req/s takes half a core of two), so the download cannot keep
its solo speed beside them.

The cost on a long link: a stream moves at most one window per round trip,
so while shared a bulk answer there gets a quarter of its starting bound
(256 KiB per round trip: ~5 MB/s at 50 ms), for as long as small answers
keep flowing, until the window tuner grows its window (a grown window is not
shared).

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
SHARED_WINDOW = 256 * 1024


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
