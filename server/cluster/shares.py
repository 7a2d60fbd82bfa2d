"""A connection's concurrency cap held by the whole cluster: each live relay
holds a share of ``http.concurrency_level``.

The shares are ``level // n`` plus one for the first ``level % n`` relays,
``n`` being the live relays in presence order (oldest first: a relay that
joins goes last, so the relays already serving keep their extra slot and
fewer caps change). They always add up to the level. A relay re-reads the
live relays when presence changes (the change feed's ``relays`` kind: a
relay joined, left, or was expired) and every heartbeat interval (a killed
relay counts as gone once its heartbeat is ``relay_dead_after`` old, before
any relay has expired its row), and the caps of every connection follow at
once (``ConcurrencyLimits.rebalance``).

A relay whose share is 0 (more relays than slots) forwards the request to a
relay that holds one (``CapShares.holders``), over the relay-to-relay hop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from server.cluster.presence import Presence
from server.storage.cluster import RelayRow

log = structlog.get_logger("sluice.relay.shares")


def share_of(level: int, position: int, count: int) -> int:
    """The share of the relay at *position* (0 = oldest) of *count* live relays."""
    return level // count + (1 if position < level % count else 0)


class CapShares:
    """Where this relay stands among the live relays, for everyone's cap."""

    def __init__(self, relay_id: str) -> None:
        self.relay_id = relay_id
        self._on_change: Callable[[], None] | None = None
        self._others: list[RelayRow] = []  # the other live relays, in presence order
        self.position = 0
        self.count = 1
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<CapShares {self.relay_id} {self.position + 1} of {self.count}>"

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call *callback* whenever this relay's place (so its shares) changed."""
        self._on_change = callback

    def share(self, level: int) -> int:
        return share_of(level, self.position, self.count)

    def holders(self, level: int) -> list[RelayRow]:
        """The other relays whose share of *level* is not 0 (and that can be
        reached over the hop), in presence order."""
        found = []
        for index, row in enumerate(self._others):
            position = index if index < self.position else index + 1  # this relay's place skipped
            if row.cluster_url and share_of(level, position, self.count) > 0:
                found.append(row)
        return found

    def update(self, live: list[RelayRow]) -> bool:
        """Take the live relays (oldest first); True when this relay's place changed.

        A relay not yet registered (starting) or already expired counts itself
        as the newest one, where it will be. A relay that serves no API (no
        cluster listener: a tool, not a member callers reach) holds no share.
        """
        live = [row for row in live if row.cluster_url or row.id == self.relay_id]
        ids = [row.id for row in live]
        position = ids.index(self.relay_id) if self.relay_id in ids else len(ids)
        count = len(ids) if self.relay_id in ids else len(ids) + 1
        self._others = [row for row in live if row.id != self.relay_id]
        changed = (position, count) != (self.position, self.count)
        self.position, self.count = position, count
        if changed:
            log.info("cap_shares_changed", position=position, relays=count)
            if self._on_change is not None:
                self._on_change()
        return changed

    async def refresh(self, presence: Presence) -> None:
        self.update(await presence.relays())

    def poke(self) -> None:
        """Read again now (presence changed)."""
        self._wake.set()

    def start(self, presence: Presence, interval: float) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(presence, interval), name="cap-shares"
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, presence: Presence, interval: float) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.refresh(presence)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database is away: keep the shares we have, read again next tick.
                log.warning("cap_shares_read_failed", error=type(exc).__name__)
