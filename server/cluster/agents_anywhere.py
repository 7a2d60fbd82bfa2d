"""Whether an agent is connected to any relay of the cluster.

This relay's own tunnels answer at once (the registry); tunnels held by
other relays come from the presence table, read again every interval, so
an agent tunnelled to another relay is not shown offline here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

import structlog

from server.storage.coordination import Coordination
from server.tunnel.registry import TunnelRegistry

log = structlog.get_logger("sluice.relay.agents_anywhere")


class AgentsAnywhere:
    def __init__(
        self,
        rows: Coordination,
        registry: TunnelRegistry,
        relay_id: str,
        *,
        interval: float,
        dead_after: float,
    ) -> None:
        self._rows = rows
        self._registry = registry
        self._relay_id = relay_id
        self._interval = interval
        self._dead_after = dt.timedelta(seconds=dead_after)
        self._elsewhere: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<AgentsAnywhere elsewhere={len(self._elsewhere)}>"

    def is_online(self, agent_id: str) -> bool:
        return self._registry.is_online(agent_id) or agent_id in self._elsewhere

    async def refresh(self) -> None:
        self._elsewhere = await self._rows.agents_elsewhere(self._relay_id, self._dead_after)

    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="agents-anywhere")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            # A schedule, not synchronisation: the next read of the presence table.
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("agents_read_failed", error=type(exc).__name__)
