"""The agent's health endpoint: /healthz, /readyz and /metrics on a local address.

Probes (systemd, Docker, Kubernetes) and ``sluice-agent status`` read it.
Nothing here keeps counters of its own: every answer is read from the live
TunnelStatus and ProxyStats at request time, so it cannot drift from what
the tunnel and the proxy actually did. Nothing it prints may carry a secret:
the relay address, the state and the last error are all it says, and the
last error is masked against the secrets it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import Any

import structlog
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
from agent.stats import ProxyStats
from sluice.addresses import HostPort
from sluice.logs import SecretMasker

log = structlog.get_logger("sluice.agent.health")

# A probe's request head: one short line and a few headers.
MAX_REQUEST_HEAD = 8192
# A client that has not sent its request head by then is dropped.
REQUEST_TIMEOUT = 5.0
_JSON = "application/json; charset=utf-8"


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

    Plain asyncio streams, one request per connection (``Connection: close``):
    three GET endpoints for local probes do not need a web framework, and
    aiohttp's server would add about 20 MB to the agent's memory.
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
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._unasked: set[asyncio.StreamWriter] = set()  # connected, no request yet

    def __repr__(self) -> str:
        running = "serving" if self._server is not None else "stopped"
        return f"<HealthServer {HostPort(self._host, self._port)} {running} {self._status!r}>"

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._port

    @property
    def address(self) -> HostPort:
        return HostPort(self._host, self._port)

    async def start(self) -> None:
        """Listen; raise HealthListenError (naming the setting) if the address is unusable."""
        if self._server is not None:
            return
        try:
            server = await asyncio.start_server(
                self._serve, self._host, self._port, limit=MAX_REQUEST_HEAD
            )
        except OSError as exc:
            hint = (
                "another process (perhaps a second agent) already uses it"
                if exc.errno == errno.EADDRINUSE
                else exc.strerror or str(exc)
            )
            raise HealthListenError(
                f"cannot serve health checks on {self.address}: {hint}; set health_listen "
                "(SLUICE_AGENT_HEALTH_LISTEN) to a free host:port, or to 'off' to disable it",
            ) from None
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and finish in-flight requests (bounded). Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._unasked):
            writer.transport.abort()  # owed no answer: do not wait for them
        handlers = set(self._handlers)
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=self._shutdown_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- HTTP -----------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._unasked.add(writer)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return  # not a probe, or not in time: no answer owed
            finally:
                self._unasked.discard(writer)
            try:
                status, content_type, body, send_body = self._answer(head)
            except Exception as exc:  # a collector failed: say so, never hang up silently
                log.error("health_answer_failed", error_type=type(exc).__name__)
                status, content_type, body, send_body = (
                    500,
                    "text/plain",
                    b"500: Internal Server Error",
                    True,
                )
            extra = "Allow: GET, HEAD\r\n" if status == 405 else ""
            writer.write(
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}"
                "Connection: close\r\n\r\n".encode()
                + (body if send_body else b"")
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            if task is not None:
                self._handlers.discard(task)

    def _answer(self, head: bytes) -> tuple[int, str, bytes, bool]:
        """(status, content type, body, whether to send the body) for a request head."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, "text/plain", b"400: Bad Request", True
        method, path = parts[0], parts[1].partition("?")[0]
        routes = {"/healthz": self._healthz, "/readyz": self._readyz}
        if path not in routes and path != "/metrics":
            return 404, "text/plain", b"404: Not Found", method != "HEAD"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"405: Method Not Allowed", True
        if path == "/metrics":
            accept = next(
                (
                    line.partition(":")[2].strip()
                    for line in lines[1:]
                    if line.lower().startswith("accept:")
                ),
                "",
            )
            encode, content_type = choose_encoder(accept)
            return 200, content_type, encode(self.registry), method == "GET"
        status, document = routes[path]()
        return status, _JSON, json.dumps(document).encode(), method == "GET"

    # -- endpoints ------------------------------------------------------------
    def _healthz(self) -> tuple[int, dict[str, Any]]:
        return 200, {"status": "alive", "version": self._version}

    def _readyz(self) -> tuple[int, dict[str, Any]]:
        status = self._status
        body: dict[str, Any] = {
            "status": "ready" if status.state is TunnelState.UP else "not_ready",
            "state": status.state.value,
            # When not ready: the relay the tunnel was last up to, if any.
            "relay": self._mask(status.relay),
            "seconds_in_state": round(max(status.seconds_in_state, 0.0), 3),
        }
        if status.state is TunnelState.UP:
            return 200, body
        body["last_error"] = self._mask(status.last_error)
        return 503, body

    def _mask(self, text: str | None) -> str | None:
        return None if text is None else self._masker.mask(text)
