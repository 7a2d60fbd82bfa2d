"""Whether an API's answer is a rate limit, and the answer kept to find out.

A limit is an answer with the connection's ``http.rate_limit`` fail status,
or a 200 whose JSON body holds one of ``fail_values`` at ``fail_path``. To
look at the body the relay reads it first: up to REPLAY_LIMIT (1 MiB),
whether the API named its length or sent it chunked (or until it closed).
A longer body cannot be a checked limit: it goes to the caller unchanged,
the part already read first. A body the API compressed (gzip or deflate:
the caller's Accept-Encoding goes to the API) is inflated to be looked at,
up to the same limit, and passed on as it came; one in another encoding
(br) cannot be looked at.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from multidict import CIMultiDictProxy

from server.connections.model import RateLimit
from server.proxy.engine import REPLAY_LIMIT
from server.proxy.success_path import as_comparable, lookup
from server.tunnel.http1 import Answer


class _Bytes:
    """A kept body, read like an answer's stream."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int = -1) -> bytes:
        if n < 0 or n >= len(self._data):
            data, self._data = self._data, b""
        else:
            data, self._data = self._data[:n], self._data[n:]
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        if self._data:
            data, self._data = self._data, b""
            yield data


class KeptAnswer:
    """An answer whose body the relay read (to look at its fail path)."""

    def __init__(self, answer: Answer, body: bytes) -> None:
        self.status = answer.status
        self.reason = answer.reason
        self.headers: CIMultiDictProxy[str] = answer.headers
        self.raw_headers: Sequence[tuple[bytes, bytes]] = answer.raw_headers
        self.content_length: int | None = len(body)
        self.content = _Bytes(body)
        self.body = body

    async def read(self) -> bytes:
        return await self.content.read()

    def release(self) -> None:
        return None

    async def __aenter__(self) -> KeptAnswer:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None


class _Rest:
    """The part of a body already read, then the rest of the API's stream."""

    def __init__(self, read: list[bytes], rest: AsyncIterator[bytes]) -> None:
        self._read = read
        self._rest = rest

    async def read(self, n: int = -1) -> bytes:
        if not self._read:
            self._read.append(await anext(self._rest, b""))
        if n < 0:
            async for chunk in self._rest:
                self._read.append(chunk)
            data, self._read = b"".join(self._read), []
            return data
        head = self._read[0]
        if len(head) > n:
            self._read[0] = head[n:]
            return head[:n]
        return self._read.pop(0)

    async def iter_any(self) -> AsyncIterator[bytes]:
        while self._read:
            yield self._read.pop(0)
        async for chunk in self._rest:
            yield chunk


class ReadOnAnswer:
    """An answer of unknown length longer than REPLAY_LIMIT: what was read
    goes first, then the rest of the stream, unchanged."""

    def __init__(self, answer: Answer, read: list[bytes], rest: AsyncIterator[bytes]) -> None:
        self._answer = answer
        self.status = answer.status
        self.reason = answer.reason
        self.headers: CIMultiDictProxy[str] = answer.headers
        self.raw_headers: Sequence[tuple[bytes, bytes]] = answer.raw_headers
        self.content_length: int | None = None
        self.content = _Rest(read, rest)

    async def read(self) -> bytes:
        return await self.content.read()

    def release(self) -> Any:
        return self._answer.release()

    async def __aenter__(self) -> ReadOnAnswer:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()


async def keep_if_checkable(answer: Answer, rule: RateLimit) -> Answer:
    """The answer with its body read when the fail path must be checked: a
    200 of up to REPLAY_LIMIT, its length known or not. Anything else
    passes on with its body unread (or, past the limit, the part read first)."""
    if rule.fail_path is None or answer.status != 200:
        return answer
    length = answer.content_length
    if length is not None and length > REPLAY_LIMIT:
        return answer
    if length is not None:
        try:
            return KeptAnswer(answer, await answer.read())
        finally:
            answer.release()
    # Chunked, or ended by the API closing: read until the limit is passed.
    chunks: list[bytes] = []
    size = 0
    stream = aiter(answer.content.iter_any())
    try:
        async for chunk in stream:
            chunks.append(chunk)
            size += len(chunk)
            if size > REPLAY_LIMIT:
                return ReadOnAnswer(answer, chunks, stream)
    except BaseException:
        answer.release()
        raise
    answer.release()
    return KeptAnswer(answer, b"".join(chunks))


def _inflated(answer: KeptAnswer) -> bytes | None:
    """The kept body as the API encoded it before any Content-Encoding
    (up to REPLAY_LIMIT); None when that encoding cannot be undone here."""
    coding = answer.headers.get("Content-Encoding", "").strip().lower()
    if coding in ("", "identity"):
        return answer.body
    if coding not in ("gzip", "x-gzip", "deflate"):
        return None
    # gzip or zlib framing (wbits 47 tells them apart), else raw deflate,
    # which some servers send as "deflate".
    for wbits in (47, -15):
        try:
            return zlib.decompressobj(wbits).decompress(answer.body, REPLAY_LIMIT)
        except zlib.error:
            continue
    return None


def is_limited(answer: Answer, rule: RateLimit) -> bool:
    """Whether *answer* means "too many requests" under *rule*."""
    if rule.fail_status is not None and answer.status == rule.fail_status:
        return True
    if rule.fail_path is None or not isinstance(answer, KeptAnswer):
        return False
    body = _inflated(answer)
    if body is None:
        return False
    try:
        found, value = lookup(json.loads(body), rule.fail_path)
    except (ValueError, RecursionError):
        return False
    return found and as_comparable(value) in rule.fail_values
