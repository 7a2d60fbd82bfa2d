"""Prometheus metrics for the relay (one registry per relay, no globals)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from server.tunnel.registry import TunnelRegistry
from server.web.proxied_metrics import ProxiedSeries

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RelayMetrics:
    def __init__(self, tunnels: TunnelRegistry) -> None:
        self.registry = CollectorRegistry()
        # sluice_requests and sluice_request_seconds, counted for each proxied request.
        series = ProxiedSeries(LATENCY_BUCKETS)
        self.registry.register(series)
        # Count one proxied request (mode, the answer's status, seconds to its head).
        self.proxied: Callable[[str, int, float], None] = series.proxied
        self.errors = Counter(
            "sluice_errors",
            "Relay-side failures by problem type.",
            ["type"],
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

    def slots(self, conn_id: str, in_flight: int, queued: int) -> None:
        self.in_flight.labels(conn_id).set(in_flight)
        self.queued.labels(conn_id).set(queued)

    def queue_wait(self, conn_id: str, seconds: float) -> None:
        self.queue_seconds.labels(conn_id).observe(seconds)

    def limited(self, conn_id: str, outcome: str) -> None:
        self.rate_limited.labels(conn_id, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
