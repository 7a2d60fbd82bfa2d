"""A connection's rate-limit gate: one limited answer holds back every
request of the connection until the deadline it named, then lets one
request out first (the probe). In a cluster the deadline and the probe are
shared through a :class:`SharedLimits` (``server.cluster.shared_limits``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from server.connections.model import RateLimit


class SharedLimits(Protocol):
    """The cluster's side of the gates (``server.cluster.shared_limits``).

    A single relay has none. The write methods return at once (the write
    happens in the background); ``take_probe`` asks the database.
    """

    def limited(self, key: str, until_wall: float) -> None:
        """Called when an answer here closed *key*'s gate until *until_wall* (time.time())."""

    def cleared(self, key: str) -> None:
        """Called when this relay's probe came back not limited."""

    def reset(self, key: str) -> None:
        """Called when the connection's limit is forgotten (deleted, rate_limit edited)."""

    def released(self, key: str) -> None:
        """Called when this relay's probe failed without an answer."""

    async def take_probe(self, key: str) -> float | None:
        """May this relay's probe go? None: yes; else the wall time to ask again."""


@dataclass
class LimitGate:
    """One connection's "limited until" deadline and its probe.

    Transitions never await; :meth:`pass_through` is the only waiting part.
    """

    rule: RateLimit | None = None  # None: opened by another relay, adopted by the next request
    until: float = 0.0  # time.monotonic()
    needs_probe: bool = False
    probing: asyncio.Future[None] | None = None
    waiting: int = 0
    users: int = 0  # requests between their start and their answer
    own_until: float = 0.0  # the latest deadline an answer on this relay named
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def idle(self) -> bool:
        """Nothing to remember: open, no probe owed, nobody using it."""
        return (
            not self.needs_probe
            and self.probing is None
            and self.users == 0
            and self.until <= time.monotonic()
        )

    def limited(self, seconds: float, *, here: bool = True) -> None:
        """An answer said "limited" (*here*: on this relay, not another one of
        the cluster): nobody goes before now + *seconds*."""
        self.until = max(self.until, time.monotonic() + seconds)
        if here:
            self.own_until = max(self.own_until, self.until)
        self.needs_probe = True
        self._wake()

    def probed(self) -> None:
        """The probe came back not limited: everyone may go."""
        self.needs_probe = False
        self._wake()

    def opened(self) -> None:
        """The limit is over (another relay's probe passed, or it was reset)."""
        self.until = min(self.until, time.monotonic())
        self.own_until = 0.0
        self.needs_probe = False
        self._wake()

    def opened_elsewhere(self) -> bool:
        """The cluster holds no limit: open, unless an answer here named a
        deadline still ahead (the news is older than that answer, whose own
        write is on its way). True when it opened."""
        if self.own_until > time.monotonic():
            return False
        self.opened()
        return True

    def hold(self, seconds: float) -> None:
        """Our probe may not go yet (another relay's is out): look again in *seconds*."""
        self.until = max(self.until, time.monotonic() + seconds)
        self.end_probe()

    def end_probe(self) -> None:
        if self.probing is not None and not self.probing.done():
            self.probing.set_result(None)
        self.probing = None
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def pass_through(self) -> bool:
        """Wait until a request may go to the API; True when it goes as the probe
        (it must then call :meth:`probed` or :meth:`limited`, and :meth:`end_probe`)."""
        self.waiting += 1
        try:
            while True:
                now = time.monotonic()
                changed = self._changed
                if self.until > now:
                    # A deadline is a time, not an event: wait for it, or for
                    # a new one (another relay of the cluster, a later limit).
                    try:
                        async with asyncio.timeout(self.until - now):
                            await changed.wait()
                    except TimeoutError:
                        pass
                    continue
                if not self.needs_probe:
                    return False
                if self.probing is None:
                    self.probing = asyncio.get_running_loop().create_future()
                    return True
                await changed.wait()
        finally:
            self.waiting -= 1
