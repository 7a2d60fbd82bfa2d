"""Fixtures: a real relay on loopback, real agent processes, real HTTP APIs."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme

from server.relay import Relay
from server.settings import ServerSettings
from sluice.addresses import HostPort
from sluice.tokens import AgentToken
from tests.support.agent import AgentProcess
from tests.support.api import InternalAPI, serve_api


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    settings = ServerSettings(
        data_dir=tmp_path / "relay",
        ssh_listen=HostPort("127.0.0.1", 0),
        http_listen=HostPort("127.0.0.1", 0),
        keepalive_interval=5,
        log_format="json",
    )
    relay = await Relay.start(settings)
    try:
        yield relay
    finally:
        await relay.close()


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
async def start_agent(
    relay: Relay, tmp_path: Path
) -> AsyncIterator[AgentFactory]:
    """Create an agent on the relay and start a sluice-agent process for it.

    Waits (on the registry, not on time) until the agent's tunnel is up.
    """
    started: list[AgentProcess] = []

    async def factory(
        allow: list[str],
        *,
        token: AgentToken | None = None,
        wait_online: bool = True,
        **env: str,
    ) -> tuple[AgentProcess, AgentToken]:
        if token is None:
            _, token = await relay.store.create_agent(f"agent-{len(started)}")
        host, port = relay.ssh_address
        agent_env = {
            "SLUICE_AGENT_RELAY": f"{host}:{port}",
            "SLUICE_AGENT_TOKEN": str(token),
            "SLUICE_AGENT_RELAY_FINGERPRINT": relay.fingerprint,
            "SLUICE_AGENT_ALLOW": ",".join(allow),
            "SLUICE_AGENT_LOG_FORMAT": "json",
            "SLUICE_AGENT_CONNECT_TIMEOUT": "3",
            "SLUICE_AGENT_BACKOFF_INITIAL": "0.1",
            "SLUICE_AGENT_BACKOFF_MAX": "1",
            **{f"SLUICE_AGENT_{k.upper()}": v for k, v in env.items()},
        }
        proc = AgentProcess(agent_env, tmp_path / f"agent-{len(started)}.log")
        await proc.start()
        started.append(proc)
        if wait_online:
            try:
                await relay.registry.wait_online(token.agent_id, timeout=15)
            except TimeoutError:
                raise AssertionError(f"agent never came online:\n{proc.log()}") from None
        return proc, token

    try:
        yield factory
    finally:
        for proc in started:
            if proc.proc is not None and proc.proc.returncode is None:
                await proc.stop()
