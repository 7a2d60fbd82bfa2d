"""The agent's tunnel state: explicit, and changed only by synchronous transitions."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class TunnelState(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    BACKING_OFF = "backing_off"
    DRAINING = "draining"
    CLOSED = "closed"


_ALLOWED: dict[TunnelState, frozenset[TunnelState]] = {
    TunnelState.CONNECTING: frozenset(
        {TunnelState.UP, TunnelState.BACKING_OFF, TunnelState.CLOSED}
    ),
    TunnelState.UP: frozenset(
        {TunnelState.BACKING_OFF, TunnelState.CONNECTING, TunnelState.DRAINING, TunnelState.CLOSED}
    ),
    TunnelState.BACKING_OFF: frozenset({TunnelState.CONNECTING, TunnelState.CLOSED}),
    TunnelState.DRAINING: frozenset({TunnelState.CLOSED}),
    TunnelState.CLOSED: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


class TunnelStatus:
    """Where the tunnel is, since when, and how often it reconnected."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.state = TunnelState.CONNECTING
        self.since = clock()
        self.reconnects = 0
        self.relay: str | None = None
        self.last_error: str | None = None
        self._was_up = False
        self._listeners: list[Callable[[TunnelState], None]] = []

    def __repr__(self) -> str:
        return f"<TunnelStatus {self.state.value} relay={self.relay} reconnects={self.reconnects}>"

    def subscribe(self, callback: Callable[[TunnelState], None]) -> None:
        self._listeners.append(callback)

    def to(self, new: TunnelState) -> None:
        """Move to *new*; raise InvalidTransition if the state machine forbids it."""
        if new is self.state:
            return
        if new not in _ALLOWED[self.state]:
            raise InvalidTransition(f"{self.state.value} -> {new.value}")
        if new is TunnelState.UP:
            if self._was_up:
                self.reconnects += 1
            self._was_up = True
        self.state = new
        self.since = self._clock()
        for callback in self._listeners:
            callback(new)

    @property
    def seconds_in_state(self) -> float:
        return self._clock() - self.since
