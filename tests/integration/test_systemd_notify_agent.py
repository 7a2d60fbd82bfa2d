"""The agent speaks systemd's notify protocol: READY=1 once the tunnel is up,
STATUS= lines, STOPPING=1 on SIGTERM (a real datagram socket as NOTIFY_SOCKET)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.relay import Relay
from tests.conftest import AgentFactory
from tests.support.api import InternalAPI


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def _until(sock: socket.socket, needle: str, seen: list[str]) -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(20):
        while not any(needle in m for m in seen):
            seen.append((await loop.sock_recv(sock, 4096)).decode())


async def test_agent_notifies_ready_status_and_stopping(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory, notify_socket: socket.socket
) -> None:
    address = notify_socket.getsockname()
    agent, token = await start_agent(
        [f"127.0.0.1:{api.port}"], wait_online=False, notify_socket_path=address
    )
    seen: list[str] = []
    await _until(notify_socket, "READY=1", seen)
    assert relay.registry.is_online(token.agent_id)
    ready = next(m for m in seen if "READY=1" in m)
    assert "STATUS=tunnel up to" in ready
    assert agent.proc is not None
    agent.proc.terminate()
    await _until(notify_socket, "STOPPING=1", seen)
    assert await agent.wait() == 0
