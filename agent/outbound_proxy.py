"""Dialling the relay through an HTTP proxy with CONNECT (a corporate egress proxy).

The proxy comes from the agent's ``proxy`` setting or, when that is absent,
from ``https_proxy`` / ``all_proxy`` in the environment, less the hosts that
``no_proxy`` exempts. :func:`connect_via_proxy` opens the TCP connection,
asks the proxy for a tunnel and returns the bare socket, which asyncssh then
runs SSH over (``asyncssh.connect(..., sock=sock)``); the proxy only ever sees
encrypted SSH bytes.

The proxy password never appears in a repr, an error message or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import structlog

from agent.errors import RelayUnreachable

__all__ = [
    "DEFAULT_PORT",
    "ENV_NO_PROXY_VARS",
    "ENV_PROXY_VARS",
    "MAX_HEADER_LINES",
    "MAX_HEAD_BYTES",
    "SETTING_SOURCE",
    "ProxyAuthRejected",
    "ProxyConfig",
    "ProxyError",
    "ProxyRefused",
    "ProxyResponse",
    "connect_via_proxy",
    "no_proxy_matches",
    "parse_response_head",
    "proxy_for",
]

log = structlog.get_logger("sluice.agent.outbound_proxy")

DEFAULT_PORT = 80
"""The port of a proxy URL that names none (the http:// default)."""

ENV_PROXY_VARS = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
"""Consulted in this order when the setting is absent; lowercase wins, as in curl.
HTTP_PROXY is deliberately not read: SSH through CONNECT is not plain HTTP."""

ENV_NO_PROXY_VARS = ("no_proxy", "NO_PROXY")

MAX_HEAD_BYTES = 8192
"""Longest response head accepted from the proxy, final CRLF CRLF included."""

MAX_HEADER_LINES = 64

SETTING_SOURCE = "the proxy setting"
"""How messages name the agent's own setting; environment proxies name their variable."""

_HEAD_END = b"\r\n\r\n"
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9]{2})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
_SCHEME = re.compile(r"(?i:https?|socks4a?|socks5h?)://")  # only well-known ones are shown
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
_MAX_REASON_CHARS = 80


class ProxyError(RelayUnreachable):
    """The proxy could not be reached, or would not open a tunnel to the relay.

    *status* is the proxy's HTTP status when it answered, else None.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProxyAuthRejected(ProxyError):
    """The proxy wants other credentials (407, or 401 as tinyproxy sends)."""

    needs_operator = True


class ProxyRefused(ProxyError):
    """The proxy's rules forbid a tunnel to the relay (403)."""

    needs_operator = True


