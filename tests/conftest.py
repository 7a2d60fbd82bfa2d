"""Fixtures: a real relay on loopback, real agent processes, real HTTP APIs."""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from server.relay import Relay
from server.settings import ServerSettings
from sluice.addresses import HostPort
from sluice.logs import SecretMasker, configure_logging
from sluice.tokens import AgentToken
from tests.support.agent import AgentProcess
from tests.support.api import InternalAPI, serve_api
from tests.support.capture import RESPONSES, SECRETS, SINK, APIClient, remember_secret
from tests.support.fragile_api import FragileAPI, serve_fragile
from tests.support.waiting import wait_until


def pytest_configure(config: pytest.Config) -> None:
    # Every relay log line of the whole suite lands in SINK, as JSON. The
    # masker is empty on purpose: the checks below must see what would leak.
    configure_logging("json", "debug", masker=SecretMasker(), stream=SINK, cache=False)


@pytest.fixture(autouse=True)
def no_secret_leaks(tmp_path: Path) -> Iterator[None]:
    """After each test: no secret it used is in a relay log line, an API answer
    or an agent's log file."""
    start_lines, start_responses = len(SINK.lines), len(RESPONSES)
    SECRETS.clear()
    yield
    logs = SINK.lines[start_lines:]
    answers = RESPONSES[start_responses:]
    agent_logs = [p.read_text(errors="replace") for p in tmp_path.glob("agent*.log")]
    for secret in SECRETS:
        for line in logs:
            assert secret not in line, f"secret in relay log: {line[:300]}"
        for text in answers:
            assert secret not in text, f"secret in API answer: {text[:300]}"
        for text in agent_logs:
            assert secret not in text, "secret in an agent log"


_DATABASE: dict[str, str | None] = {"url": None}


@pytest.fixture(autouse=True)
async def database() -> AsyncIterator[str | None]:
    """SQLite in the data dir by default; with SLUICE_TEST_DATABASE=postgres, a fresh
    PostgreSQL database per test (server URL in SLUICE_TEST_POSTGRES_URL)."""
    if os.environ.get("SLUICE_TEST_DATABASE") != "postgres":
        _DATABASE["url"] = None
        yield None
        return
    async with fresh_postgres() as url:
        _DATABASE["url"] = url
        try:
            yield url
        finally:
            _DATABASE["url"] = None


