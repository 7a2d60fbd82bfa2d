"""A rate-limit gate's life (kept only while it holds something, dropped or
reset with its connection's settings), and a limited answer read to check it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from server.connections.model import RateLimit
from server.proxy.limited_answer import KeptAnswer, ReadOnAnswer, is_limited, keep_if_checkable
from server.proxy.retry import RateLimits
from tests.support.waiting import wait_until

RULE = RateLimit(fail_path="error", fail_values=["rate_limited"])


async def test_forget_drops_the_gate_and_lets_its_waiters_go() -> None:
    limits = RateLimits()
    gate = limits.gate("con_a", RULE)
    gate.limited(30)
    waiter = asyncio.ensure_future(gate.pass_through())
    await wait_until(lambda: gate.waiting == 1, what="the request at the gate")
    assert len(limits) == 1
    limits.forget("con_a")
    assert len(limits) == 0
    async with asyncio.timeout(1):
        assert await waiter is False  # opened: no probe owed


async def test_other_settings_start_a_fresh_gate() -> None:
    limits = RateLimits()
    old = limits.gate("con_a", RULE)
    old.limited(30)
    new = limits.gate("con_a", RateLimit(fail_status=503))
    assert new is not old
    assert not new.needs_probe
    assert new.until <= time.monotonic()
    assert not old.needs_probe  # its waiters go too
    assert limits.gate("con_a", RateLimit(fail_status=503)) is new


async def test_a_gate_opened_elsewhere_is_dropped_when_idle() -> None:
    limits = RateLimits()
    limits.limited_elsewhere("con_a", time.time() + 30)
    assert len(limits) == 1
    limits.open_elsewhere("con_a")
    assert len(limits) == 0


class _Stream:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def read(self, n: int = -1) -> bytes:
        data, self._chunks = b"".join(self._chunks), []
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        while self._chunks:
            yield self._chunks.pop(0)


class _Chunked:
    """An API's 200 without Content-Length."""

    status = 200
    reason = "OK"
    content_length = None
    raw_headers = [(b"Transfer-Encoding", b"chunked")]
    headers = CIMultiDictProxy(CIMultiDict({"Transfer-Encoding": "chunked"}))

    def __init__(self, chunks: list[bytes]) -> None:
        self.content = _Stream(chunks)
        self.released = False

    async def read(self) -> bytes:
        return await self.content.read()

    def release(self) -> None:
        self.released = True

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None


async def test_a_small_chunked_answer_is_checked() -> None:
    answer = await keep_if_checkable(_Chunked([b'{"error": ', b'"rate_limited"}']), RULE)
    assert isinstance(answer, KeptAnswer)
    assert is_limited(answer, RULE)


async def test_a_chunked_answer_past_the_limit_goes_on_unchanged() -> None:
    chunks = [b'{"error": "rate_limited", "pad": "'] + [b"x" * 65536] * 17 + [b'"}']
    whole = b"".join(chunks)
    upstream = _Chunked(list(chunks))
    answer = await keep_if_checkable(upstream, RULE)
    assert isinstance(answer, ReadOnAnswer)
    assert not is_limited(answer, RULE)
    assert answer.content_length is None
    out = b"".join([chunk async for chunk in answer.content.iter_any()])
    assert out == whole
    answer.release()
    assert upstream.released


async def test_news_of_an_open_cluster_does_not_open_a_limit_seen_here() -> None:
    """The cluster's "no limit" can be older than an answer this relay just had
    (its own write still on its way): the gate stays closed."""
    limits = RateLimits()
    limits.gate("con_a", RULE).limited(30)
    limits.open_elsewhere("con_a")
    gate = limits.gate("con_a", RULE)
    assert gate.needs_probe
    assert gate.until > time.monotonic() + 20
    limits.drop("con_a")  # the connection was deleted: that one counts
    assert len(limits) == 0
