"""Answer heads as bytes through aiohttp, its shape check, off switch and fallback."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from server.proxy.raw_head import answer_response, raw_heads_supported

FIELDS = [(b"X-Latin", b"caf\xe9"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]


def test_on_with_the_aiohttp_it_was_written_for() -> None:
    assert raw_heads_supported({}) is True


@pytest.mark.parametrize("value", ["off", "OFF", "0", "false"])
def test_the_switch_turns_it_off(value: str) -> None:
    assert raw_heads_supported({"SLUICE_RAW_HEADS": value}) is False


def test_a_changed_aiohttp_falls_back_to_the_stock_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(web.StreamResponse, "_write_headers")
    assert raw_heads_supported({}) is False


async def _head(raw: bool) -> bytes:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = answer_response(200, "OK", FIELDS, raw=raw)
        response.content_length = 2
        await response.prepare(request)
        await response.write(b"ok")
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(10):
            data = await reader.read()
        writer.close()
        return data
    finally:
        await runner.cleanup()


async def test_raw_heads_carry_the_bytes_as_they_are() -> None:
    head = await _head(raw=True)
    assert b"\r\nX-Latin: caf\xe9\r\n" in head
    assert head.count(b"\r\nSet-Cookie: ") == 2
    assert b"\r\nServer:" not in head
    assert head.endswith(b"\r\n\r\nok")


async def test_the_stock_fallback_keeps_every_field() -> None:
    head = await _head(raw=False)
    assert b"\r\nX-Latin: caf" in head  # re-encoded by aiohttp: the documented cost
    assert head.count(b"\r\nSet-Cookie: ") == 2
    assert head.endswith(b"\r\n\r\nok")
