"""A connection's concurrency cap: at most N requests in flight to its API.

Requests over the cap wait in arrival order (FIFO) for a slot, up to the
connection's ``http.queue_timeout_seconds``; then they get the problem
``concurrency_limited``. A slot is held from before the request is sent
until its answer has gone to the caller (or failed).

In a cluster each relay holds a share of the cap (see docs/TRAFFIC.md):
``share`` turns the configured level into this relay's part of it. A
single relay's share is the whole level.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from server.errors import RelayError


class ConcurrencyLimited(RelayError):
    type = "concurrency_limited"
    status = 503
    title = "The connection has as many requests in flight as its concurrency_level allows"


class SlotMetrics(Protocol):
    """What the cap reports (``server.web.metrics.RelayMetrics``)."""

    def slots(self, conn_id: str, in_flight: int, queued: int) -> None: ...

    def queue_wait(self, conn_id: str, seconds: float) -> None: ...


class Slots:
    """The FIFO slots of one connection. Its transitions never await."""

    def __init__(self, cap: int, level: int | None = None) -> None:
        self.cap = cap
        self.level = cap if level is None else level  # the configured, cluster-wide level
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        return f"<Slots {self.in_flight}/{self.cap} queued={self.queued}>"

    @property
    def queued(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    def try_take(self) -> bool:
        """Take a slot if one is free and nobody queues before us."""
        if self.in_flight < self.cap and not self.queued:
            self.in_flight += 1
            return True
        return False

    def enqueue(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def leave(self, waiter: asyncio.Future[None]) -> None:
        """A waiter gave up (timeout, caller gone); a slot it was handed goes on."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        if waiter.done() and not waiter.cancelled():
            self.release()

    def release(self) -> None:
        """Give a slot back; the oldest waiter gets it, if any and the cap allows."""
        self.in_flight -= 1
        self._hand_out()

    def resize(self, cap: int) -> None:
        """A new cap (an edit, or the cluster's shares rebalanced): a larger one
        hands the freed room to waiters at once; a smaller one lets what is in
        flight finish and hands out nothing until it is under the new cap."""
        self.cap = cap
        self._hand_out()

    def _hand_out(self) -> None:
        while self._waiters and self.in_flight < self.cap:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)


class ConcurrencyLimits:
    """Every connection's slots on this relay."""

    def __init__(self, metrics: SlotMetrics, share: Callable[[int], int] | None = None) -> None:
        self._metrics = metrics
        self._share = share or (lambda level: level)
        self._slots: dict[str, Slots] = {}

    def __repr__(self) -> str:
        return f"<ConcurrencyLimits connections={len(self._slots)}>"

    def state(self, conn_id: str) -> Slots | None:
        return self._slots.get(conn_id)

    def share_of(self, level: int) -> int:
        """This relay's part of *level*: 0 when a cluster has more relays than
        slots and this one holds none (it then forwards, see server.cluster.shares)."""
        return self._share(level)

    def rebalance(self) -> None:
        """Called when the shares changed (relays joined, left or died): every
        connection's cap follows at once, and queued requests get freed room."""
        for conn_id, slots in list(self._slots.items()):
            slots.resize(max(1, self._share(slots.level)))
            self._report(conn_id, slots)

    @contextlib.asynccontextmanager
    async def slot(
        self, conn_id: str | None, level: int | None, queue_timeout: float
    ) -> AsyncIterator[None]:
        """Hold one of *conn_id*'s slots for the body of the ``async with``."""
        if conn_id is None or level is None:
            yield
            return
        slots = self._slots.get(conn_id)
        if slots is None:
            slots = self._slots[conn_id] = Slots(max(1, self._share(level)), level)
        if slots.level != level:  # an edit takes effect at once
            slots.level = level
            slots.resize(max(1, self._share(level)))
        if not slots.try_take():
            began = time.monotonic()
            waiter = slots.enqueue()
            self._report(conn_id, slots)
            try:
                async with asyncio.timeout(queue_timeout):
                    await waiter
            except TimeoutError:
                slots.leave(waiter)
                self._report(conn_id, slots)
                raise ConcurrencyLimited(
                    f"waited {queue_timeout:g} s for one of the connection's "
                    f"{level} slots (http.concurrency_level); raise it or "
                    "http.queue_timeout_seconds, or send fewer requests at once"
                ) from None
            except BaseException:
                slots.leave(waiter)
                self._report(conn_id, slots)
                raise
            self._metrics.queue_wait(conn_id, time.monotonic() - began)
        self._report(conn_id, slots)
        try:
            yield
        finally:
            slots.release()
            self._report(conn_id, slots)
            if slots.in_flight == 0 and not slots.queued:
                self._slots.pop(conn_id, None)

    def _report(self, conn_id: str, slots: Slots) -> None:
        self._metrics.slots(conn_id, slots.in_flight, slots.queued)
