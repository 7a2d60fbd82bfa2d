"""Cloud mode: straight to the API, but never into the relay's own networks.

Names are resolved here and every address is checked before aiohttp may
connect to it (so DNS cannot smuggle in 127.0.0.1 or 169.254.169.254), and
IP literals are checked before the request is sent. Private, loopback,
link-local and other non-global destinations are refused unless the relay is
configured with allow_private_destinations.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from server.errors import RelayError, UpstreamConnectFailed
from server.tunnel.http1 import Http1Stream
from server.tunnel.http_client import SKIP_AUTO_HEADERS
from server.tunnel.stream_pool import Carrier, StreamPool


class DestinationForbidden(RelayError):
    type = "destination_forbidden"
    status = 403
    title = "Cloud connections may not reach private or local addresses"


# IPv6 forms that carry an IPv4 address in their last 32 bits: NAT64's
# well-known prefix (RFC 6052) and IPv4-compatible addresses (deprecated, but
# still routed by some stacks). Behind a NAT64 gateway 64:ff9b::a00:1 is 10.0.0.1.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# Local-use NAT64 prefixes (RFC 8215) may embed the IPv4 address at several
# offsets, so it cannot be read back reliably: refused outright.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms
    that reach IPv4 (mapped, NAT64, 6to4, IPv4-compatible)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: str) -> bool:
    """Whether cloud mode may connect to *address*: a global unicast address,
    judged by the IPv4 address it carries when it carries one."""
    ip: Any = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _LOCAL_NAT64:
            return False
        ip = _embedded_ipv4(ip) or ip
    return bool(ip.is_global) and not ip.is_multicast


def _forbidden(host: str, address: str) -> DestinationForbidden:
    shown = host if host == address else f"{host} ({address})"
    return DestinationForbidden(
        f"{shown} is not a public address; cloud mode refuses loopback, link-local and "
        "private destinations (use on-premise mode with an agent, or set the relay's "
        "allow_private_destinations)"
    )


class PublicOnlyResolver(AbstractResolver):
    """Resolves with the system resolver, then refuses non-public results."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if not is_public(result["host"]):
                raise _forbidden(host, result["host"])
        return results

    async def close(self) -> None:
        await self._inner.close()


def check_literal(url: URL) -> None:
    """IP-literal hosts skip the resolver in aiohttp, so check them here."""
    host = url.raw_host or ""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if host.lower() in ("localhost",) or host.lower().endswith(".localhost"):
            raise _forbidden(host, host) from None
        return
    if not is_public(host.strip("[]")):
        raise _forbidden(host, host.strip("[]"))


class _Direct:
    """A TCP connection never drains."""

    draining = False


_DIRECT = _Direct()


class DirectDialer:
    """Streams as TCP connections from the relay, to public addresses only
    (unless *allow_private*); every resolved address is checked before use."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    def __repr__(self) -> str:
        return f"<DirectDialer allow_private={self.allow_private}>"

    def describe(self) -> str:
        return "from the relay"

    async def dial(
        self,
        stream: Http1Stream,
        host: str,
        port: int | None,
        tls: ssl.SSLContext | None,
        *,
        early: bool = False,  # a TCP connect has no answer to send ahead of
        limit: float | None = None,  # the pool bounds the connect
    ) -> Carrier:
        loop = asyncio.get_running_loop()
        port = port or (443 if tls is not None else 80)
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise UpstreamConnectFailed(f"cannot resolve {host}: {exc.strerror}") from None
        if not self.allow_private:
            for info in infos:
                if not is_public(str(info[4][0])):
                    raise _forbidden(host, str(info[4][0]))
        failure: OSError | None = None
        for family, _type, proto, _name, address in infos:
            try:
                await loop.create_connection(
                    lambda: stream,
                    str(address[0]),
                    int(address[1]),
                    family=family,
                    proto=proto,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
            except ssl.SSLError:
                raise
            except OSError as exc:
                failure = exc
                continue
            return _DIRECT
        reason = failure.strerror if failure is not None else "no address"
        raise UpstreamConnectFailed(f"cannot connect to {host}: {reason}")


class CloudHTTP:
    """How cloud-mode connections reach their APIs: kept-alive HTTP/1.1
    streams (the proxy's path) and an aiohttp session (CONNECT only)."""

    def __init__(self, *, allow_private: bool, keepalive_timeout: float = 15.0) -> None:
        self.allow_private = allow_private
        self.pool = StreamPool(
            DirectDialer(allow_private=allow_private),
            connect_timeout=10.0,
            keepalive_timeout=keepalive_timeout,
        )
        connector = aiohttp.TCPConnector(
            resolver=None if allow_private else PublicOnlyResolver(),
            keepalive_timeout=keepalive_timeout,
            limit=0,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=SKIP_AUTO_HEADERS,
        )

    def __repr__(self) -> str:
        return f"<CloudHTTP allow_private={self.allow_private}>"

    def check(self, url: URL) -> None:
        if not self.allow_private:
            check_literal(url)

    async def close(self) -> None:
        self.pool.close_idle()
        await self.session.close()
