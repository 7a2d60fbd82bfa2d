"""A token bucket: at most *rate* events per second, bursts up to *burst*."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self._tokens = self.burst
        self._clock = clock
        self._last = clock()

    def __repr__(self) -> str:
        return f"<TokenBucket rate={self.rate:g}/s burst={self.burst:g} tokens={self._tokens:.1f}>"

    def take(self) -> bool:
        """Spend one token if there is one; never waits."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