@dataclass(frozen=True)
class ProxyConfig:
    """An HTTP proxy to reach the relay through; *source* names where it came from."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    source: str = field(default=SETTING_SOURCE, compare=False)

    def __post_init__(self) -> None:
        if not self.host or any(c.isspace() or not c.isprintable() for c in self.host):
            raise ValueError(f"{self.source}: invalid proxy host {self.host!r}")
        if isinstance(self.port, bool) or not 1 <= self.port <= 65535:
            raise ValueError(f"{self.source}: proxy port must be from 1 to 65535")
        if self.username is not None and ":" in self.username:
            raise ValueError(f"{self.source}: a proxy user name cannot contain ':'")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = "" if self.username is None else f"{self.username}@"
        return f"http://{user}{host}:{self.port}"

    def __repr__(self) -> str:
        secret = None if self.password is None else "'***'"
        return (
            f"ProxyConfig(host={self.host!r}, port={self.port}, username={self.username!r}, "
            f"password={secret}, source={self.source!r})"
        )

    @classmethod
    def parse(cls, url: str, *, source: str = SETTING_SOURCE) -> ProxyConfig:
        """Parse ``http://[user[:password]@]host[:port]``; user and password are
        percent-decoded. A URL without a scheme is taken as http://, the way
        curl reads ``https_proxy=proxy:3128``. Raises ValueError (naming *source*
        unless it is the setting, which pydantic names) that shows the URL with
        its user information hidden."""
        text = url.strip()
        shown = _redact(text)
        fail = "" if source == SETTING_SOURCE else f"{source}: "
        if not text:
            raise ValueError(f"{fail}empty proxy URL; write http://host:port")
        if any(c.isspace() or not c.isprintable() for c in text):
            raise ValueError(
                f"{fail}proxy URL {shown} contains whitespace or control characters "
                "(percent-encode them in the user or password)"
            )
        if "://" not in text:
            text = "http://" + text
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            # Never quote urllib's reason: for a URL with an unescaped '/', '?' or
            # '#' in the password it quotes the password as the "port".
            raise ValueError(
                f"{fail}proxy URL {shown} is not valid: write http://user:password@host:port "
                "with a port from 1 to 65535, and percent-encode '/', '?', '#' and '@' in "
                "the user or password"
            ) from None
        scheme = parts.scheme.lower()
        if scheme == "https":
            raise ValueError(
                f"{fail}{shown}: https:// proxies (TLS to the proxy) are not supported; "
                "give the proxy's plain http:// address (the SSH inside stays encrypted)"
            )
        if scheme.startswith("socks"):
            raise ValueError(
                f"{fail}{shown}: SOCKS proxies are not supported; give an HTTP proxy "
                "that allows CONNECT, like http://proxy.example:3128"
            )
        if scheme != "http":
            raise ValueError(f"{fail}{shown}: unsupported scheme; write http://host:port")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(
                f"{fail}{shown}: a proxy URL has no path; write "
                "http://host:port and percent-encode '/', '?', '#' and '@' in the user or password"
            )
        if not parts.hostname:
            raise ValueError(f"{fail}{shown}: missing proxy host")
        if port == 0:
            raise ValueError(f"{fail}{shown}: proxy port must be from 1 to 65535")
        username = None if parts.username is None else unquote(parts.username)
        password = None if parts.password is None else unquote(parts.password)
        return cls(
            host=parts.hostname,
            port=port or DEFAULT_PORT,
            username=username,
            password=password,
            source=source,
        )

    def authorization(self) -> str | None:
        """The Proxy-Authorization value (Basic, UTF-8), or None without a user."""
        if self.username is None:
            return None
        pair = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def _redact(url: str) -> str:
    """*url* with everything before its last '@' but the scheme hidden: a
    password may hold unescaped '@', ':', '/' or even '://'."""
    if "@" not in url:
        return url
    scheme = _SCHEME.match(url)
    return f"{scheme.group() if scheme else ''}***@{url.rpartition('@')[2]}"


def proxy_for(
    relay_host: str, relay_port: int, setting: str | None, environ: Mapping[str, str]
) -> ProxyConfig | None:
    """The proxy to reach *relay_host*:*relay_port* through, or None to dial directly.

    A *setting* wins; an empty one means "direct", whatever the environment
    says. Without one, the first non-empty of ``ENV_PROXY_VARS`` is used unless
    ``no_proxy``/``NO_PROXY`` exempts the relay. Raises ValueError for a bad URL.
    """
    if setting is not None:
        return ProxyConfig.parse(setting) if setting.strip() else None
    found = next(((n, environ[n]) for n in ENV_PROXY_VARS if environ.get(n, "").strip()), None)
    if found is None:
        return None
    no_proxy = next((environ[n] for n in ENV_NO_PROXY_VARS if environ.get(n, "").strip()), "")
    if no_proxy_matches(no_proxy, relay_host, relay_port):
        return None
    return ProxyConfig.parse(found[1], source=found[0])


def no_proxy_matches(no_proxy: str, host: str, port: int) -> bool:
    """Whether a NO_PROXY list exempts *host*:*port*.

    Entries are separated by commas or spaces: ``*`` (everything), a name
    (matching itself and its subdomains; a leading ``.`` or ``*.`` changes
    nothing), an IP address or CIDR (matching IP-literal hosts only: names are
    not resolved), each with an optional ``:port`` (IPv6 in brackets then).
    Entries that are none of these are ignored, since other programs share
    the variable.
    """
    name = host.strip().lower().strip("[]").rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name)
    except ValueError:
        address = None
    for entry in re.split(r"[\s,]+", no_proxy.strip().lower()):
        if entry == "*":
            return True
        parsed = _parse_no_proxy_entry(entry)
        if parsed is None:
            continue
        pattern, entry_port = parsed
        if entry_port is not None and entry_port != port:
            continue
        if isinstance(pattern, str):
            if address is None and (name == pattern or name.endswith("." + pattern)):
                return True
        elif address is not None and address.version == pattern.version and address in pattern:
            return True
    return False


def _parse_no_proxy_entry(
    entry: str,
) -> tuple[str | ipaddress.IPv4Network | ipaddress.IPv6Network, int | None] | None:
    port_text = ""
    if entry.startswith("["):
        inner, close, rest = entry[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            return None
        body, port_text = inner, rest[1:]
    elif entry.count(":") == 1:
        body, _, port_text = entry.partition(":")
    else:
        body = entry  # a name, IPv4, or a bare IPv6 address or CIDR
    port: int | None = None
    if port_text or entry.endswith(":"):
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            return None
        port = int(port_text)
    try:
        return ipaddress.ip_network(body, strict=False), port
    except ValueError:
        pass
    if body.startswith("*."):
        body = body[1:]
    body = body.lstrip(".").rstrip(".")
    if not body or not _HOST_NAME.fullmatch(body):
        return None
    return body, port


@dataclass(frozen=True, slots=True)
class ProxyResponse:
    """The head of the proxy's answer to CONNECT: status, reason, header fields."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]


