"""The agent's allowlist: which destinations the relay may reach through it.

Rules look like ``inventory.internal:8443``, ``*.corp.example:443``,
``10.20.0.0/16:*``, ``[fd00::/8]:443`` or ``db-api:80-90``. A name rule
matches the name the relay asked for; an address rule (one IP or a CIDR)
matches the addresses that name resolves to, so the caller resolves and
checks every address before connecting, and DNS cannot smuggle a denied
address in. This module does no I/O: resolving is the caller's job.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from sluice.connect import ConnectProtocolError, normalise_host

__all__ = ["AllowRule", "Allowlist", "IPAddress", "IPNetwork", "Verdict"]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_PORT = re.compile(r"[0-9]{1,5}")
_ALL_PORTS = (1, 65535)
_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")


class Verdict(enum.Enum):
    """What :meth:`Allowlist.check_name` decided about a requested host."""

    ALLOWED = "allowed"
    CHECK_ADDRESSES = "check_addresses"  # resolve, then check_address() each address
    DENIED = "denied"


def _unmap(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _unmap_network(network: IPNetwork) -> IPNetwork:
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.subnet_of(_MAPPED_V4)
    ):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None  # subnet_of() above guarantees it
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


class _RuleError(ValueError):
    """A rule's reason, before parse() adds the rule text to it."""


def _parse_ports(text: str) -> tuple[int, int]:
    if text == "*":
        return _ALL_PORTS
    lo_text, dash, hi_text = text.partition("-")
    lo = _parse_port(lo_text)
    hi = _parse_port(hi_text) if dash else lo
    if lo > hi:
        raise _RuleError(f"port range {lo}-{hi} runs backwards; write {hi}-{lo}")
    return lo, hi


def _parse_port(text: str) -> int:
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise _RuleError(f"invalid port {text!r}: use a port 1-65535, a range like 80-90, or *")
    return int(text)


def _parse_network(text: str, *, bracketed: bool) -> IPNetwork:
    address_text, slash, prefix_text = text.partition("/")
    family = "IPv6" if bracketed else "IPv4"
    if "%" in address_text:
        raise _RuleError("IPv6 zone IDs are not supported")
    try:
        address: IPAddress = (
            ipaddress.IPv6Address(address_text)
            if bracketed
            else ipaddress.IPv4Address(address_text)
        )
    except ValueError:
        raise _RuleError(f"invalid {family} address {address_text!r}") from None
    if not slash:
        return ipaddress.ip_network(address)
    if not prefix_text.isascii() or not prefix_text.isdigit():
        raise _RuleError("invalid CIDR prefix length")
    prefix = int(prefix_text)
    if prefix > address.max_prefixlen:
        raise _RuleError("invalid CIDR prefix length")
    network = ipaddress.ip_network((address, prefix), strict=False)
    if network.network_address != address:
        bracket = "[{}]" if bracketed else "{}"
        raise _RuleError(
            f"CIDR has host bits set; did you mean {bracket.format(network.with_prefixlen)}?"
        )
    return network


@dataclass(frozen=True, slots=True)
class AllowRule:
    """One allowlist entry: a host pattern and an inclusive port range.

    *host* is a lowercase DNS name, ``*.suffix`` for a wildcard, or an IP
    network (a single address is a /32 or /128). IPv4-mapped IPv6 rules are
    stored as IPv4, the way addresses are checked.
    """

    host: str | IPNetwork
    port_lo: int
    port_hi: int

    def __post_init__(self) -> None:
        if not 1 <= self.port_lo <= self.port_hi <= 65535:
            raise ValueError(f"invalid port range {self.port_lo}-{self.port_hi}")

    @classmethod
    def parse(cls, text: str) -> AllowRule:
        """Parse ``HOST:PORTS``; raise :class:`ValueError` naming the rule and the reason."""
        try:
            return cls._parse(text.strip())
        except (_RuleError, ConnectProtocolError) as exc:
            reason = exc.reason if isinstance(exc, ConnectProtocolError) else str(exc)
            raise ValueError(f"{text!r}: {reason}") from None

    @classmethod
    def _parse(cls, text: str) -> AllowRule:
        if not text:
            raise _RuleError("empty rule")
        if text.startswith("["):
            close = text.find("]")
            if close == -1:
                raise _RuleError("unclosed '['")
            host_text, rest = text[1:close], text[close + 1 :]
            if not rest:
                raise _RuleError(f"no port: add ':PORT' or ':*', like '{text}:443'")
            if not rest.startswith(":"):
                raise _RuleError("expected ':PORTS' after ']'")
            network = _unmap_network(_parse_network(host_text, bracketed=True))
            return cls(network, *_parse_ports(rest[1:]))
        if ":" not in text:
            raise _RuleError(f"no port: add ':PORT' or ':*', like '{text}:443'")
        host_text, _, ports_text = text.rpartition(":")
        if ":" in host_text:
            raise _RuleError("an IPv6 address needs brackets, like '[fd00::1]:443'")
        ports = _parse_ports(ports_text)
        if "/" in host_text or _looks_like_ipv4(host_text):
            return cls(_parse_network(host_text, bracketed=False), *ports)
        if host_text == "*":
            raise _RuleError(
                "a bare '*' host is not allowed; to allow every address on purpose,"
                " write '0.0.0.0/0:PORTS' and '[::/0]:PORTS'"
            )
        if "*" in host_text:
            if not host_text.startswith("*.") or "*" in host_text[2:]:
                raise _RuleError("a wildcard is '*.' and a domain, like '*.corp.example:443'")
            suffix = normalise_host(host_text[2:])
            if ":" in suffix or _looks_like_ipv4(suffix):
                raise _RuleError("a wildcard needs a domain name after '*.'")
            return cls(f"*.{suffix}", *ports)
        return cls(normalise_host(host_text), *ports)

    def __str__(self) -> str:
        host = self.host
        if isinstance(host, ipaddress.IPv4Network):
            host_text = str(host.network_address) if host.prefixlen == 32 else str(host)
        elif isinstance(host, ipaddress.IPv6Network):
            host_text = f"[{host.network_address}]" if host.prefixlen == 128 else f"[{host}]"
        else:
            host_text = host
        if (self.port_lo, self.port_hi) == _ALL_PORTS:
            ports = "*"
        elif self.port_lo == self.port_hi:
            ports = str(self.port_lo)
        else:
            ports = f"{self.port_lo}-{self.port_hi}"
        return f"{host_text}:{ports}"

    @property
    def is_address_rule(self) -> bool:
        """True for an IP or CIDR rule, which matches resolved addresses."""
        return not isinstance(self.host, str)

    def covers_port(self, port: int) -> bool:
        return self.port_lo <= port <= self.port_hi

    def matches_name(self, name: str, port: int) -> bool:
        """Whether this name rule allows *name* (already normalised) on *port*."""
        host = self.host
        if not isinstance(host, str) or not self.covers_port(port):
            return False
        if host.startswith("*."):
            return name.endswith(host[1:]) and len(name) > len(host) - 1
        return name == host

    def matches_address(self, address: IPAddress, port: int) -> bool:
        """Whether this address rule allows *address* on *port*."""
        host = self.host
        if isinstance(host, str) or not self.covers_port(port):
            return False
        address = _unmap(address)
        return address.version == host.version and address in host


