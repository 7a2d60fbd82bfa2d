"""A small "internal" HTTP API for tests: echoes, streams, counts what it saw."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

BLOCK = bytes(range(256)) * 4096  # 1 MiB, deterministic


def blob_chunks(size: int) -> list[memoryview]:
    """The body GET /blob/{size} sends, as the chunks it is written in."""
    view = memoryview(BLOCK)
    out = []
    remaining = size
    while remaining > 0:
        n = min(remaining, len(BLOCK))
        out.append(view[:n])
        remaining -= n
    return out


def blob_sha256(size: int) -> str:
    h = hashlib.sha256()
    for chunk in blob_chunks(size):
        h.update(chunk)
    return h.hexdigest()


@dataclass
class SeenRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body_sha256: str | None = None
    body_bytes: int = 0


@dataclass
class InternalAPI:
    """Handle to a running test API."""

    host: str
    port: int
    scheme: str
    seen: list[SeenRequest] = field(default_factory=list)

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def build_app(api: InternalAPI) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        api.seen.append(_seen(request))
        return web.json_response({"hello": "world", "path": request.path_qs})

    async def echo(request: web.Request) -> web.Response:
        seen = _seen(request)
        h = hashlib.sha256()
        async for chunk in request.content.iter_any():
            h.update(chunk)
            seen.body_bytes += len(chunk)
        seen.body_sha256 = h.hexdigest()
        api.seen.append(seen)
        return web.json_response(
            {"sha256": seen.body_sha256, "bytes": seen.body_bytes, "method": request.method}
        )

    async def blob(request: web.Request) -> web.StreamResponse:
        api.seen.append(_seen(request))
        size = int(request.match_info["size"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        for chunk in blob_chunks(size):
            await response.write(chunk)
        await response.write_eof()
        return response

    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/hello", hello)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/blob/{size:\\d+}", blob)
    return app


def _seen(request: web.Request) -> SeenRequest:
    return SeenRequest(
        method=request.method,
        path=request.path,
        query=request.query_string,
        headers=dict(request.headers),
    )


async def serve_api(
    host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[InternalAPI]:
    """Run the API on host:0 until the generator is closed (use from a fixture)."""
    api = InternalAPI(host=host, port=0, scheme="https" if ssl_context else "http")
    runner = web.AppRunner(build_app(api), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0, ssl_context=ssl_context)
    await site.start()
    api.port = runner.addresses[0][1]
    try:
        yield api
    finally:
        await runner.cleanup()
