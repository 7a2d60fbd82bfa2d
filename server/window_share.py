"""Channel windows by traffic class, per agent connection.

Every stream of an agent shares one SSH connection. A bulk answer keeps a
whole receive window (256 KiB) in flight, and in each process on the way
(agent and relay) a small answer beside it waits for that much bulk data to
be read, encrypted, written and decrypted ahead of it: about a millisecond
on loopback. While small answers flow beside it, a bulk stream's window
shrinks to SHARED_WINDOW, so less waits ahead of each one; alone, it gets the
whole window back at its next packet. (A smaller window alone did not help:
it slows every download, and the wait is per busy process, not per byte.)

Interleaved A/B on loopback, c=1 GETs beside a 1 GiB download through the
same agent, 5-6 rounds each, medians:

| shared window | GET p50 | download beside them | download alone |
|---|---|---|---|
| 256 KiB (none) | 1.21-1.47 ms | 472-557 MB/s | 571-592 MB/s |
| 128 KiB | 1.04 ms | 469 MB/s | 518 MB/s |
| 96 KiB | 0.73-0.79 ms | 472-515 MB/s | 523-641 MB/s |
| 64 KiB | 0.75-0.92 ms | 405-468 MB/s | 428-611 MB/s |

A stream counts as bulk while it receives packets of at least BULK_PACKET
bytes; a packet below that on a stream that has not done so within RECENT
seconds is small traffic.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from sluice.ssh_tuning import set_receive_window

BULK_PACKET = 16 * 1024
RECENT = 0.005  # seconds
SHARED_WINDOW = 96 * 1024


class WindowShare:
    """The traffic classes of one SSH connection's streams."""

    def __init__(self, full: int, shared: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.full = full
        self.shared = shared
        self._small_at = -math.inf
        self._small_from: object | None = None
        self._clock = clock

    def received(self, stream: StreamClass, chan: Any, size: int) -> None:
        """*stream* (on channel *chan*) received a packet of *size* bytes."""
        now = self._clock()
        if size >= BULK_PACKET:
            stream.bulk_at = now
            beside_small = now - self._small_at < RECENT and self._small_from is not stream
            set_receive_window(chan, self.shared if beside_small else self.full)
        elif now - stream.bulk_at >= RECENT:
            self._small_at = now
            self._small_from = stream


class StreamClass:
    """Per stream: when it last received a bulk-sized packet."""

    __slots__ = ("bulk_at",)

    def __init__(self) -> None:
        self.bulk_at = -math.inf
