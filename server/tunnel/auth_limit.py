"""Failed-login accounting per source address, with a temporary ban."""

from __future__ import annotations

import time
from collections.abc import Callable


class FailedLoginLimiter:
    """Bans an address for *ban_seconds* after *max_failures* failures in that time."""

    def __init__(
        self,
        max_failures: int,
        ban_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._ban = ban_seconds
        self._clock = clock
        self._failures: dict[str, list[float]] = {}
        self._banned_until: dict[str, float] = {}

    def __repr__(self) -> str:
        tracked, banned = len(self._failures), len(self._banned_until)
        return f"<FailedLoginLimiter tracked={tracked} banned={banned}>"

    def is_banned(self, address: str) -> bool:
        until = self._banned_until.get(address)
        if until is None:
            return False
        if self._clock() >= until:
            del self._banned_until[address]
            return False
        return True

    def record_failure(self, address: str) -> bool:
        """Count a failure; True when this one got the address banned."""
        now = self._clock()
        recent = [t for t in self._failures.get(address, ()) if now - t < self._ban]
        recent.append(now)
        self._failures[address] = recent
        self._prune(now)
        if len(recent) >= self._max:
            self._banned_until[address] = now + self._ban
            del self._failures[address]
            return True
        return False

    def record_success(self, address: str) -> None:
        self._failures.pop(address, None)

    def _prune(self, now: float) -> None:
        # Keep memory bounded under a spray of addresses.
        if len(self._failures) > 10_000:
            for addr in [a for a, ts in self._failures.items() if now - ts[-1] >= self._ban]:
                del self._failures[addr]