def parse_response_head(head: bytes) -> ProxyResponse:
    """Parse a response head up to and including its CRLF CRLF, strictly.

    Raises ValueError for anything but ``HTTP/1.x NNN reason`` and
    ``name: value`` lines ended by CRLF, within ``MAX_HEAD_BYTES``.
    """
    if len(head) > MAX_HEAD_BYTES:
        raise ValueError(f"response head is over {MAX_HEAD_BYTES} bytes")
    if not head.endswith(_HEAD_END):
        raise ValueError("response head does not end with CRLF CRLF")
    status_line, *lines = head[: -len(_HEAD_END)].split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:64]!r}")
    if len(lines) > MAX_HEADER_LINES:
        raise ValueError(f"more than {MAX_HEADER_LINES} header lines")
    headers = []
    for line in lines:
        header = _HEADER_LINE.fullmatch(line)
        if header is None:  # also a bare CR or LF, or an obsolete folded line
            raise ValueError(f"malformed header line: {line[:64]!r}")
        name, value = header.groups()
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    reason = (match.group(2) or b"").decode("latin-1").strip()
    return ProxyResponse(int(match.group(1)), reason, tuple(headers))


def _authority(host: str, port: int) -> str:
    name = host.strip("[]")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        if not _HOST_NAME.fullmatch(name):
            raise ProxyError(
                f"cannot ask the proxy for relay host {host!r}: write international names "
                "in their xn-- form"
            ) from None
        return f"{name}:{port}"
    return f"[{address.compressed}]:{port}" if address.version == 6 else f"{address}:{port}"


