"""Per-connection traffic over the last hour, minute by minute, for the
console's charts: requests, errors, p50 and p99 latency.

Kept in memory by each relay (a cluster's console adds the relays' series,
``merged_hour``: counts sum; percentiles are merged from the kept samples,
each weighted by the requests it stands for). Each minute keeps at most
SAMPLES_PER_MINUTE latencies (a uniform reservoir), so memory stays bounded
however busy a connection is.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MINUTES = 60
SAMPLES_PER_MINUTE = 512


@dataclass
class _Minute:
    start: int  # epoch minute
    requests: int = 0
    errors: int = 0
    samples: list[float] = field(default_factory=list)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, min(len(sorted_values), math.ceil(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


def weighted_percentile(weighted: list[tuple[float, float]], fraction: float) -> float:
    """Nearest-rank percentile of (value, weight) pairs sorted by value: the
    first value whose running weight reaches *fraction* of the total."""
    target = fraction * sum(weight for _, weight in weighted)
    running = 0.0
    for value, weight in weighted:
        running += weight
        if running >= target:
            return value
    return weighted[-1][0]


def _stamp(start: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(start * 60))


def merged_hour(exports: list[list[dict[str, Any]]], now: float) -> list[dict[str, Any]]:
    """The relays' ``TrafficStats.export`` series as one ``last_hour``: counts
    summed, p50/p99 from every relay's samples, each weighted by the requests
    of its relay's minute over that minute's samples (a relay that kept 512
    of 10,000 counts as much as 10,000 requests, not 512)."""
    current = int(now // 60)
    requests: dict[int, int] = {}
    errors: dict[int, int] = {}
    samples: dict[int, list[tuple[float, float]]] = {}
    for export in exports:
        for m in export:
            start = int(m["minute"])
            if not current - MINUTES < start <= current:
                continue
            requests[start] = requests.get(start, 0) + int(m["requests"])
            errors[start] = errors.get(start, 0) + int(m["errors"])
            kept = [float(v) for v in m["samples_ms"]]
            if kept:
                weight = int(m["requests"]) / len(kept)
                samples.setdefault(start, []).extend((v, weight) for v in kept)
    out = []
    for start in range(current - MINUTES + 1, current + 1):
        weighted = sorted(samples.get(start, []))
        out.append(
            {
                "minute": _stamp(start),
                "requests": requests.get(start, 0),
                "errors": errors.get(start, 0),
                "p50_ms": round(weighted_percentile(weighted, 0.5), 1) if weighted else None,
                "p99_ms": round(weighted_percentile(weighted, 0.99), 1) if weighted else None,
            }
        )
    return out


def is_error(status: int) -> bool:
    """An answer that counts against the error rate: a 5xx (the API's or the relay's)
    or a 429 (limited)."""
    return status >= 500 or status == 429


class TrafficStats:
    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._series: dict[str, deque[_Minute]] = {}
        self._rng = random.Random()  # noqa: S311 - sampling, not security

    def __repr__(self) -> str:
        return f"<TrafficStats connections={len(self._series)}>"

    def record(self, conn_id: str, status: int, seconds: float) -> None:
        minute = int(self._clock() // 60)
        series = self._series.get(conn_id)
        if series is None:
            series = self._series[conn_id] = deque(maxlen=MINUTES)
        if not series or series[-1].start != minute:
            series.append(_Minute(minute))
        # The minute counts it here, not in a method of its own, and is_error
        # is inline: this runs for every proxied request.
        counts = series[-1]
        counts.requests += 1
        if status >= 500 or status == 429:
            counts.errors += 1
        samples = counts.samples
        if len(samples) < SAMPLES_PER_MINUTE:
            samples.append(seconds)
        else:
            # Uniform over [0, requests), as randrange would be, in one C call
            # (randrange is several Python calls, for every request past the
            # first SAMPLES_PER_MINUTE of a busy minute).
            slot = int(self._rng.random() * counts.requests)
            if slot < SAMPLES_PER_MINUTE:
                samples[slot] = seconds

    def forget(self, conn_id: str) -> None:
        self._series.pop(conn_id, None)

    def now(self) -> float:
        return float(self._clock())

    def export(self, conn_id: str) -> list[dict[str, Any]]:
        """This relay's minutes of the last hour that saw requests, with their
        kept samples (ms), for another relay to merge (``merged_hour``)."""
        now = int(self._clock() // 60)
        return [
            {
                "minute": m.start,
                "requests": m.requests,
                "errors": m.errors,
                "samples_ms": [round(v * 1000, 2) for v in m.samples],
            }
            for m in self._series.get(conn_id, ())
            if now - MINUTES < m.start <= now
        ]

    def last_hour(self, conn_id: str) -> list[dict[str, Any]]:
        """Sixty minutes, oldest first, ending with the current one; empty
        minutes have zero requests and null latencies."""
        now = int(self._clock() // 60)
        kept = {m.start: m for m in self._series.get(conn_id, ())}
        out = []
        for start in range(now - MINUTES + 1, now + 1):
            m = kept.get(start)
            samples = sorted(m.samples) if m is not None else []
            out.append(
                {
                    "minute": _stamp(start),
                    "requests": m.requests if m is not None else 0,
                    "errors": m.errors if m is not None else 0,
                    "p50_ms": round(percentile(samples, 0.5) * 1000, 1) if samples else None,
                    "p99_ms": round(percentile(samples, 0.99) * 1000, 1) if samples else None,
                }
            )
        return out
