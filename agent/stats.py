"""What the agent counts about its streams: shared by the proxy, which
counts, and the health server, which reports."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from prometheus_client import Histogram

# Connects inside a private network take a millisecond or two; DNS and a slow
# or distant host stretch that to seconds, up to connect_timeout (10 s default).
CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def connect_histogram() -> Histogram:
    """A fresh, unregistered histogram of upstream connect times.

    Unregistered on purpose: it belongs to one ProxyStats, and the health
    server's collector re-exports it as ``sluice_agent_connect_seconds``.
    Its memory is fixed (one counter per bucket), however many connects.
    """
    return Histogram(
        "connect_seconds",
        "Time from CONNECT to an open upstream TCP connection.",
        buckets=CONNECT_BUCKETS,
        registry=None,
    )


@dataclass
class ProxyStats:
    """Counters the agent exposes (metrics, status)."""

    streams_open: int = 0
    streams_total: int = 0
    denied: int = 0
    connect_failed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    connect_seconds: Histogram = field(default_factory=connect_histogram)
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def opened(self) -> None:
        self.streams_open += 1
        self.streams_total += 1
        self.idle.clear()

    def closed(self) -> None:
        self.streams_open -= 1
        if self.streams_open == 0:
            self.idle.set()
