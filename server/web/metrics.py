"""Prometheus metrics for the relay (one registry per relay, no globals)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from server.tunnel.registry import TunnelRegistry

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RelayMetrics:
    def __init__(self, tunnels: TunnelRegistry) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sluice_requests",
            "Requests sent through connections.",
            ["mode", "status_class"],
            registry=self.registry,
        )
        self.errors = Counter(
            "sluice_errors",
            "Relay-side failures by problem type.",
            ["type"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sluice_request_seconds",
            "Time to the API's response headers.",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.refreshes = Counter(
            "sluice_token_refreshes",
            "Token refresh calls.",
            ["outcome"],
            registry=self.registry,
        )
        self.forwarded = Counter(
            "sluice_forwarded",
            "Requests forwarded between relays of a cluster: 'out' sent to the relay "
            "holding the agent's tunnel, 'in' served for another relay.",
            ["direction"],
            registry=self.registry,
        )
        tunnels_gauge = Gauge(
            "sluice_tunnels", "Live agent SSH connections (replicas).", registry=self.registry
        )
        tunnels_gauge.set_function(lambda: len(tunnels))
        agents_gauge = Gauge(
            "sluice_agents_online",
            "Agents with at least one live tunnel.",
            registry=self.registry,
        )
        agents_gauge.set_function(lambda: len({t.agent_id for t in tunnels}))
        self._proxied: dict[tuple[str, int], tuple[Any, Any]] = {}
        self.in_flight = Gauge(
            "sluice_connection_in_flight",
            "Requests of a capped connection (http.concurrency_level) in flight to its API.",
            ["connection"],
            registry=self.registry,
        )
        self.queued = Gauge(
            "sluice_connection_queued",
            "Requests of a capped connection waiting for a slot.",
            ["connection"],
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "sluice_connection_queue_wait_seconds",
            "Time a request waited for one of its connection's slots.",
            ["connection"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "sluice_rate_limited",
            "Answers that were a rate limit (http.rate_limit), by connection.",
            ["connection", "outcome"],
            registry=self.registry,
        )

    def cap_shares(self, relays: Callable[[], int]) -> None:
        """In a cluster: how many live relays the concurrency caps are shared over."""
        gauge = Gauge(
            "sluice_cap_share_relays",
            "Live relays each connection's http.concurrency_level is shared over "
            "(this relay holds level // n, plus one if among the first level % n).",
            registry=self.registry,
        )
        gauge.set_function(relays)

    def proxied(self, mode: str, status: int, seconds: float) -> None:
        """Count one proxied request (the labelled series are looked up once)."""
        key = (mode, status // 100)
        series = self._proxied.get(key)
        if series is None:
            series = (self.latency.labels(mode), self.requests.labels(mode, f"{key[1]}xx"))
            self._proxied[key] = series
        series[0].observe(seconds)
        series[1].inc()

    def slots(self, conn_id: str, in_flight: int, queued: int) -> None:
        self.in_flight.labels(conn_id).set(in_flight)
        self.queued.labels(conn_id).set(queued)

    def queue_wait(self, conn_id: str, seconds: float) -> None:
        self.queue_seconds.labels(conn_id).observe(seconds)

    def limited(self, conn_id: str, outcome: str) -> None:
        self.rate_limited.labels(conn_id, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
