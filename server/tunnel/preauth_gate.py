"""Bounds on SSH connections that have not logged in yet.

Each one holds a descriptor and handshake state until it logs in or
login_timeout ends it; without a bound, a few hundred idle connections used
up the relay's descriptors and blocked agents and the API alike.
"""

from __future__ import annotations

from collections import Counter


class PreAuthGate:
    """Admits at most *max_total* unauthenticated connections, *max_per_address*
    of them from one source address."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self._max_total = max_total
        self._max_per_address = max_per_address
        self._by_address: Counter[str] = Counter()
        self._total = 0

    def __repr__(self) -> str:
        return f"<PreAuthGate waiting={self._total}/{self._max_total}>"

    def admit(self, address: str) -> str | None:
        """Take a place for *address*; None when admitted, else why not."""
        if self._total >= self._max_total:
            return f"{self._total} connections are logging in already (max_preauth_ssh)"
        if self._by_address[address] >= self._max_per_address:
            return (
                f"{self._by_address[address]} connections from this address are logging in "
                "already (max_preauth_ssh_per_address)"
            )
        self._by_address[address] += 1
        self._total += 1
        return None

    def release(self, address: str) -> None:
        """The connection logged in or ended: its place is free."""
        if self._by_address[address] <= 1:
            del self._by_address[address]
        else:
            self._by_address[address] -= 1
        self._total -= 1
