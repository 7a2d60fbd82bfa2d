"""Failed-login accounting per source address and per network, with a temporary ban."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The networks failures are also counted in: one attacker usually holds a
# whole IPv4 /24 or IPv6 /64, and rotating addresses inside it must not
# reset the count.
IPV4_PREFIX = 24
IPV6_PREFIX = 64


def network_of(address: str) -> Network | None:
    """The /24 (IPv4) or /64 (IPv6) *address* belongs to; None if it is no IP address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return ipaddress.ip_network(f"{ip}/{prefix}", strict=False)


class FailedLoginLimiter:
    """Bans an address for *ban_seconds* after *max_failures* failures in that
    time, and its whole /24 or /64 after *max_network_failures* failures from
    anywhere in it, unless that network lies inside one of *exempt_networks*
    (the operator's own NAT, whose agents must not be locked out together).
    """

    def __init__(
        self,
        max_failures: int,
        ban_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_network_failures: int | None = None,
        exempt_networks: Iterable[Network] = (),
    ) -> None:
        self._max = max_failures
        self._max_network = max_network_failures
        self._exempt = tuple(exempt_networks)
        self._ban = ban_seconds
        self._clock = clock
        self._failures: dict[str, list[float]] = {}
        self._banned_until: dict[str, float] = {}

    def __repr__(self) -> str:
        tracked, banned = len(self._failures), len(self._banned_until)
        return f"<FailedLoginLimiter tracked={tracked} banned={banned}>"

    def _keys(self, address: str) -> list[tuple[str, int]]:
        """What a failure from *address* counts against, with each one's limit."""
        keys = [(address, self._max)]
        network = network_of(address)
        if self._max_network is not None and network is not None and not self._exempted(network):
            keys.append((f"net:{network}", self._max_network))
        return keys

    def _exempted(self, network: Network) -> bool:
        first, last = network.network_address, network.broadcast_address
        return any(first in exempt and last in exempt for exempt in self._exempt)

    def is_banned(self, address: str) -> bool:
        return any(self._banned(key) for key, _ in self._keys(address))

    def _banned(self, key: str) -> bool:
        until = self._banned_until.get(key)
        if until is None:
            return False
        if self._clock() >= until:
            del self._banned_until[key]
            return False
        return True

    def record_failure(self, address: str) -> bool:
        """Count a failure; True when this one got the address (or its network) banned."""
        now = self._clock()
        banned = False
        for key, limit in self._keys(address):
            recent = [t for t in self._failures.get(key, ()) if now - t < self._ban]
            recent.append(now)
            self._failures[key] = recent
            if len(recent) >= limit:
                self._banned_until[key] = now + self._ban
                del self._failures[key]
                banned = True
        self._prune(now)
        return banned

    def record_success(self, address: str) -> None:
        # The address's own count only: one valid login inside a network must
        # not wipe the failures of everyone else in it.
        self._failures.pop(address, None)

    def _prune(self, now: float) -> None:
        # Keep memory bounded under a spray of addresses.
        if len(self._failures) > 10_000:
            for key in [k for k, ts in self._failures.items() if now - ts[-1] >= self._ban]:
                del self._failures[key]
