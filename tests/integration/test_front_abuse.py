"""The relay's HTTP listener (a real relay process) against raw, hostile callers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.capture import remember_secret
from tests.support.relay_process import RelayProcess


@pytest.fixture
async def relay_proc(tmp_path: Path) -> AsyncIterator[RelayProcess]:
    relay = RelayProcess(tmp_path / "relay", tmp_path / "relay.log")
    remember_secret(relay.admin_token)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


async def _exchange(relay: RelayProcess, request: bytes) -> bytes:
    """Send *request* on a new connection; everything the relay answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.http_port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def _log_levels(relay: RelayProcess) -> list[str]:
    lines = relay.log_path.read_text(errors="replace").splitlines()
    return [json.loads(line)["level"] for line in lines]


@pytest.mark.parametrize("target", ["/v1/connections/con_abc/proxy/ws", "/v1/agents", "/healthz"])
async def test_an_upgrade_request_gets_a_501_problem_and_no_traceback(
    relay_proc: RelayProcess, target: str
) -> None:
    request = (
        f"GET {target} HTTP/1.1\r\nHost: relay\r\n"
        f"Authorization: Bearer {relay_proc.admin_token}\r\n"
        "Connection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    answer = await _exchange(relay_proc, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501 "), answer[:300]
    assert b"application/problem+json" in head
    assert json.loads(body)["type"] == "upgrade_not_supported"
    # Another request on a new connection is served as usual.
    again = await _exchange(
        relay_proc, b"GET /healthz HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n"
    )
    assert again.startswith(b"HTTP/1.1 200 "), again[:200]
    levels = _log_levels(relay_proc)
    assert not {"error", "critical"} & set(levels), relay_proc.log_path.read_text()