def _looks_like_ipv4(text: str) -> bool:
    # Digits and dots only: meant as an IPv4 address, so report it as one.
    return bool(text) and all(ch in "0123456789." for ch in text)


class Allowlist:
    """An ordered set of rules; the first rule that matches is the one reported.

    An empty allowlist denies everything.
    """

    __slots__ = ("_address_rules", "_name_rules", "_rules")

    def __init__(self, rules: Sequence[AllowRule]) -> None:
        self._rules = tuple(rules)
        self._name_rules = tuple(rule for rule in self._rules if not rule.is_address_rule)
        self._address_rules = tuple(rule for rule in self._rules if rule.is_address_rule)

    @classmethod
    def parse(cls, texts: Sequence[str]) -> Allowlist:
        """Parse every rule; the ValueError names each rule that is wrong."""
        if isinstance(texts, str):
            raise TypeError("Allowlist.parse() takes a sequence of rules, not one string")
        rules: list[AllowRule] = []
        errors: list[str] = []
        for text in texts:
            try:
                rules.append(AllowRule.parse(text))
            except ValueError as exc:
                errors.append(str(exc))
        if errors:
            raise ValueError("invalid allowlist rule " + "; ".join(errors))
        return cls(rules)

    def check_name(self, host: str, port: int) -> tuple[Verdict, AllowRule | None]:
        """Decide what to do when the relay asks for *host* on *port*.

        ALLOWED (with the matching rule) when a name rule matches, or when
        *host* is an IP literal an address rule covers. CHECK_ADDRESSES when
        *host* is a name no name rule matches but some address rule covers
        *port*: resolve it and call :meth:`check_address` on every address.
        DENIED otherwise, including for a host that is not a valid name or
        address, so nothing is resolved for a request that cannot pass.
        """
        try:
            name = normalise_host(host)
        except ConnectProtocolError:
            return Verdict.DENIED, None
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            rule = self.check_address(address, port)
            return (Verdict.ALLOWED, rule) if rule is not None else (Verdict.DENIED, None)
        for rule in self._name_rules:
            if rule.matches_name(name, port):
                return Verdict.ALLOWED, rule
        if any(rule.covers_port(port) for rule in self._address_rules):
            return Verdict.CHECK_ADDRESSES, None
        return Verdict.DENIED, None

    def check_address(self, address: IPAddress, port: int) -> AllowRule | None:
        """Return the first address rule that allows *address* on *port*, or None.

        Call this for every address a name resolved to, and connect only to
        addresses it allows.
        """
        for rule in self._address_rules:
            if rule.matches_address(address, port):
                return rule
        return None

    def allows_for_name(self, address: IPAddress, port: int) -> bool:
        """Whether a name a *name rule* allowed may be reached at *address*.

        Name rules trust DNS, and whoever answers for a zone could point one
        of its names at the agent host itself or at a cloud metadata service
        (169.254.169.254). So a loopback, link-local or unspecified answer is
        refused unless an address rule names it.
        """
        address = _unmap(address)
        if not (address.is_loopback or address.is_link_local or address.is_unspecified):
            return True
        return self.check_address(address, port) is not None

    def __len__(self) -> int:
        return len(self._rules)

    def __iter__(self) -> Iterator[AllowRule]:
        return iter(self._rules)

    def __repr__(self) -> str:
        shown = ", ".join(str(rule) for rule in self._rules[:8])
        more = f", ... {len(self._rules) - 8} more" if len(self._rules) > 8 else ""
        return f"<Allowlist [{shown}{more}]>"
