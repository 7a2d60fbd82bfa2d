"""A fragile API for tests: rate-limited, slow, or down on demand.

It keeps the books a test asserts on: requests that arrived inside a limit
window it had announced (``early``), the most requests it ever had in
flight at once (``peak``), and whether it is up.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

LimitStyle = Literal["seconds", "date", "body"]


@dataclass
class FragileAPI:
    host: str
    port: int = 0
    # Rate limits: the next `limit_next` requests are limited, each opening
    # a window; a request inside an open window is limited and counted early.
    limit_next: int = 0
    style: LimitStyle = "seconds"
    retry_seconds: int = 1  # the Retry-After of style "seconds"
    window_end: float = 0.0  # time.time()
    early: int = 0
    limited: int = 0
    arrivals: list[float] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)  # of the limited route, in order
    compress: web.ContentCoding | None = None  # the limited route's answers, so encoded
    # Slowness and concurrency.
    delay: float = 0.0
    in_flight: int = 0
    peak: int = 0
    served: int = 0
    # Health.
    up: bool = True
    down_status: int = 503  # 200: a 2xx whose body says it is down
    health_bodies: list[bytes] = field(default_factory=list)
    uploads: int = 0

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _limit(self, now: float) -> web.Response:
        self.limited += 1
        if self.style == "seconds":
            self.window_end = now + self.retry_seconds
            return web.json_response(
                {"error": "slow down"},
                status=429,
                headers={"Retry-After": str(self.retry_seconds)},
            )
        if self.style == "date":
            # HTTP-dates have whole seconds: the window ends on one.
            self.window_end = math.floor(now) + 2
            date = email.utils.formatdate(self.window_end, usegmt=True)
            return web.json_response(
                {"error": "slow down"}, status=429, headers={"Retry-After": date}
            )
        self.window_end = now  # no announced window: the relay backs off
        return web.json_response({"error": "rate_limited"})

    async def limited_route(self, request: web.Request) -> web.Response:
        answer = await self._limited_answer(request)
        if self.compress is not None:
            answer.enable_compression(self.compress)
        return answer

    async def _limited_answer(self, request: web.Request) -> web.Response:
        now = time.time()
        self.arrivals.append(now)
        self.bodies.append(await request.read())
        if now < self.window_end:
            self.early += 1
            return self._limit(now)
        if self.limit_next > 0:
            self.limit_next -= 1
            return self._limit(now)
        return web.json_response({"ok": True, "error": None})

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        """A JSON answer sent chunked (no Content-Length): limited while
        ``limit_next`` lasts, and ``pad`` bytes long when asked (?pad=N)."""
        self.arrivals.append(time.time())
        body: dict[str, object] = {"ok": True, "error": None}
        if self.limit_next > 0:
            self.limit_next -= 1
            self.limited += 1
            body = {"error": "rate_limited"}
        pad = int(request.query.get("pad", "0"))
        if pad:
            body = {"error": "rate_limited", "pad": "x" * pad}
        data = json.dumps(body).encode()
        answer = web.StreamResponse(headers={"Content-Type": "application/json"})
        answer.enable_chunked_encoding()
        await answer.prepare(request)
        for at in range(0, len(data), 65536):
            await answer.write(data[at : at + 65536])
        await answer.write_eof()
        return answer

    async def upload(self, request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        self.uploads += 1
        return web.json_response(
            {"error": "slow down", "size": size}, status=429, headers={"Retry-After": "30"}
        )

    async def slow(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            # The API itself is slow: that is the behaviour under test.
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        self.served += 1
        return web.json_response({"slow": True})

    async def health(self, request: web.Request) -> web.Response:
        self.health_bodies.append(await request.read())
        if not self.up:
            return web.json_response(
                {"status": "down", "detail": "maintenance"}, status=self.down_status
            )
        return web.json_response({"status": "up"})


async def serve_fragile(host: str = "127.0.0.1") -> AsyncIterator[FragileAPI]:
    api = FragileAPI(host)
    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_route("*", "/limited", api.limited_route)
    app.router.add_post("/upload", api.upload)
    app.router.add_get("/chunked", api.chunked)
    app.router.add_get("/slow", api.slow)
    app.router.add_route("*", "/health", api.health)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    api.port = runner.addresses[0][1]
    try:
        yield api
    finally:
        await runner.cleanup()