@contextlib.asynccontextmanager
async def fresh_postgres() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database on SLUICE_TEST_POSTGRES_URL's server, dropped after."""
    import asyncpg  # only needed with PostgreSQL

    admin = os.environ["SLUICE_TEST_POSTGRES_URL"].replace("postgresql+asyncpg", "postgresql")
    name = f"sluice_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield os.environ["SLUICE_TEST_POSTGRES_URL"].rsplit("/", 1)[0] + "/" + name
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def cluster_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for several relays (the cluster tests need one
    whatever the pass); skipped when SLUICE_TEST_POSTGRES_URL names no server."""
    if not os.environ.get("SLUICE_TEST_POSTGRES_URL"):
        pytest.skip("a relay cluster needs PostgreSQL: set SLUICE_TEST_POSTGRES_URL (.ci/run does)")
    async with fresh_postgres() as url:
        yield url


def relay_settings(tmp_path: Path, **overrides: object) -> ServerSettings:
    values: dict[str, object] = {
        "database_url": _DATABASE["url"],
        "data_dir": tmp_path / "relay",
        "ssh_listen": HostPort("127.0.0.1", 0),
        "http_listen": HostPort("127.0.0.1", 0),
        "keepalive_interval": 5,
        "log_format": "json",
    }
    values.update(overrides)
    return ServerSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    relay = await Relay.start(relay_settings(tmp_path))
    remember_secret(relay.admin_token)
    try:
        yield relay
    finally:
        await relay.close()


@pytest.fixture
async def client(relay: Relay) -> AsyncIterator[APIClient]:
    async with aiohttp.ClientSession() as session, aiohttp.ClientSession() as proxied:
        yield APIClient(session, relay.http_base, relay.admin_token, proxied)


@pytest.fixture
async def open_client(tmp_path: Path) -> AsyncIterator[APIClient]:
    """A second relay that may reach loopback in cloud mode (the test's servers
    live there), with a client for its API."""
    open_relay = await Relay.start(
        relay_settings(tmp_path, allow_private_destinations=True, data_dir=tmp_path / "open")
    )
    remember_secret(open_relay.admin_token)
    try:
        async with aiohttp.ClientSession() as session, aiohttp.ClientSession() as proxied:
            yield APIClient(session, open_relay.http_base, open_relay.admin_token, proxied)
    finally:
        await open_relay.close()


@pytest.fixture
async def api() -> AsyncIterator[InternalAPI]:
    async for running in serve_api():
        yield running


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_api(ca: trustme.CA) -> AsyncIterator[InternalAPI]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    async for running in serve_api(ssl_context=ctx):
        yield running


AgentFactory = Callable[..., Awaitable[tuple[AgentProcess, AgentToken]]]


@pytest.fixture
async def start_agent(relay: Relay, tmp_path: Path) -> AsyncIterator[AgentFactory]:
    """Create an agent on the relay and start a sluice-agent process for it.

    Waits (on the registry, not on time) until the agent's tunnel is up.
    """
    started: list[AgentProcess] = []

    async def factory(
        allow: list[str],
        *,
        token: AgentToken | None = None,
        wait_online: bool = True,
        relay_address: str | None = None,
        process_env: dict[str, str] | None = None,
        **env: str,
    ) -> tuple[AgentProcess, AgentToken]:
        if token is None:
            _, token = await relay.store.create_agent(f"agent-{len(started)}")
        remember_secret(str(token), token.secret)
        host, port = relay.ssh_address
        agent_env = {
            "SLUICE_AGENT_RELAY": relay_address or f"{host}:{port}",
            "SLUICE_AGENT_TOKEN": str(token),
            "SLUICE_AGENT_RELAY_FINGERPRINT": relay.fingerprint,
            "SLUICE_AGENT_ALLOW": ",".join(allow),
            "SLUICE_AGENT_LOG_FORMAT": "json",
            "SLUICE_AGENT_CONNECT_TIMEOUT": "3",
            "SLUICE_AGENT_BACKOFF_INITIAL": "0.1",
            "SLUICE_AGENT_BACKOFF_MAX": "1",
            "SLUICE_AGENT_HEALTH_LISTEN": "off",
            **{f"SLUICE_AGENT_{k.upper()}": v for k, v in env.items() if k != "notify_socket_path"},
            **({"NOTIFY_SOCKET": env["notify_socket_path"]} if "notify_socket_path" in env else {}),
            **(process_env or {}),
        }
        proc = AgentProcess(agent_env, tmp_path / f"agent-{len(started)}.log")
        await proc.start()
        started.append(proc)
        if wait_online:
            assert proc.proc is not None
            exited = proc.proc
            try:
                # An agent that exits (refused settings, say) ends the wait at once.
                await wait_until(
                    lambda: (
                        relay.registry.is_online(token.agent_id) or exited.returncode is not None
                    ),
                    timeout=15,
                    what="agent",
                )
            except AssertionError:
                raise AssertionError(f"agent never came online:\n{proc.log()}") from None
            if not relay.registry.is_online(token.agent_id):
                raise AssertionError(f"agent exited with {exited.returncode}:\n{proc.log()}")
        return proc, token

    try:
        yield factory
    finally:
        for proc in started:
            if proc.proc is not None and proc.proc.returncode is None:
                await proc.stop()


@pytest.fixture
async def fragile() -> AsyncIterator[FragileAPI]:
    """A real HTTP API with rate limits, health and slowness the test sets."""
    async for api in serve_fragile():
        yield api
