"""A job one relay of the cluster runs at a time, held through a lease row.

The holder renews the row every tick; a relay that stops renewing (killed,
cut off from the database) loses it once it expires, three ticks later,
and the next relay to ask takes it. A holder believes it holds the lease
only up to a tick before the row expires, so two relays never both run the
job on the strength of the same row.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from server.storage.coordination import Coordination

log = structlog.get_logger("sluice.relay.leadership")

# The lease expires this many ticks after its last renewal.
LEASE_TICKS = 3


class Leadership:
    def __init__(self, rows: Coordination, name: str, relay_id: str, tick: float) -> None:
        self._rows = rows
        self.name = name
        self._relay_id = relay_id
        self.tick = tick
        self._held_until = 0.0  # time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Leadership {self.name} held={self.leads()} tick={self.tick:g}s>"

    def leads(self) -> bool:
        return time.monotonic() < self._held_until

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"lease-{self.name}")

    async def close(self) -> None:
        """Stop, and hand the lease back so another relay takes it at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.leads():
            self._held_until = 0.0
            with contextlib.suppress(Exception):
                await self._rows.release_lease(self.name, self._relay_id)

    async def renew(self) -> bool:
        """Take or renew the lease once; True while this relay holds it."""
        asked = time.monotonic()
        held = await self._rows.take_lease(self.name, self._relay_id, LEASE_TICKS * self.tick)
        was = self.leads()
        self._held_until = asked + (LEASE_TICKS - 1) * self.tick if held else 0.0
        if held != was:
            log.info("lease_changed", lease=self.name, relay_id=self._relay_id, held=held)
        return held

    async def _run(self) -> None:
        while True:
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Not renewed: the lease runs out on its own, as it should.
                log.warning("lease_renew_failed", lease=self.name, error=type(exc).__name__)
            # A schedule, not synchronisation: the lease's next renewal.
            await asyncio.sleep(self.tick)
