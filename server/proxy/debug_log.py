"""A connection's debug log: every request it makes and its answer, for a
time-limited window, secrets masked.

``POST /v1/connections/{id}/debug`` opens a window (at most 60 minutes).
While it is open the exchange records each request as the API got it (the
engine's :mod:`server.proxy.wiretap`), the answer as the caller got it, the
first 8 KiB of each body, the time taken and the retries. Entries go to the
database (so every relay of a cluster writes to the same log), at most
``keep`` per connection, and are deleted ``retention`` seconds after the
window ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import structlog
from yarl import URL

from server.proxy.engine import Handle
from server.proxy.headers import Fields
from server.proxy.masking import Masker
from server.storage.debug_log import DebugWindow
from server.storage.store import Store, utcnow
from server.tunnel.http1 import Body
from sluice.tasks import TaskSet

log = structlog.get_logger("sluice.relay.debug")

BODY_PREFIX = 8 * 1024
MAX_MINUTES = 60
# How long a relay trusts what it read of a window: a window opened or closed
# through another relay of a cluster shows within this (and one request).
WINDOW_CACHE_SECONDS = 1.0


def masker_for(handle: Handle) -> Masker:
    # Token auth names its header or query parameter; other types use
    # Authorization or cookies, which are masked whatever the connection.
    auth = handle.connection.http.auth
    header: str | None = getattr(auth, "header_name", None)
    param: str | None = getattr(auth, "param_name", None)
    return Masker(handle.masks, [header] if header else [], [param] if param else [])


class Recording:
    """One request and its answer, while its connection's window is open."""

    def __init__(self, handle: Handle, method: str, relative: str) -> None:
        self.handle = handle
        self.at = utcnow()
        self.began = time.perf_counter()
        self.method = method
        self.relative = relative
        # Room beyond the prefix for a secret that straddles the cut.
        self._cap = BODY_PREFIX + masker_for(handle).longest
        self.sent: tuple[str, str, Fields] | None = None
        self.sends = 0
        self.request_body = bytearray()
        self.request_bytes = 0
        self.status: int | None = None
        self.answer_headers: Sequence[tuple[bytes, bytes]] = ()
        self.answer_body = bytearray()
        self.answer_bytes = 0
        self.error: str | None = None

    def __repr__(self) -> str:
        return f"<Recording {self.method} {self.relative!r} status={self.status}>"

    def tap(self, method: str, origin: URL, target: str, fields: Fields) -> None:
        """The engine sent a request (the last one sent is the one answered)."""
        self.sends += 1
        self.sent = (method, str(origin).rstrip("/") + target, list(fields))

    def _keep(self, into: bytearray, chunk: bytes) -> None:
        room = self._cap - len(into)
        if room > 0:
            into += chunk[:room]

    def body(self, body: Body) -> Body:
        """*body*, its first bytes kept on the way to the API."""
        if body is None:
            return None
        if isinstance(body, bytes):
            self._keep(self.request_body, body)
            self.request_bytes = len(body)
            return body
        chunks = body.iter_any() if isinstance(body, aiohttp.StreamReader) else body

        async def kept() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                self._keep(self.request_body, chunk)
                self.request_bytes += len(chunk)
                yield chunk

        return kept()

    def answered(self, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.answer_headers = headers

    def answer_chunk(self, chunk: bytes) -> None:
        self._keep(self.answer_body, chunk)
        self.answer_bytes += len(chunk)

    def failed(self, error: str) -> None:
        self.error = error

    def entry(self) -> dict[str, Any]:
        """What is stored: everything passed through the masker."""
        # Built again now: a token fetched or refreshed during this request
        # joined the connection's secrets after the recording began.
        m = masker_for(self.handle)
        retries = next(
            (int(v) for n, v in self.answer_headers if n.lower() == b"sluice-retries"), 0
        )
        request: dict[str, Any] = {"method": self.method, "relative": m.url(self.relative)}
        if self.sent is not None:
            method, url, fields = self.sent
            request |= {"method": method, "url": m.url(url), "headers": m.headers(fields)}
        request |= {
            "body": m.body(bytes(self.request_body), BODY_PREFIX),
            "body_bytes": self.request_bytes,
        }
        answer: dict[str, Any] | None = None
        if self.status is not None:
            answer = {
                "status": self.status,
                "headers": m.headers(self.answer_headers),
                "body": m.body(bytes(self.answer_body), BODY_PREFIX),
                "body_bytes": self.answer_bytes,
            }
        return {
            "request": request,
            "answer": answer,
            "error": m.text(self.error) if self.error else None,
            "elapsed_ms": round((time.perf_counter() - self.began) * 1000, 1),
            "retries": retries,
            "sends": self.sends,
        }


class DebugLog:
    """The debug windows and entries of every connection, as this relay sees them."""

    def __init__(self, store: Store, *, keep: int = 1000, retention: float = 86400.0) -> None:
        self._store = store
        self.keep = keep
        self.retention = retention
        self._windows: dict[str, tuple[float, dt.datetime | None]] = {}
        self._reading: set[str] = set()
        self._tasks = TaskSet()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<DebugLog windows={len(self._windows)} keep={self.keep}>"

    # -- windows ---------------------------------------------------------------
    async def start(self, conn_id: str, minutes: float) -> DebugWindow | None:
        now = utcnow()
        window = await self._store.debug.open_window(
            conn_id, now, now + dt.timedelta(minutes=minutes)
        )
        if window is not None:
            self._windows[conn_id] = (time.monotonic(), window.until)
        return window

    async def stop(self, conn_id: str) -> DebugWindow | None:
        window = await self._store.debug.close_window(conn_id, utcnow())
        self._windows[conn_id] = (time.monotonic(), window.until if window else None)
        return window

    def forget(self, conn_id: str) -> None:
        self._windows.pop(conn_id, None)

    async def window(self, conn_id: str) -> DebugWindow | None:
        return await self._store.debug.window(conn_id)

    async def _open_until(self, conn_id: str) -> dt.datetime | None:
        """When the connection's window ends (None: no window), as last read.

        Only a connection's first request waits for the database; after that
        a stale answer is used while one read in the background renews it,
        so the proxy's hot path never waits on the store for this.
        """
        now = time.monotonic()
        cached = self._windows.get(conn_id)
        if cached is None:
            return await self._read_window(conn_id)
        if now - cached[0] > WINDOW_CACHE_SECONDS and conn_id not in self._reading:
            self._reading.add(conn_id)
            self._tasks.spawn(self._read_window(conn_id), name="debug-window-read")
        return cached[1]

    def surely_closed(self, conn_id: str) -> bool:
        """True when the connection's window, as last read, is not open (as
        ``recording`` would find it, without waiting); False when it is open
        or has never been read here (then ``recording`` reads it)."""
        cached = self._windows.get(conn_id)
        if cached is None:
            return False
        if time.monotonic() - cached[0] > WINDOW_CACHE_SECONDS and conn_id not in self._reading:
            self._reading.add(conn_id)
            self._tasks.spawn(self._read_window(conn_id), name="debug-window-read")
        until = cached[1]
        return until is None or until <= utcnow()

    async def _read_window(self, conn_id: str) -> dt.datetime | None:
        try:
            window = await self._store.debug.window(conn_id)
        finally:
            self._reading.discard(conn_id)
        until = window.until if window is not None else None
        self._windows[conn_id] = (time.monotonic(), until)
        if len(self._windows) > 10_000:
            self._windows.pop(next(iter(self._windows)))
        return until

    async def recording(self, handle: Handle, method: str, relative: str) -> Recording | None:
        """A recording for this request if its connection's window is open."""
        if handle.id is None:
            return None
        until = await self._open_until(handle.id)
        if until is None or until <= utcnow():
            return None
        return Recording(handle, method, relative)

    async def write(self, recording: Recording) -> None:
        assert recording.handle.id is not None
        try:
            await self._store.debug.append(
                recording.handle.id, recording.at, recording.entry(), self.keep
            )
        except Exception as exc:  # the caller's answer is out already; keep serving
            log.warning("debug_entry_lost", connection=recording.handle.id, error=str(exc))

    async def page(self, conn_id: str, *, limit: int, before: int | None) -> list[dict[str, Any]]:
        return await self._store.debug.page(conn_id, limit=limit, before=before)

    # -- retention -------------------------------------------------------------------
    async def purge(self) -> int:
        """Delete the entries of windows that ended more than ``retention`` ago."""
        return await self._store.debug.purge(utcnow() - dt.timedelta(seconds=self.retention))

    def start_purging(self, every: float = 60.0) -> None:
        async def run() -> None:
            while True:
                with contextlib.suppress(Exception):
                    deleted = await self.purge()
                    if deleted:
                        log.info("debug_entries_purged", entries=deleted)
                # A schedule, not synchronisation.
                await asyncio.sleep(every)

        self._task = asyncio.get_running_loop().create_task(run(), name="debug-purge")

    async def close(self) -> None:
        await self._tasks.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