def _request(proxy: ProxyConfig, authority: str) -> bytes:
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    credentials = proxy.authorization()
    if credentials is not None:
        lines.append(f"Proxy-Authorization: {credentials}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


async def connect_via_proxy(
    proxy: ProxyConfig, host: str, port: int, *, timeout: float
) -> socket.socket:
    """Open a tunnel to *host*:*port* through *proxy*; return its socket.

    The socket is connected, non-blocking, owned by no asyncio transport and
    positioned exactly after the proxy's answer (nothing past it was read), so
    it can go to ``asyncssh.connect(sock=...)``. Raises ProxyAuthRejected,
    ProxyRefused or ProxyError, each naming the proxy (never its password) and
    what to fix; *timeout* bounds the whole exchange.
    """
    authority = _authority(host, port)
    loop = asyncio.get_running_loop()
    stage = "accept a connection"
    sock: socket.socket | None = None
    try:
        async with asyncio.timeout(timeout):
            sock = await _open_tcp(loop, proxy)
            stage = f"answer CONNECT {authority}"
            await loop.sock_sendall(sock, _request(proxy, authority))
            head = await _read_head(loop, sock, proxy)
        response = parse_response_head(head)
    except TimeoutError:
        _close(sock)
        raise ProxyError(
            f"proxy {proxy} (from {proxy.source}) did not {stage} within {timeout:g} s; "
            "check the proxy's address and that it is up"
        ) from None
    except ValueError as exc:
        _close(sock)
        raise ProxyError(
            f"proxy {proxy} (from {proxy.source}) gave an answer to CONNECT that is not "
            f"HTTP: {exc}; check that {proxy.source} names an HTTP proxy"
        ) from None
    except OSError as exc:
        _close(sock)
        raise ProxyError(
            f"proxy {proxy} (from {proxy.source}) dropped the connection: {_strerror(exc)}"
        ) from None
    except BaseException:
        _close(sock)
        raise
    assert sock is not None  # set before any head could be read
    if 200 <= response.status <= 299:
        log.debug("relay_via_proxy", proxy=str(proxy), target=authority, status=response.status)
        return sock
    sock.close()
    raise _refusal(proxy, authority, response)


async def _open_tcp(loop: asyncio.AbstractEventLoop, proxy: ProxyConfig) -> socket.socket:
    where = f"proxy {proxy} (from {proxy.source})"
    try:
        infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ProxyError(
            f"cannot resolve the host of {where}: {_strerror(exc)}; check {proxy.source}"
        ) from None
    errors: list[OSError] = []
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            errors.append(exc)
        except BaseException:
            sock.close()
            raise
        else:
            return sock
    reason = _strerror(errors[0]) if errors else "no address"
    raise ProxyError(
        f"cannot connect to {where}: {reason}; check the proxy's host and port in {proxy.source}"
    )


async def _read_head(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, proxy: ProxyConfig
) -> bytes:
    # Peek, then consume only up to the end of the head: the SSH server speaks
    # first, so its banner may already sit right behind the proxy's 200.
    head = b""
    while True:
        await _readable(loop, sock)
        try:
            peeked = sock.recv(MAX_HEAD_BYTES - len(head), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        if not peeked:
            raise ProxyError(
                f"proxy {proxy} (from {proxy.source}) closed the connection without "
                "answering CONNECT"
            )
        end = (head[-3:] + peeked).find(_HEAD_END)
        wanted = len(peeked) if end < 0 else end + len(_HEAD_END) - len(head[-3:])
        chunk = sock.recv(wanted)
        if len(chunk) != wanted:  # what was peeked is buffered, so this cannot happen
            raise OSError("short read after peek")
        head += chunk
        if end >= 0:
            return head
        if len(head) >= MAX_HEAD_BYTES:
            raise ValueError(f"no end of the response head within {MAX_HEAD_BYTES} bytes")


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def _refusal(proxy: ProxyConfig, authority: str, response: ProxyResponse) -> ProxyError:
    status = response.status
    reason = "".join(c for c in response.reason if c.isprintable())[:_MAX_REASON_CHARS]
    said = f"proxy {proxy} (from {proxy.source}) answered CONNECT {authority} with {status}"
    said += f" {reason}" if reason else ""
    if status in (401, 407):
        challenges = response.values("proxy-authenticate") + response.values("www-authenticate")
        schemes = sorted({c.split(" ", 1)[0].lower() for c in challenges if c})
        if proxy.username is None:
            fix = (
                f"the proxy needs a user and password: put them in {proxy.source}, "
                "like http://user:password@host:port (percent-encode special characters)"
            )
        elif schemes and "basic" not in schemes:
            fix = (
                f"the proxy offers only {', '.join(schemes)} authentication and the agent "
                "speaks Basic only: ask the proxy's admins for a Basic account or an exemption"
            )
        else:
            fix = f"check the user and password in {proxy.source}"
        return ProxyAuthRejected(f"{said}: {fix}", status=status)
    if status == 403:
        return ProxyRefused(
            f"{said}: the proxy refused CONNECT to {authority} — allow it in the proxy's ACL "
            "(many proxies allow CONNECT only to port 443)",
            status=status,
        )
    if status in (500, 502, 503, 504):
        fix = f"the proxy could not reach {authority}; check the relay address and the proxy"
    elif status in (400, 405, 501):
        fix = "the proxy does not accept CONNECT requests; use one that does"
    else:
        fix = f"the proxy did not open a tunnel; check {proxy.source}"
    return ProxyError(f"{said}: {fix}", status=status)


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        sock.close()


def _strerror(exc: OSError) -> str:
    # asyncio's sock_connect puts the address in strerror; the errno says it better.
    if not isinstance(exc, socket.gaierror) and exc.errno and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__
