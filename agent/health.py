"""The agent's health endpoint: /healthz, /readyz and /metrics on a local address.

Probes (systemd, Docker, Kubernetes) and ``sluice-agent status`` read it.
Nothing here keeps counters of its own: every answer is read from the live
TunnelStatus and ProxyStats at request time, so it cannot drift from what
the tunnel and the proxy actually did. Nothing it prints may carry a secret:
the relay address, the state and the last error are all it says, and the
last error is masked against the secrets it is given.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from agent.state import TunnelState, TunnelStatus
from sluice.addresses import HostPort
from sluice.logs import SecretMasker

if TYPE_CHECKING:
    # Only for annotations: agent.proxy may import connect_histogram from here.
    from agent.proxy import ProxyStats

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


class HealthListenError(OSError):
    """The health endpoint could not listen on the configured address."""


class AgentCollector:
    """Prometheus collector that reads the live tunnel status and proxy counters."""

    def __init__(self, status: TunnelStatus, stats: ProxyStats, version: str) -> None:
        self._status = status
        self._stats = stats
        self._version = version

    def collect(self) -> Iterator[Metric]:
        status, stats = self._status, self._stats
        yield GaugeMetricFamily(
            "sluice_agent_tunnel_up",
            "1 when the tunnel to a relay is up, else 0.",
            value=1 if status.state is TunnelState.UP else 0,
        )
        state = GaugeMetricFamily(
            "sluice_agent_tunnel_state",
            "The tunnel's current state (1 for the current one).",
            labels=["state"],
        )
        for each in TunnelState:
            state.add_metric([each.value], 1 if each is status.state else 0)
        yield state
        yield GaugeMetricFamily(
            "sluice_agent_tunnel_state_seconds",
            "Seconds since the tunnel entered its current state.",
            value=max(status.seconds_in_state, 0.0),
        )
        yield CounterMetricFamily(
            "sluice_agent_reconnects",
            "Times the tunnel came up again after having been up.",
            value=status.reconnects,
        )
        yield GaugeMetricFamily(
            "sluice_agent_streams_open",
            "Streams (relay channels) open now.",
            value=stats.streams_open,
        )
        yield CounterMetricFamily(
            "sluice_agent_streams",
            "Streams the relay opened, allowed or not.",
            value=stats.streams_total,
        )
        traffic = CounterMetricFamily(
            "sluice_agent_bytes",
            "Bytes carried by finished streams: up = relay to internal API, "
            "down = internal API to relay.",
            labels=["direction"],
        )
        traffic.add_metric(["up"], stats.bytes_up)
        traffic.add_metric(["down"], stats.bytes_down)
        yield traffic
        yield CounterMetricFamily(
            "sluice_agent_denied",
            "Streams refused because the allowlist does not permit the destination.",
            value=stats.denied,
        )
        yield CounterMetricFamily(
            "sluice_agent_connect_failures",
            "Allowed streams whose upstream connect failed or timed out.",
            value=stats.connect_failed,
        )
        yield _connect_seconds(stats)
        yield InfoMetricFamily(
            "sluice_agent", "The running agent.", value={"version": self._version}
        )


def _connect_seconds(stats: ProxyStats) -> HistogramMetricFamily:
    """``sluice_agent_connect_seconds`` from the histogram ProxyStats observes into."""
    histogram: Histogram = stats.connect_seconds
    buckets: list[tuple[str, float]] = []
    total = 0.0
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets.append((sample.labels["le"], sample.value))
            elif sample.name.endswith("_sum"):
                total = sample.value
    return HistogramMetricFamily(
        "sluice_agent_connect_seconds",
        "Time from CONNECT to an open upstream TCP connection (successful connects).",
        buckets=buckets,
        sum_value=total,
    )


class HealthServer:
    """Serves /healthz, /readyz and /metrics over HTTP until close() is called.

    *port* 0 picks a free port; ``.port`` gives the bound one once start()
    returned. *secrets* (the access token, its secret part) are masked out of
    anything the endpoints print, in case an error message ever quotes one.
    """

    def __init__(
        self,
        status: TunnelStatus,
        stats: ProxyStats,
        host: str,
        port: int,
        version: str,
        *,
        secrets: Iterable[str] = (),
        shutdown_timeout: float = 2.0,
    ) -> None:
        self._status = status
        self._stats = stats
        self._host = host
        self._port = port
        self._version = version
        self._masker = SecretMasker()
        self._masker.add(*secrets)
        self._shutdown_timeout = shutdown_timeout
        self.registry = CollectorRegistry()
        self.registry.register(AgentCollector(status, stats, version))
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        running = "serving" if self._runner is not None else "stopped"
        return f"<HealthServer {HostPort(self._host, self._port)} {running} {self._status!r}>"

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._port

    @property
    def address(self) -> HostPort:
        return HostPort(self._host, self._port)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        """Listen; raise HealthListenError (naming the setting) if the address is unusable."""
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self._app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            hint = (
                "another process (perhaps a second agent) already uses it"
                if exc.errno == errno.EADDRINUSE
                else exc.strerror or str(exc)
            )
            raise HealthListenError(
                f"cannot serve health checks on {self.address}: {hint}; set health_listen "
                "(SLUICE_AGENT_HEALTH_LISTEN) to a free host:port, or to 'off' to disable it",
            ) from None
        self._runner = runner
        bound = runner.addresses
        if bound:
            self._port = int(bound[0][1])

    async def close(self) -> None:
        """Stop listening and finish in-flight requests (bounded). Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- endpoints ------------------------------------------------------------
    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "version": self._version})

    async def _readyz(self, _: web.Request) -> web.Response:
        status = self._status
        body: dict[str, Any] = {
            "status": "ready" if status.state is TunnelState.UP else "not_ready",
            "state": status.state.value,
            # When not ready: the relay the tunnel was last up to, if any.
            "relay": self._mask(status.relay),
            "seconds_in_state": round(max(status.seconds_in_state, 0.0), 3),
        }
        if status.state is TunnelState.UP:
            return web.json_response(body)
        body["last_error"] = self._mask(status.last_error)
        return web.json_response(body, status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.registry), headers={"Content-Type": content_type})

    def _mask(self, text: str | None) -> str | None:
        return None if text is None else self._masker.mask(text)
