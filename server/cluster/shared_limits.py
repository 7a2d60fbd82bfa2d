"""Rate-limit deadlines shared by the relays of a cluster.

One limited answer through any relay pauses the connection on all of them:
the relay writes the deadline to the connection's ``connection_limits`` row
and every relay hears of it through the change feed (NOTIFY, the periodic
re-read as a fallback) and closes its own gate to the same deadline; a
relay starting up reads the table. After the deadline each relay picks one
local request to go first (the gate's probe), and that probe also needs the
row's probe lease, so the API sees one probe for the whole cluster. A probe
that comes back not limited deletes the row, which opens every gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable

import structlog

from server.proxy.retry import RateLimits
from server.storage.coordination import Coordination
from sluice.tasks import TaskSet

log = structlog.get_logger("sluice.relay.shared_limits")

# How long one relay's probe may take before another relay may probe instead.
PROBE_LEASE = 10.0
# How long a probe waits for the database to grant its lease; past that (a
# stalled database) the local gate alone holds the line, as when it is away.
PROBE_ASK_SECONDS = 2.0
# A probe kept back by another relay's lease looks again at least this often
# (the outcome's notification usually comes first).
LOOK_AGAIN = 0.25
MIN_HOLD = 0.02


# How long a relay shutting down waits for its queued limit writes.
FLUSH_SECONDS = 2.0


def _wall(when: dt.datetime) -> float:
    return when.timestamp()


class ClusterLimits:
    """``server.proxy.limit_gate.SharedLimits`` on the cluster's database."""

    def __init__(self, rows: Coordination, relay_id: str, tasks: TaskSet) -> None:
        self._rows = rows
        self._relay_id = relay_id
        self._tasks = tasks
        self.rate_limits: RateLimits | None = None  # set by attach()
        # Writes go out in order, one at a time: a "cleared" must not overtake
        # the "limited" before it.
        self._writes: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ClusterLimits {self._relay_id} pending_writes={self._writes.qsize()}>"

    async def attach(self, rate_limits: RateLimits) -> None:
        """Share *rate_limits*' deadlines; close its gates to those already in force."""
        self.rate_limits = rate_limits
        rate_limits.shared = self
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="limits")
        for conn_id, until in (await self._rows.all_limits()).items():
            rate_limits.limited_elsewhere(conn_id, _wall(until))

    async def close(self, flush_seconds: float = FLUSH_SECONDS) -> None:
        """Stop writing, once what is queued has been written (or *flush_seconds*
        have passed): a limited answer met by the last requests of a relay
        that is shutting down still pauses the connection everywhere."""
        if self._writer is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_seconds):
                    await self._writes.join()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    # -- this relay's gates tell the cluster ------------------------------------------
    def limited(self, key: str, until_wall: float) -> None:
        until = dt.datetime.fromtimestamp(until_wall, dt.UTC)
        self._write(key, lambda: self._rows.set_limit(key, until))

    def cleared(self, key: str) -> None:
        self._write(key, lambda: self._rows.clear_limit(key, passed_only=True))

    def reset(self, key: str) -> None:
        self._write(key, lambda: self._rows.clear_limit(key, passed_only=False))

    def released(self, key: str) -> None:
        self._write(key, lambda: self._rows.release_probe(key, self._relay_id))

    async def take_probe(self, key: str) -> float | None:
        if key.startswith("unsaved:"):
            return None
        try:
            async with asyncio.timeout(PROBE_ASK_SECONDS):
                turn = await self._rows.take_probe(key, self._relay_id, PROBE_LEASE)
        except Exception as exc:
            # The database is away: the local gate alone holds the line.
            log.warning("probe_lease_failed", connection=key, error=type(exc).__name__)
            return None
        if turn.go:
            return None
        if turn.deadline is not None:
            # Not sooner than a moment from now: this host's clock may run
            # ahead of the database's, and asking again at once would spin.
            return max(_wall(turn.deadline), time.time() + MIN_HOLD)
        again = time.time() + LOOK_AGAIN
        return again if turn.lease_until is None else min(_wall(turn.lease_until), again)

    def _write(self, key: str, write: Callable[[], Awaitable[None]]) -> None:
        if not key.startswith("unsaved:"):
            self._writes.put_nowait(write)

    async def _write_loop(self) -> None:
        while True:
            write = await self._writes.get()
            try:
                await write()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("shared_limit_write_failed", error=type(exc).__name__)
            finally:
                self._writes.task_done()

    # -- the cluster tells this relay's gates --------------------------------------------
    def changed(self, conn_id: str) -> None:
        """A ``limit`` change: read the connection's row again."""
        self._tasks.spawn(self.read(conn_id), name=f"limit-{conn_id}")

    def connection_changed(self, conn_id: str) -> None:
        """A ``connection`` change: deleted (its gate goes), or edited (read the row)."""
        self._tasks.spawn(self.read(conn_id, maybe_gone=True), name=f"limit-{conn_id}")

    async def read(self, conn_id: str, *, maybe_gone: bool = False) -> None:
        assert self.rate_limits is not None
        if maybe_gone and not await self._rows.connection_exists(conn_id):
            self.rate_limits.drop(conn_id)
            return
        until = await self._rows.limit_of(conn_id)
        if until is None:
            self.rate_limits.open_elsewhere(conn_id)
        else:
            self.rate_limits.limited_elsewhere(conn_id, _wall(until))
