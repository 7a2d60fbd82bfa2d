"""Scheduled health checks: connections with ``http.health`` are pinged on
their interval, and the outcome is what the API and the console show.

Every check (scheduled, or a Test pressed on a saved connection) is stored
(``connection_health``), so every relay of a cluster shows the same status.
In a cluster one relay runs the schedule: ``leads`` says whether this relay
is the one (see docs/TRAFFIC.md); a single relay always is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server.connections.service import ConnectionNotFound, ConnectionService
from server.connections.status import is_up
from server.proxy.engine import Engine, PingResult
from server.storage.health import HealthRecord
from server.storage.store import Store, utcnow

log = structlog.get_logger("sluice.relay.health")

# How much longer than its connection's total timeout a scheduled ping may take.
PING_GRACE_SECONDS = 5.0

# At most this many scheduled pings at once.
PARALLEL_CHECKS = 8


class HealthMonitor:
    def __init__(
        self,
        store: Store,
        connections: ConnectionService,
        engine: Engine,
        agent_online: Callable[[str], bool],
        *,
        min_interval: float = 30.0,
        leads: Callable[[], bool] | None = None,
    ) -> None:
        self._store = store
        self._connections = connections
        self._engine = engine
        self._agent_online = agent_online
        # Due times are checked a few times per shortest interval.
        self._tick = max(0.05, min(5.0, min_interval / 4))
        self._leads = leads or (lambda: True)
        # Shared with other relays: a relay taking the schedule over goes on
        # from the stored checks instead of pinging everything at once (a
        # single relay, as ever, checks everything when it starts).
        self._resumes = leads is not None
        self._due: dict[str, float] = {}
        self._latest: dict[str, tuple[str, str | None, HealthRecord]] = {}
        self._task: asyncio.Task[None] | None = None
        self._parallel = asyncio.Semaphore(PARALLEL_CHECKS)

    def __repr__(self) -> str:
        return f"<HealthMonitor scheduled={len(self._due)} tick={self._tick:g}s>"

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loaded = 0.0
        while True:
            try:
                if self._leads():
                    await self.run_due()
                elif time.monotonic() - loaded >= max(self._tick, 1.0):
                    # Another relay pings: its results are what this relay's
                    # metrics show.
                    loaded = time.monotonic()
                    await self.load_latest()
            except Exception as exc:  # the schedule must outlive one bad round
                log.error("health_round_failed", error_type=type(exc).__name__, error=str(exc))
            # A schedule, not synchronisation: the next look at who is due.
            await asyncio.sleep(self._tick)

    # -- the schedule ----------------------------------------------------------
    async def run_due(self) -> None:
        """Ping every connection whose interval has passed since its last check."""
        now = time.monotonic()
        intervals: dict[str, float] = {}
        for row in await self._store.list_connections():
            health = json.loads(row.document).get("http", {}).get("health")
            if isinstance(health, dict):
                intervals[row.id] = float(health.get("interval_seconds") or 300)
        new = [conn_id for conn_id in intervals if conn_id not in self._due]
        if new and self._resumes:
            # Taking over a shared schedule: go on from the stored checks.
            stored = await self._store.health.all()
            for conn_id in new:
                last = stored.get(conn_id)
                if last is not None:
                    since = (utcnow() - last.last_checked_at).total_seconds()
                    self._due[conn_id] = now + max(0.0, intervals[conn_id] - since)
        due: list[str] = []
        for conn_id, interval in intervals.items():
            if self._due.get(conn_id, 0.0) <= now:
                self._due[conn_id] = now + interval
                due.append(conn_id)
        for gone in set(self._due) - set(intervals):
            del self._due[gone]
        outcomes = await asyncio.gather(
            *(self._scheduled_check(conn_id) for conn_id in due), return_exceptions=True
        )
        for conn_id, outcome in zip(due, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.warning("health_check_failed", connection=conn_id, error=type(outcome).__name__)

    async def _scheduled_check(self, conn_id: str) -> None:
        async with self._parallel:
            try:
                handle = await self._connections.handle(conn_id)
            except ConnectionNotFound:
                return
            # The ping's own timeouts bound the API; this bounds the rest (a
            # relay-to-relay hop whose peer stops answering midway).
            bound = handle.connection.http.timeouts.total + PING_GRACE_SECONDS
            began = time.monotonic()
            try:
                async with asyncio.timeout(bound):
                    result = await self._engine.ping(handle)
            except TimeoutError:
                elapsed = (time.monotonic() - began) * 1000
                result = PingResult(False, None, elapsed, f"no answer within {bound:g} s")
            await self.record(conn_id, handle.connection.mode, handle.connection.agent_id, result)

    async def record(
        self, conn_id: str, mode: str, agent_id: str | None, result: PingResult
    ) -> None:
        """Store the outcome of a check of a saved connection."""
        status = "online" if result.ok else "offline"
        error = None if result.ok else result.message
        at = utcnow()
        await self._store.health.record(conn_id, status, at, error)
        self._latest[conn_id] = (mode, agent_id, HealthRecord(status, at, error))
        log.info("health_checked", connection=conn_id, status=status, ms=result.elapsed_ms)

    async def load_latest(self) -> None:
        """Take every connection's latest check from the store (stored by any relay)."""
        records = await self._store.health.all()
        latest: dict[str, tuple[str, str | None, HealthRecord]] = {}
        for row in await self._store.list_connections():
            record = records.get(row.id)
            if record is not None:
                latest[row.id] = (row.mode, row.agent_id, record)
        self._latest = latest
        self._due.clear()  # if this relay leads again, it starts from a fresh schedule

    def forget(self, conn_id: str) -> None:
        self._due.pop(conn_id, None)
        self._latest.pop(conn_id, None)

    # -- metrics ---------------------------------------------------------------
    def collector(self) -> Collector:
        monitor = self

        class _Up(Collector):
            def collect(self) -> Iterator[Any]:
                family = GaugeMetricFamily(
                    "sluice_connection_up",
                    "1 when the connection's last check passed (and its agent is connected).",
                    labels=["connection"],
                )
                for conn_id, (mode, agent_id, record) in monitor._latest.items():
                    up = is_up(mode, agent_id, record, monitor._agent_online)
                    family.add_metric([conn_id], 1.0 if up else 0.0)
                yield family
                leader = GaugeMetricFamily(
                    "sluice_health_leader",
                    "1 on the relay that runs the health schedule (one relay of a cluster).",
                )
                leader.add_metric([], 1.0 if monitor._leads() else 0.0)
                yield leader

        return _Up()
