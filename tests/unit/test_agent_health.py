"""agent.health and agent.status_cli against a real HealthServer on loopback, port 0."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agent.health import HealthListenError, HealthServer
from agent.state import TunnelState, TunnelStatus
from agent.stats import CONNECT_BUCKETS, ProxyStats, connect_histogram
from agent.status_cli import (
    EXIT_NOT_READY,
    EXIT_READY,
    EXIT_UNREACHABLE,
    HealthUnreachable,
    estimate_quantile,
    fetch_status,
    render_status,
    status_main,
)
from sluice.tokens import new_agent_id, new_token

pytestmark = pytest.mark.timeout(20)

VERSION = "9.8.7"
RELAY = "relay.example:2222"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def status(clock: FakeClock) -> TunnelStatus:
    return TunnelStatus(clock=clock)


@pytest.fixture
def stats() -> ProxyStats:
    return ProxyStats()


@pytest.fixture
def token() -> Any:
    return new_token(new_agent_id())


@pytest.fixture
async def server(
    status: TunnelStatus, stats: ProxyStats, token: Any
) -> AsyncIterator[HealthServer]:
    health = HealthServer(
        status, stats, "127.0.0.1", 0, VERSION, secrets=(str(token), token.secret)
    )
    await health.start()
    try:
        yield health
    finally:
        await health.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port bound but not listening: connections to it are refused, and no
    other process can take it while the test runs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def url(server: HealthServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


async def get(http: aiohttp.ClientSession, server: HealthServer, path: str) -> tuple[int, Any]:
    async with http.get(url(server, path)) as resp:
        if path == "/metrics":
            return resp.status, await resp.text()
        return resp.status, await resp.json()


def bring_up(status: TunnelStatus, relay: str = RELAY) -> None:
    # The order the supervisor uses: relay and error first, then the state.
    status.relay = relay
    status.last_error = None
    status.to(TunnelState.UP)


def back_off(status: TunnelStatus, error: str) -> None:
    status.last_error = error
    status.to(TunnelState.BACKING_OFF)


def record_connects(stats: ProxyStats, *seconds: float) -> None:
    """What the proxy does after each successful upstream connect."""
    # Works with ProxyStats.connect_seconds as the list it is today and as the
    # bounded histogram (agent.health.connect_histogram) proposed to replace it.
    target: Any = stats.connect_seconds
    for each in seconds:
        if isinstance(target, list):
            target.append(each)
        else:
            target.observe(each)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


# -- lifecycle ------------------------------------------------------------------


async def test_port_zero_binds_a_real_port_and_close_stops_listening(
    server: HealthServer, http: aiohttp.ClientSession
) -> None:
    assert server.port != 0
    assert str(server.port) in repr(server)
    code, _ = await get(http, server, "/healthz")
    assert code == 200
    await server.close()
    await server.close()  # twice is fine
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(http, server, "/healthz")


async def test_address_in_use_names_the_setting(
    server: HealthServer, status: TunnelStatus, stats: ProxyStats
) -> None:
    second = HealthServer(status, stats, "127.0.0.1", server.port, VERSION)
    with pytest.raises(HealthListenError) as caught:
        await second.start()
    message = str(caught.value)
    assert f"127.0.0.1:{server.port}" in message
    assert "health_listen" in message
    assert "SLUICE_AGENT_HEALTH_LISTEN" in message
    assert "'off'" in message
    await second.close()  # never started: nothing to do, no error


async def test_no_access_log(
    server: HealthServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="aiohttp.access"):
        for path in ("/healthz", "/readyz", "/metrics"):
            await get(http, server, path)
    assert not [r for r in caplog.records if r.name == "aiohttp.access"]


async def test_context_manager(status: TunnelStatus, stats: ProxyStats) -> None:
    async with HealthServer(status, stats, "127.0.0.1", 0, VERSION) as health:
        _reader, writer = await asyncio.open_connection("127.0.0.1", health.port)
        writer.close()
        await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", health.port)


# -- /healthz and /readyz -------------------------------------------------------------


async def test_healthz_answers_in_every_state(
    server: HealthServer, status: TunnelStatus, http: aiohttp.ClientSession
) -> None:
    assert await get(http, server, "/healthz") == (200, {"status": "alive", "version": VERSION})
    back_off(status, "cannot reach relay")
    assert (await get(http, server, "/healthz"))[0] == 200


async def test_readyz_follows_the_tunnel_state(
    server: HealthServer,
    status: TunnelStatus,
    clock: FakeClock,
    http: aiohttp.ClientSession,
) -> None:
    clock.now += 2.5
    code, body = await get(http, server, "/readyz")
    assert code == 503
    assert body == {
        "status": "not_ready",
        "state": "connecting",
        "relay": None,
        "seconds_in_state": 2.5,
        "last_error": None,
    }

    bring_up(status)
    clock.now += 60
    code, body = await get(http, server, "/readyz")
    assert code == 200
    assert body == {"status": "ready", "state": "up", "relay": RELAY, "seconds_in_state": 60}

    back_off(status, "relay relay.example:2222 dropped the connection: reset")
    clock.now += 4
    code, body = await get(http, server, "/readyz")
    assert code == 503
    assert body["state"] == "backing_off"
    assert body["last_error"] == "relay relay.example:2222 dropped the connection: reset"
    assert body["relay"] == RELAY  # the relay it was last up to
    assert body["seconds_in_state"] == 4

    status.to(TunnelState.CONNECTING)
    bring_up(status)
    status.to(TunnelState.DRAINING)
    code, body = await get(http, server, "/readyz")
    assert (code, body["state"]) == (503, "draining")


async def test_endpoints_never_print_the_token(
    server: HealthServer, status: TunnelStatus, token: Any, http: aiohttp.ClientSession
) -> None:
    # An error message that quotes the token (a relay could echo anything).
    back_off(status, f"relay said: bad password {token} (secret {token.secret})")
    status.relay = f"relay.example:2222 {token.secret}"
    code, body = await get(http, server, "/readyz")
    assert code == 503
    assert "***" in body["last_error"]
    texts = [str(body)]
    for path in ("/healthz", "/metrics"):
        texts.append(str((await get(http, server, path))[1]))
    for text in texts:
        assert str(token) not in text
        assert token.secret not in text


# -- /metrics ---------------------------------------------------------------------------


async def test_metrics_read_the_live_objects(
    server: HealthServer,
    status: TunnelStatus,
    stats: ProxyStats,
    http: aiohttp.ClientSession,
) -> None:
    code, text = await get(http, server, "/metrics")
    assert code == 200
    assert value(text, "sluice_agent_tunnel_up") == 0
    assert value(text, "sluice_agent_tunnel_state", state="connecting") == 1
    assert value(text, "sluice_agent_reconnects_total") == 0
    assert value(text, "sluice_agent_streams_open") == 0
    assert value(text, "sluice_agent_connect_seconds_count") == 0
    assert value(text, "sluice_agent_info", version=VERSION) == 1

    bring_up(status)
    back_off(status, "dropped")
    status.to(TunnelState.CONNECTING)
    bring_up(status)
    for _ in range(3):
        stats.opened()
    stats.closed()
    stats.bytes_up += 1500
    stats.bytes_down += 3 * 1024 * 1024
    stats.denied += 2
    stats.connect_failed += 1
    record_connects(stats, 0.002, 0.004, 0.3)

    _, text = await get(http, server, "/metrics")
    assert value(text, "sluice_agent_tunnel_up") == 1
    states = {s.value: value(text, "sluice_agent_tunnel_state", state=s.value) for s in TunnelState}
    assert states == {s.value: (1 if s is TunnelState.UP else 0) for s in TunnelState}
    assert value(text, "sluice_agent_reconnects_total") == 1
    assert value(text, "sluice_agent_streams_open") == 2
    assert value(text, "sluice_agent_streams_total") == 3
    assert value(text, "sluice_agent_bytes_total", direction="up") == 1500
    assert value(text, "sluice_agent_bytes_total", direction="down") == 3 * 1024 * 1024
    assert value(text, "sluice_agent_denied_total") == 2
    assert value(text, "sluice_agent_connect_failures_total") == 1
    assert value(text, "sluice_agent_connect_seconds_count") == 3
    assert value(text, "sluice_agent_connect_seconds_sum") == pytest.approx(0.306)
    assert value(text, "sluice_agent_connect_seconds_bucket", le="0.0025") == 1
    assert value(text, "sluice_agent_connect_seconds_bucket", le="0.005") == 2
    assert value(text, "sluice_agent_connect_seconds_bucket", le="0.25") == 2
    assert value(text, "sluice_agent_connect_seconds_bucket", le="0.5") == 3
    assert value(text, "sluice_agent_connect_seconds_bucket", le="+Inf") == 3


async def test_metrics_from_a_connect_histogram(
    server: HealthServer, stats: ProxyStats, http: aiohttp.ClientSession
) -> None:
    """The bounded replacement for ProxyStats.connect_seconds exports the same way."""
    histogram = connect_histogram()
    # cast: ProxyStats still declares the list until it switches to the histogram.
    stats.connect_seconds = cast(Any, histogram)
    for seconds in (0.002, 0.004, 0.3, 42.0):
        histogram.observe(seconds)
    _, text = await get(http, server, "/metrics")
    assert value(text, "sluice_agent_connect_seconds_count") == 4
    assert value(text, "sluice_agent_connect_seconds_sum") == pytest.approx(42.306)
    assert value(text, "sluice_agent_connect_seconds_bucket", le="0.005") == 2
    assert value(text, "sluice_agent_connect_seconds_bucket", le="10.0") == 3
    assert value(text, "sluice_agent_connect_seconds_bucket", le="+Inf") == 4
    bounds = [
        float(labels["le"])
        for (name, labels_set) in samples(text)
        if name == "sluice_agent_connect_seconds_bucket"
        for labels in [dict(labels_set)]
    ]
    assert sorted(bounds) == [*CONNECT_BUCKETS, float("inf")]


async def test_metrics_have_help_types_and_no_global_registry(
    status: TunnelStatus, stats: ProxyStats, http: aiohttp.ClientSession
) -> None:
    # Two servers in one process: a global registry would clash on names.
    async with (
        HealthServer(status, stats, "127.0.0.1", 0, VERSION) as one,
        HealthServer(status, stats, "127.0.0.1", 0, "other") as two,
    ):
        _, text_one = await get(http, one, "/metrics")
        _, text_two = await get(http, two, "/metrics")
    types = {f.name: f.type for f in text_string_to_metric_families(text_one)}
    assert types["sluice_agent_tunnel_up"] == "gauge"
    assert types["sluice_agent_reconnects"] == "counter"
    assert types["sluice_agent_bytes"] == "counter"
    assert types["sluice_agent_connect_seconds"] == "histogram"
    assert all(f.documentation for f in text_string_to_metric_families(text_one))
    assert value(text_two, "sluice_agent_info", version="other") == 1


async def test_metrics_openmetrics_when_asked(
    server: HealthServer, http: aiohttp.ClientSession
) -> None:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with http.get(url(server, "/metrics"), headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await resp.text()).rstrip().endswith("# EOF")


# -- status command -----------------------------------------------------------------


async def test_render_status_ready(
    server: HealthServer,
    status: TunnelStatus,
    stats: ProxyStats,
    clock: FakeClock,
) -> None:
    bring_up(status)
    back_off(status, "dropped")
    status.to(TunnelState.CONNECTING)
    bring_up(status)  # a reconnect
    clock.now += 3 * 3600 + 4 * 60
    for _ in range(1205):
        stats.opened()
    for _ in range(1203):
        stats.closed()
    stats.bytes_up = 1536
    stats.bytes_down = int(1.5 * 1024**3)
    stats.denied = 4
    stats.connect_failed = 1
    record_connects(stats, *[0.003] * 10)

    snapshot = await fetch_status("127.0.0.1", server.port, timeout=5)
    assert snapshot["ready"] is True
    text = render_status(snapshot["readyz"], snapshot["metrics"])
    assert text.splitlines()[0] == f"sluice-agent {VERSION}: READY"
    assert f"up to relay {RELAY}, for 3h04m" in text
    rows = [line.split(":", 1) for line in text.splitlines()[1:]]
    lines = {name.strip(): shown.strip() for name, shown in rows}
    assert lines["reconnects"] == "1"
    assert lines["streams"] == "2 open, 1,205 total"
    assert lines["traffic"] == "1.5 KiB up, 1.5 GiB down"
    assert lines["denied"] == "4"
    assert lines["connect failures"] == "1"
    # 10 connects of 3 ms fall in the 2.5-5 ms bucket; p50 is interpolated.
    assert lines["connect latency"] == "p50 ~3.8 ms, mean 3.0 ms over 10 connects"


async def test_render_status_not_ready(
    server: HealthServer, status: TunnelStatus, clock: FakeClock
) -> None:
    bring_up(status)
    back_off(status, "cannot reach relay relay.example:2222: Connection refused")
    clock.now += 12
    snapshot = await fetch_status("127.0.0.1", server.port, timeout=5)
    assert snapshot["ready"] is False
    text = render_status(snapshot["readyz"], snapshot["metrics"])
    assert text.splitlines()[0] == f"sluice-agent {VERSION}: NOT READY"
    assert f"backing off (last up to relay {RELAY}), for 12s" in text
    assert "last error:" in text
    assert "Connection refused" in text
    assert "no connects yet" in text


def test_render_status_survives_an_empty_scrape() -> None:
    text = render_status({"status": "not_ready", "state": "connecting"}, "")
    assert text.splitlines()[0] == "sluice-agent: NOT READY"
    assert "reconnects:" in text


async def test_fetch_status_maps_a_wildcard_listen_address_to_loopback(
    server: HealthServer,
) -> None:
    snapshot = await fetch_status("0.0.0.0", server.port, timeout=5)
    assert snapshot["readyz"]["state"] == "connecting"


async def test_fetch_status_refused(refusing_port: int) -> None:
    with pytest.raises(HealthUnreachable) as caught:
        await fetch_status("127.0.0.1", refusing_port, timeout=5)
    assert str(caught.value) == (
        f"cannot reach the agent's health endpoint at http://127.0.0.1:{refusing_port}: "
        "Connection refused"
    )


async def test_fetch_status_not_an_agent() -> None:
    runner = web.AppRunner(web.Application(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        with pytest.raises(HealthUnreachable, match="HTTP 404"):
            await fetch_status("127.0.0.1", port, timeout=5)
    finally:
        await runner.cleanup()


async def test_status_main_exit_codes(
    server: HealthServer,
    status: TunnelStatus,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # status_main runs its own event loop, so it goes to a thread while this
    # loop keeps serving.
    listen = f"127.0.0.1:{server.port}"
    assert await asyncio.to_thread(status_main, listen) == EXIT_NOT_READY
    assert "NOT READY" in capsys.readouterr().out
    bring_up(status)
    assert await asyncio.to_thread(status_main, listen) == EXIT_READY
    out = capsys.readouterr().out
    assert out.startswith(f"sluice-agent {VERSION}: READY")


def test_status_main_unreachable(refusing_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert status_main(f"127.0.0.1:{refusing_port}", timeout=5) == EXIT_UNREACHABLE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "may not be running" in captured.err
    assert "health_listen" in captured.err


@pytest.mark.parametrize(
    ("listen", "needle"),
    [("off", "disabled"), ("OFF", "disabled"), ("no-port", "health_listen")],
)
def test_status_main_without_an_address(
    listen: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert status_main(listen) == EXIT_UNREACHABLE
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [], None),
        (0.5, [(0.1, 0.0), (float("inf"), 0.0)], None),
        (0.5, [(0.1, 10.0), (float("inf"), 10.0)], 0.05),
        (0.5, [(0.1, 2.0), (0.2, 6.0), (float("inf"), 8.0)], 0.15),
        (0.9, [(0.1, 2.0), (0.2, 6.0), (float("inf"), 10.0)], 0.2),
    ],
)
def test_estimate_quantile(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    got = estimate_quantile(q, buckets)
    assert got == (None if expected is None else pytest.approx(expected))


async def _exchange(server: HealthServer, request: bytes) -> bytes:
    """Send raw bytes; everything the server says until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_requests_outside_the_three_endpoints(
    server: HealthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = await _exchange(server, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await _exchange(server, b"HEAD /nope HTTP/1.1\r\n\r\n")).endswith(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert head.endswith(b"\r\n\r\n")  # the length of a body, and no body
    assert b"Content-Length: 0" not in head
    assert (await _exchange(server, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
    refused = await _exchange(server, b"POST /readyz HTTP/1.1\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 405 ")
    assert b"Allow: GET, HEAD\r\n" in refused
    assert (await _exchange(server, b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    # A client that never finishes its request is dropped, not kept forever.
    monkeypatch.setattr("agent.health.REQUEST_TIMEOUT", 0.2)
    assert await _exchange(server, b"GET /healthz HTTP/1.1\r\n") == b""


def test_the_running_agent_does_not_load_an_http_framework() -> None:
    """The agent's memory target: aiohttp (~20 MB) is for `sluice-agent status` only."""
    import subprocess
    import sys

    code = "import sys, agent.cli; print(sorted(m for m in sys.modules if 'aiohttp' in m))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "[]"


async def test_close_does_not_wait_for_clients_that_never_asked(
    status: TunnelStatus, stats: ProxyStats
) -> None:
    health = HealthServer(status, stats, "127.0.0.1", 0, VERSION, shutdown_timeout=60)
    await health.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", health.port)
    await asyncio.wait_for(health.close(), 10)  # would take 60 s if it waited for them
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
