"""A small "internal" HTTP API for tests: echoes, streams, counts what it saw."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

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


def noise(size: int, seed: int = 22) -> bytes:
    """The body GET /noise/{size} sends: pseudo-random bytes, so a piece that
    arrives out of place changes the digest (a repeating blob would not)."""
    return random.Random(seed).randbytes(size)


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
    headers: CIMultiDict[str]
    body_sha256: str | None = None
    body_bytes: int = 0


@dataclass
class TokenIssuer:
    """The API's token endpoint: refresh_secret in, a fresh token out."""

    refresh_secret: str = "rt-" + "7" * 24
    current: str = "expired-at-start"
    issued: int = 0
    omit_token: bool = False
    refresh_bodies: list[bytes] = field(default_factory=list)
    rotate: bool = False  # answer with a new refresh token; the old one stops working
    reject_status: int = 401  # what /secure answers a stale token with


@dataclass
class InternalAPI:
    """Handle to a running test API."""

    host: str
    port: int
    scheme: str
    seen: list[SeenRequest] = field(default_factory=list)
    tokens: TokenIssuer = field(default_factory=TokenIssuer)

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def build_app(api: InternalAPI) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        api.seen.append(_seen(request))
        # Like a careful API, never echo a credential given in the query.
        query = "&".join(
            f"{k}={v}" for k, v in request.query.items() if k not in ("api_key", "key")
        )
        return web.json_response(
            {"hello": "world", "path": request.path + (f"?{query}" if query else "")}
        )

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

    async def noise_body(request: web.Request) -> web.StreamResponse:
        api.seen.append(_seen(request))
        body = memoryview(noise(int(request.match_info["size"])))
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = len(body)
        await response.prepare(request)
        for start in range(0, len(body), 1024 * 1024):
            await response.write(body[start : start + 1024 * 1024])
        await response.write_eof()
        return response

    async def secure(request: web.Request) -> web.Response:
        api.seen.append(_seen(request))
        if request.headers.get("Authorization") != f"Bearer {api.tokens.current}":
            return web.json_response({"error": "token expired"}, status=api.tokens.reject_status)
        return web.json_response({"secure": True, "path": request.path_qs})

    async def token(request: web.Request) -> web.Response:
        body = await request.read()
        api.tokens.refresh_bodies.append(body)
        api.seen.append(_seen(request))
        try:
            presented = json.loads(body).get("refresh_token")
        except ValueError:
            presented = None
        if presented != api.tokens.refresh_secret:
            return web.json_response({"error": "invalid_grant"}, status=400)
        api.tokens.issued += 1
        if api.tokens.omit_token:
            return web.json_response({"data": {"expires_in": 3600}, "note": "no token here"})
        api.tokens.current = f"at-{api.tokens.issued}-" + "x" * 20
        data = {"access_token": api.tokens.current}
        if api.tokens.rotate:
            api.tokens.refresh_secret = f"rt-{api.tokens.issued}-" + "y" * 20
            data["refresh_token"] = api.tokens.refresh_secret
        return web.json_response({"data": data})

    async def slack(request: web.Request) -> web.Response:
        api.seen.append(_seen(request))
        return web.json_response({"ok": request.query.get("ok", "false") == "true"})

    async def flag(request: web.Request) -> web.Response:
        api.seen.append(_seen(request))
        return web.json_response({"status": {"ok": request.query.get("value", "")}})

    async def slow(request: web.Request) -> web.Response:
        # The API itself is slow: that is the behaviour under test, not a wait.
        api.seen.append(_seen(request))
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.json_response({"slow": True})

    async def bye(request: web.Request) -> web.Response:
        # Answers, then closes the connection: the next request needs a new one.
        api.seen.append(_seen(request))
        response = web.json_response({"bye": True})
        response.force_close()
        return response

    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/slow", slow)
    app.router.add_get("/bye", bye)
    app.router.add_route("*", "/secure/{tail:.*}", secure)
    app.router.add_post("/oauth/token", token)
    app.router.add_get("/slack/auth.test", slack)
    app.router.add_get("/flag", flag)
    app.router.add_get("/hello", hello)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/blob/{size:\\d+}", blob)
    app.router.add_get("/noise/{size:\\d+}", noise_body)
    return app


def _seen(request: web.Request) -> SeenRequest:
    return SeenRequest(
        method=request.method,
        path=request.path,
        query=request.query_string,
        headers=CIMultiDict(request.headers),
    )


async def serve_api(
    host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[InternalAPI]:
    """Run the API on host:0 until the generator is closed (use from a fixture)."""
    api = InternalAPI(host=host, port=0, scheme="https" if ssl_context else "http")
    runner = web.AppRunner(build_app(api), access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, host, 0, ssl_context=ssl_context)
    await site.start()
    api.port = runner.addresses[0][1]
    try:
        yield api
    finally:
        await runner.cleanup()
