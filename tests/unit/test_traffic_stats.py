"""The console's per-minute series: counts, errors, percentiles, the hour window."""

from __future__ import annotations

from server.proxy.traffic_stats import TrafficStats, percentile


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_minutes_count_requests_errors_and_percentiles() -> None:
    clock = Clock(600_000.0)
    stats = TrafficStats(clock)
    for ms in range(1, 101):
        stats.record("con_a", 200 if ms <= 90 else 503, ms / 1000)
    hour = stats.last_hour("con_a")
    assert len(hour) == 60
    assert hour[-1] == {
        "minute": "1970-01-07T22:40:00Z",
        "requests": 100,
        "errors": 10,
        "p50_ms": 50.0,
        "p99_ms": 99.0,
    }
    assert hour[0]["requests"] == 0
    assert hour[0]["p50_ms"] is None
    clock.now += 61 * 60  # an hour and a minute later the minute has gone
    assert sum(m["requests"] for m in stats.last_hour("con_a")) == 0


def test_percentile_nearest_rank() -> None:
    assert percentile([5.0], 0.99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
