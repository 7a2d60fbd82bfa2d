"""The change feed: every relay learns what another process changed.

A change is a row in the ``changes`` table written in the same transaction
as the change itself (by the API of any relay, or by the CLI). On PostgreSQL
the commit also sends a NOTIFY, which the feed acts on at once; a periodic
re-read of the table covers a notification missed while the listening
connection was down. On SQLite the periodic read is the only way (one
indexed query per interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.engine import make_url

from server.storage.cluster import ClusterStore
from server.storage.store import CHANGES_CHANNEL

log = structlog.get_logger("sluice.relay.changes")

# Called with (kind, target) for each change; must not block (it may spawn tasks).
ChangeHandler = Callable[[str, str], None]

# On PostgreSQL two transactions can commit out of id order, so each read goes
# back this many ids and skips the ones already seen; handlers are idempotent.
_REREAD_WINDOW = 200
_PRUNE_EVERY = 600.0
_KEEP_CHANGES = 3600.0


def asyncpg_dsn(url: str) -> str | None:
    """The plain ``postgresql://`` DSN for a SQLAlchemy PostgreSQL URL, else None."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return None
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeFeed:
    """Reads changes after the last one seen and hands each to *handler*."""

    def __init__(
        self,
        cluster: ClusterStore,
        handler: ChangeHandler,
        *,
        poll_interval: float,
        listen_dsn: str | None = None,
        listen_timeout: float = 5.0,
    ) -> None:
        """*listen_timeout*: seconds connecting and starting to listen may
        take (a database that stops answering must not hold the feed, or a
        relay's start, forever)."""
        self._cluster = cluster
        self._handler = handler
        self._interval = poll_interval
        self._dsn = listen_dsn
        self._listen_timeout = listen_timeout
        self._window = _REREAD_WINDOW if listen_dsn else 0
        self._last = 0
        self._seen: set[int] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: Any = None  # asyncpg.Connection while listening
        self._pruned = time.monotonic()
        self._expected: dict[tuple[str, str], list[asyncio.Future[None]]] = {}
        self.reads = 0

    def __repr__(self) -> str:
        mode = "listen+poll" if self._dsn else "poll"
        return f"<ChangeFeed {mode} last={self._last}>"

    async def start(self) -> None:
        """Begin after the newest change already stored (older ones are history)."""
        self._last = await self._cluster.last_change_id()
        if self._dsn is not None:
            await self._listen()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="change-feed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._unlisten()

    def expect(self, kind: str, target: str) -> asyncio.Future[None] | None:
        """A future done when this relay hears of the change (*kind*, *target*);
        None without notifications (SQLite: no other relay to wait for).

        Call it before making the change. A relay that answers only after its
        own notification came back answers no earlier than the other relays
        were told: their next request uses the change.
        """
        if self._listener is None:
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._expected.setdefault((kind, target[:64]), []).append(future)
        return future

    async def settle(self, future: asyncio.Future[None] | None, timeout: float = 1.0) -> None:
        """Wait (bounded) for a change expected with ``expect``."""
        if future is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            log.warning("change_not_heard_back", timeout_s=timeout)
        finally:
            self.forget(future)

    def forget(self, future: asyncio.Future[None] | None) -> None:
        """Stop expecting (the change was not made after all)."""
        for key, futures in list(self._expected.items()):
            if future in futures:
                futures.remove(future)
                if not futures:
                    del self._expected[key]

    def poke(self) -> None:
        """Read now (this process made a change and wants it applied everywhere)."""
        self._wake.set()

    # -- PostgreSQL LISTEN ------------------------------------------------------------
    async def _listen(self) -> None:
        import asyncpg

        assert self._dsn is not None
        try:
            # The LISTEN is a statement too: without command_timeout it
            # waits for ever on a database that stopped answering.
            db = await asyncpg.connect(
                self._dsn, timeout=self._listen_timeout, command_timeout=self._listen_timeout
            )
            try:
                await db.add_listener(CHANGES_CHANNEL, self._notified)
            except BaseException:
                db.terminate()
                raise
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("change_listen_failed", error=type(exc).__name__, detail=str(exc))
            return
        self._listener = db
        # Something may have changed while we were not listening.
        self._wake.set()

    async def _unlisten(self) -> None:
        db, self._listener = self._listener, None
        if db is not None:
            with contextlib.suppress(Exception):
                await db.close(timeout=2)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        # Acted on at once (cache invalidation is synchronous), then confirmed
        # by the read the wake-up triggers.
        kind, _, target = payload.partition(":")
        self._dispatch(kind, target)
        for future in self._expected.pop((kind, target), ()):
            if not future.done():
                future.set_result(None)
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if self._dsn is not None and (self._listener is None or self._listener.is_closed()):
                    await self._unlisten()
                    await self._listen()
                await self._read()
                if time.monotonic() - self._pruned > _PRUNE_EVERY:
                    self._pruned = time.monotonic()
                    await self._cluster.prune_changes(dt.timedelta(seconds=_KEEP_CHANGES))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database is away: keep what we have, try again next tick.
                log.warning("change_read_failed", error=type(exc).__name__, detail=str(exc)[:200])

    async def _read(self) -> None:
        self.reads += 1
        rows = await self._cluster.changes_after(max(0, self._last - self._window))
        for change in rows:
            if change.id in self._seen or (not self._window and change.id <= self._last):
                continue
            if self._window:
                self._seen.add(change.id)
            self._dispatch(change.kind, change.target)
        if rows:
            self._last = max(self._last, rows[-1].id)
        if self._seen:
            floor = self._last - self._window
            self._seen = {i for i in self._seen if i > floor}

    def _dispatch(self, kind: str, target: str) -> None:
        try:
            self._handler(kind, target)
        except Exception as exc:
            log.error("change_handler_failed", kind=kind, error=repr(exc))
