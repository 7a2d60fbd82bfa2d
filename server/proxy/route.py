"""``/v1/connections/{id}/proxy/{path}``: any method, bodies streamed both ways."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from server.cluster.forward import HOP_HEADER, SLOT, TRAFFIC
from server.errors import BodyTooLarge
from server.proxy.exchange import exchange
from server.proxy.headers import Fields
from server.proxy.raw_head import answer_response
from server.web.services import FORWARDED, HOP_PURPOSE, Services, services_of

TRAFFIC_ROUTE = "/v1/connections/{id}/traffic"


def hop_actor(services: Services, request: web.Request) -> tuple[str, str] | None:
    """('relay:<id>', purpose) when another relay of the cluster sent this request:
    a proxy request it forwarded, or its question for this relay's traffic series
    (``?scope=relay``). A signature for one never opens the other."""
    value = request.headers.get(HOP_HEADER)
    conn_id = request.match_info.get("id")
    if value is None or services.hop is None or conn_id is None:
        return None
    if "tail" in request.match_info:
        checked = services.hop.check(value, request.method, conn_id, _relative(request))
        allowed: tuple[str, ...] = ("", SLOT)
    elif (
        request.method == "GET"
        and request.match_info.route.resource is not None
        and request.match_info.route.resource.canonical == TRAFFIC_ROUTE
        and request.query.get("scope") == "relay"
    ):
        checked = services.hop.check(value, "GET", conn_id, "")
        allowed = (TRAFFIC,)
    else:
        return None
    if checked is None or checked[1] not in allowed:
        return None
    return f"relay:{checked[0]}", checked[1]


def _relative(request: web.Request) -> str:
    """The raw (still percent-encoded) path and query after .../proxy."""
    conn_id = request.match_info["id"]
    prefix = f"/v1/connections/{conn_id}/proxy"
    raw = request.raw_path
    tail = raw[len(prefix) :] if raw.startswith(prefix) else "/" + request.match_info["tail"]
    return tail  # "" too: the base URI as written


def _limited_body(request: web.Request, limit: int) -> Any:
    """The request body, refused or cut off past *limit* bytes (0: no limit)."""
    if not request.body_exists:
        return None
    if not limit:
        return request.content
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"the body is {request.content_length} bytes; max_body_bytes is {limit}")

    async def counted() -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in request.content.iter_any():
            seen += len(chunk)
            if seen > limit:
                raise BodyTooLarge(f"the body passed max_body_bytes ({limit})")
            yield chunk

    return counted()


class _ResponseSink:
    """An answer written through aiohttp's response objects."""

    def __init__(self, request: web.Request, stalled_reader_timeout: float, raw: bool) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self._timeout = stalled_reader_timeout
        self._raw = raw

    async def whole(self, status: int, reason: str | None, headers: Fields, body: bytes) -> None:
        response = self.response = answer_response(status, reason, headers, raw=self._raw)
        response.content_length = len(body)
        await response.prepare(self.request)
        await response.write(body)
        await response.write_eof()

    async def begin(
        self,
        status: int,
        reason: str | None,
        headers: Fields,
        length: int | None,
    ) -> None:
        response = self.response = answer_response(status, reason, headers, raw=self._raw)
        if length is not None:
            response.content_length = length
        await response.prepare(self.request)

    async def write(self, chunk: bytes) -> None:
        """A caller that takes none of it for stalled_reader_timeout is cut
        (it would hold its stream through the agent forever); the front
        applies the same bound."""
        assert self.response is not None
        if self._timeout <= 0:
            await self.response.write(chunk)
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self.response.write(chunk)
        except TimeoutError:
            raise ConnectionResetError("the caller stopped reading") from None

    async def end(self) -> None:
        assert self.response is not None
        await self.response.write_eof()

    def cut(self) -> None:
        if self.request.transport is not None:
            self.request.transport.close()


async def proxy(request: web.Request) -> web.StreamResponse:
    """The route as aiohttp serves it: requests ``server.proxy.front`` hands on
    (HEAD, chunked or 100-continue bodies, HTTP/1.0, ...)."""
    services = services_of(request)
    sink = _ResponseSink(request, services.stalled_reader_timeout, services.raw_heads)
    await exchange(
        services,
        request.match_info["id"],
        request.method,
        _relative(request),
        list(request.raw_headers),
        _limited_body(request, services.max_body_bytes),
        sink,
        forwarded=request.get(FORWARDED, False),
        slot_wanted=request.get(HOP_PURPOSE, "") == SLOT,
    )
    assert sink.response is not None
    return sink.response
