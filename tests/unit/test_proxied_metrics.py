"""``server.web.proxied_metrics`` against prometheus_client's own Counter and
Histogram: the same requests give the same exposition text."""

from __future__ import annotations

import random
import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from server.web.metrics import LATENCY_BUCKETS
from server.web.proxied_metrics import ProxiedSeries


def _lines(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines, each family's creation time masked (they differ by a clock tick)."""
    text = generate_latest(registry).decode()
    return sorted(re.sub(r"(_created\{[^}]*\}) \S+$", r"\1 T", line) for line in text.splitlines())


def test_the_series_read_as_prometheus_clients_own() -> None:
    stock, ours = CollectorRegistry(), CollectorRegistry()
    requests = Counter(
        "sluice_requests",
        "Requests sent through connections.",
        ["mode", "status_class"],
        registry=stock,
    )
    latency = Histogram(
        "sluice_request_seconds",
        "Time to the API's response headers.",
        ["mode"],
        buckets=LATENCY_BUCKETS,
        registry=stock,
    )
    series = ProxiedSeries(LATENCY_BUCKETS)
    ours.register(series)
    rng = random.Random(7)
    # Values on the bounds too: a value equal to a bound counts in its bucket.
    values = [0.001, 0.0025, 1, 30, 31.5, 0.0]
    for _ in range(3000):
        mode = rng.choice(["cloud", "on_premise"])
        status = rng.choice([200, 204, 301, 404, 429, 502, 504])
        seconds = rng.choice([*values, rng.random() * 0.2, rng.random() * 40])
        requests.labels(mode, f"{status // 100}xx").inc()
        latency.labels(mode).observe(seconds)
        series.proxied(mode, status, seconds)
    assert _lines(ours) == _lines(stock)
    assert 'sluice_request_seconds_bucket{le="0.001",mode="cloud"}' in "".join(_lines(ours))


def test_nothing_counted_shows_no_series() -> None:
    ours = CollectorRegistry()
    ours.register(ProxiedSeries(LATENCY_BUCKETS))
    text = generate_latest(ours).decode()
    assert "sluice_requests_total{" not in text
    assert "sluice_request_seconds_bucket{" not in text
