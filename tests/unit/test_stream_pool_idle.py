"""server.tunnel.stream_pool's kept-alive streams against a real loopback API:
a stream in use stays past the keep-alive time, an idle one closes after it."""

from __future__ import annotations

import asyncio

from yarl import URL

from server.proxy.cloud_http import DirectDialer
from server.tunnel.stream_pool import StreamPool
from tests.support.raw_api import RawAPI
from tests.support.waiting import wait_until

KEEPALIVE = 0.4


async def _ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    return True


async def test_a_used_stream_outlives_the_keepalive_and_an_idle_one_closes() -> None:
    pool = StreamPool(
        DirectDialer(allow_private=True), connect_timeout=5, keepalive_timeout=KEEPALIVE
    )
    raw = RawAPI(_ok)
    await raw.start()
    try:
        url = URL(f"http://127.0.0.1:{raw.port}/")
        loop = asyncio.get_running_loop()
        until = loop.time() + 3 * KEEPALIVE
        sent = 0
        while loop.time() < until:
            answer = await pool.request("GET", url, "/x", [], None, None, connect=5, total=5)
            assert await answer.read() == b"ok"
            sent += 1
            await asyncio.sleep(KEEPALIVE / 4)  # pacing: idle a quarter of the keep-alive
        assert sent >= 8
        # One connection carried every request, well past the keep-alive time.
        assert (raw.connections, raw.ended) == (1, 0)
        await wait_until(lambda: raw.ended == 1, timeout=10, what="the idle stream closed")
        assert pool.close_idle() == 0  # the pool let it go too
    finally:
        await raw.close()
