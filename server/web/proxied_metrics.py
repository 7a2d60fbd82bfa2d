"""The per-request Prometheus series: requests by mode and status class, and
their latency histogram by mode.

prometheus_client's ``Counter.inc`` and ``Histogram.observe`` take a lock and
make about ten Python calls for each proxied request. Here a request adds to
plain numbers (one ``bisect`` for its bucket), and the series are made from
them when the registry is collected (``/metrics``): the same names, labels,
buckets and ``_created`` series as prometheus_client's own Counter and
Histogram give. The event loop is the only writer, so no lock is needed.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class _Mode:
    """One mode's numbers: bucket counts (not cumulative), sum, counts by class."""

    __slots__ = ("buckets", "by_class", "created", "sum")

    def __init__(self, buckets: int) -> None:
        self.buckets = [0] * buckets
        self.sum = 0.0
        self.created = time.time()
        self.by_class: dict[int, tuple[float, list[int]]] = {}


class ProxiedSeries(Collector):
    """``sluice_requests`` (counter: mode, status_class) and
    ``sluice_request_seconds`` (histogram: mode), counted by ``proxied``."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = sorted(float(b) for b in bounds)
        if not self._bounds or self._bounds[-1] != math.inf:
            self._bounds.append(math.inf)
        self._modes: dict[str, _Mode] = {}

    def __repr__(self) -> str:
        return f"<ProxiedSeries modes={sorted(self._modes)}>"

    def proxied(self, mode: str, status: int, seconds: float) -> None:
        """Count one proxied request: its answer's *status*, *seconds* to its head."""
        counts = self._modes.get(mode)
        if counts is None:
            counts = self._modes[mode] = _Mode(len(self._bounds))
        # bisect_left: a value equal to a bound falls in that bound's bucket (le).
        counts.buckets[bisect.bisect_left(self._bounds, seconds)] += 1
        counts.sum += seconds
        cls = status // 100
        seen = counts.by_class.get(cls)
        if seen is None:
            seen = counts.by_class[cls] = (time.time(), [0])
        seen[1][0] += 1

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "sluice_requests", "Requests sent through connections.", labels=["mode", "status_class"]
        )
        latency = HistogramMetricFamily(
            "sluice_request_seconds", "Time to the API's response headers.", labels=["mode"]
        )
        for mode, counts in self._modes.items():
            for cls, (since, count) in counts.by_class.items():
                requests.add_metric([mode, f"{cls}xx"], count[0], created=since)
            running = 0
            cumulative = []
            for bound, count_in in zip(self._bounds, counts.buckets, strict=True):
                running += count_in
                # The label as prometheus_client writes it (its helper is untyped).
                le = floatToGoString(bound)  # type: ignore[no-untyped-call]
                cumulative.append((le, float(running)))
            latency.add_metric([mode], cumulative, counts.sum)
        yield requests
        yield latency
        created = GaugeMetricFamily(
            "sluice_request_seconds_created",
            "Time to the API's response headers.",
            labels=["mode"],
        )
        for mode, counts in self._modes.items():
            created.add_metric([mode], counts.created)
        yield created
