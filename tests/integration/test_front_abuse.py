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
    """Send *request* on a new connection; the relay's answer (head and a
    Content-Length body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.http_port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:") and not request.startswith(b"HEAD"):
                    length = int(line.split(b":")[1])
            return head + await reader.readexactly(length)
    finally:
        writer.close()


def _log_levels(relay: RelayProcess) -> list[str]:
    lines = relay.log_path.read_text(errors="replace").splitlines()
    return [json.loads(line)["level"] for line in lines]


async def test_an_upgrade_request_gets_a_501_problem_and_no_traceback(
    relay_proc: RelayProcess,
) -> None:
    auth = f"Authorization: Bearer {relay_proc.admin_token}\r\n"
    document = json.dumps(
        {"name": "ws", "mode": "cloud", "http": {"base_uri": "http://192.0.2.1:9/"}}
    )
    created = await _exchange(
        relay_proc,
        (
            f"POST /v1/connections HTTP/1.1\r\nHost: r\r\n{auth}Connection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(document)}\r\n\r\n" + document
        ).encode(),
    )
    assert created.startswith(b"HTTP/1.1 201 "), created[:300]
    conn_id = json.loads(created.partition(b"\r\n\r\n")[2])["id"]
    request = (
        f"GET /v1/connections/{conn_id}/proxy/ws HTTP/1.1\r\nHost: relay\r\n{auth}"
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


def _server_field(answer: bytes) -> str | None:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"server":
            return value.strip().decode()
    return None


async def test_the_relay_calls_itself_sluice_not_its_libraries(relay_proc: RelayProcess) -> None:
    auth = f"Authorization: Bearer {relay_proc.admin_token}\r\n"
    requests = [
        "GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n",  # aiohttp's routes
        f"GET /v1/agents HTTP/1.1\r\nHost: r\r\n{auth}\r\n",
        "GET /v1/nothing-here HTTP/1.1\r\nHost: r\r\n\r\n",
        # the front's own problem documents (no such connection; no token)
        f"GET /v1/connections/con_none/proxy/x HTTP/1.1\r\nHost: r\r\n{auth}\r\n",
        "GET /v1/connections/con_none/proxy/x HTTP/1.1\r\nHost: r\r\n\r\n",
        # the aiohttp route (HEAD is handed on)
        f"HEAD /v1/connections/con_none/proxy/x HTTP/1.1\r\nHost: r\r\n{auth}\r\n",
    ]
    for request in requests:
        answer = await _exchange(relay_proc, request.encode())
        assert _server_field(answer) == "Sluice", (request, answer[:300])
        assert b"aiohttp" not in answer.partition(b"\r\n\r\n")[0], (request, answer[:300])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(90)
async def test_endless_request_heads_are_refused_past_max_head_bytes(
    relay_proc: RelayProcess,
) -> None:
    assert relay_proc.proc is not None
    before = _rss_kib(relay_proc.proc.pid)
    line = b"X-Pad: " + b"p" * 990 + b"\r\n"
    head = b"GET /v1/connections/con_x/proxy/a HTTP/1.1\r\nHost: r\r\n" + line * 700

    async def caller() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay_proc.http_port)
        try:
            writer.write(head)  # 700 KB of head and no end to it
            async with asyncio.timeout(20):
                await writer.drain()
                return await reader.read(200)
        finally:
            writer.close()

    answers = await asyncio.gather(*(caller() for _ in range(100)))
    grown = _rss_kib(relay_proc.proc.pid) - before
    print(f"\n100 callers x 700 KB of head: relay RSS +{grown} KiB")
    assert all(a.startswith(b"HTTP/1.1 431 ") for a in answers), {a[:40] for a in answers}
    assert all(b"request_head_too_large" in a for a in answers)
    assert grown < 30 * 1024, f"relay RSS grew by {grown} KiB"
