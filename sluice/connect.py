"""The CONNECT exchange that opens every tunnelled stream, without any I/O.

The relay opens one SSH channel per upstream TCP connection and writes a
standard HTTP proxy request, ``CONNECT host:port HTTP/1.1``. The agent answers
``200 Connection established`` and then copies bytes both ways, or answers
400, 403, 502 or 504 with a short JSON body and closes the channel.

Both ends are ours, so the parsers here are deliberately strict: CRLF line
endings only, no control characters, no non-ASCII bytes, a bounded head. Every
violation raises :class:`ConnectProtocolError`; nothing else escapes them.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from http import HTTPStatus

__all__ = [
    "MAX_ERROR_BODY_BYTES",
    "MAX_HEADER_LINES",
    "MAX_HEAD_BYTES",
    "ConnectProtocolError",
    "ConnectResponse",
    "Target",
    "find_head_end",
    "format_connect_request",
    "format_connect_response",
    "normalise_host",
    "parse_connect_request",
    "parse_connect_response",
    "parse_error_body",
]

MAX_HEAD_BYTES = 8192
"""Longest request or response head, final CRLF CRLF included."""

MAX_HEADER_LINES = 32
"""Most header lines a head may carry after its first line."""

MAX_ERROR_BODY_BYTES = 4096
"""Longest JSON body an error response may announce."""

MAX_MESSAGE_CHARS = 512
"""Error messages are cut to this many characters on both ends."""

DEFAULT_ERRORS: dict[int, str] = {
    400: "bad_request",
    403: "destination_denied",
    502: "upstream_connect_failed",
    504: "upstream_timeout",
}
"""The error code the agent sends with each status unless told otherwise."""

UNREADABLE_ERROR = "upstream_error"
"""The error code :func:`parse_error_body` gives a body it cannot read."""

_EXCERPT_BYTES = 64
_MAX_AUTHORITY_CHARS = 300  # 253-char name + ":65535", with room to spare
_HEAD_END = b"\r\n\r\n"
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NOT_VISIBLE_ASCII = re.compile(rb"[^\x20-\x7e]")
_STATUS_LINE = re.compile(r"HTTP/1\.[01] ([2-5][0-9]{2})(?: [\x20-\x7e]*)?")
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,10}")


class ConnectProtocolError(ValueError):
    """Raised when a CONNECT head, authority or host breaks the protocol.

    *reason* is a short sentence for logs and error bodies; it quotes at most
    64 bytes of the offending input, repr-escaped.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _excerpt(data: bytes | bytearray | str) -> str:
    """Quote the start of untrusted input safely for an error message."""
    if isinstance(data, str):
        head: str | bytes = data[:_EXCERPT_BYTES]
    else:
        head = bytes(data[:_EXCERPT_BYTES])
    suffix = "..." if len(data) > _EXCERPT_BYTES else ""
    return f"{head!a}{suffix}"


def _ipv6(text: str) -> str:
    if "%" in text:
        raise ConnectProtocolError(f"IPv6 zone IDs are not supported: {_excerpt(text)}")
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        raise ConnectProtocolError(f"invalid IPv6 address {_excerpt(text)}") from None


def _is_inet_aton_number(name: str) -> bool:
    # getaddrinfo() reads names like "0x7f000001" or "10.1" as IPv4 addresses
    # without asking DNS; refuse them so a name is always a name.
    try:
        socket.inet_aton(name)
    except OSError:
        return False
    return True


def is_ipv4_shorthand(name: str) -> bool:
    """Whether *name* is a number that resolvers read as an IPv4 address
    (``127.1``, ``0``, ``2130706433``, ``017700000001``, ``0x7f000001``)
    without being a canonical dotted quad. Such a host is refused, never
    judged by what it happens to resolve to."""
    if ":" in name:
        return False  # IPv6
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        pass
    else:
        return False
    stripped = name.rstrip(".")
    return stripped.split(".")[-1].isdigit() or _is_inet_aton_number(stripped)


def normalise_host(host: str) -> str:
    """Return *host* in canonical form, or raise :class:`ConnectProtocolError`.

    Accepts a DNS name (letters, digits and hyphens; lowercased, trailing dot
    dropped), a dotted-quad IPv4 address, or an IPv6 address with or without
    brackets (returned compressed and without brackets).
    """
    if not isinstance(host, str):
        raise ConnectProtocolError(f"host must be a string, not {type(host).__name__}")
    if not host:
        raise ConnectProtocolError("empty host")
    # Check ASCII before lower(): some non-ASCII letters lowercase to ASCII ones.
    if not host.isascii() or not host.isprintable() or " " in host:
        raise ConnectProtocolError(
            f"host contains whitespace, control or non-ASCII characters: {_excerpt(host)}"
            " (write international names in their xn-- form)"
        )
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConnectProtocolError(f"unclosed '[' in host {_excerpt(host)}")
        return _ipv6(host[1:-1])
    if ":" in host:
        return _ipv6(host)
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ConnectProtocolError("empty host")
    if len(name) > 253:
        raise ConnectProtocolError(f"host name is {len(name)} characters long, over 253")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ConnectProtocolError(
                f"invalid label {_excerpt(label)} in host {_excerpt(host)}: a label is 1-63"
                " letters, digits or hyphens, and does not start or end with a hyphen"
            )
    if labels[-1].isdigit() or _is_inet_aton_number(name):
        raise ConnectProtocolError(
            f"host {_excerpt(host)} is neither a name nor a dotted-quad IPv4 address"
        )
    return name


def _parse_port(text: str) -> int:
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise ConnectProtocolError(
            f"port must be a number from 1 to 65535 without leading zeros, got {_excerpt(text)}"
        )
    return int(text)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a CONNECT request asks to go.

    The constructor normalises *host* (see :func:`normalise_host`) and checks
    that *port* is 1-65535, raising :class:`ConnectProtocolError` otherwise,
    so every ``Target`` that exists is safe to format into a request.
    """

    host: str
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", normalise_host(self.host))
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ConnectProtocolError(f"port must be an int, not {type(self.port).__name__}")
        if not 1 <= self.port <= 65535:
            raise ConnectProtocolError(f"port must be from 1 to 65535, got {self.port}")

    def authority(self) -> str:
        """``host:port``, with an IPv6 host in brackets."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, authority: str) -> Target:
        """Parse ``host:port`` or ``[v6]:port``; an IPv6 host needs its brackets."""
        if not isinstance(authority, str):
            raise ConnectProtocolError(
                f"authority must be a string, not {type(authority).__name__}"
            )
        if len(authority) > _MAX_AUTHORITY_CHARS:
            raise ConnectProtocolError(
                f"authority is {len(authority)} characters long: {_excerpt(authority)}"
            )
        if "/" in authority:
            raise ConnectProtocolError(
                f"authority {_excerpt(authority)} must be host:port, not a URL"
            )
        if authority.startswith("["):
            close = authority.find("]")
            if close == -1:
                raise ConnectProtocolError(f"unclosed '[' in authority {_excerpt(authority)}")
            if authority[close + 1 : close + 2] != ":":
                raise ConnectProtocolError(
                    f"authority {_excerpt(authority)} needs ':port' after ']'"
                )
            host = _ipv6(authority[1:close])
            port_text = authority[close + 2 :]
        else:
            host_text, colon, port_text = authority.rpartition(":")
            if not colon:
                raise ConnectProtocolError(f"authority {_excerpt(authority)} must be host:port")
            if ":" in host_text:
                raise ConnectProtocolError(
                    f"authority {_excerpt(authority)}: an IPv6 address must be in"
                    " brackets, like [fd00::1]:443"
                )
            host = host_text
        return cls(host, _parse_port(port_text))


def format_connect_request(target: Target) -> bytes:
    """The request head the relay writes first on a new channel."""
    authority = target.authority()
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode("ascii")


def find_head_end(buffer: bytes | bytearray) -> int:
    """Return the index just past the first CRLF CRLF in *buffer*, or -1.

    Call this each time more bytes arrive; bytes from the returned index on
    already belong to the tunnel (or the error body). Raises
    :class:`ConnectProtocolError` once *buffer* holds ``MAX_HEAD_BYTES``
    without a complete head.
    """
    index = buffer.find(_HEAD_END, 0, MAX_HEAD_BYTES)
    if index != -1:
        return index + len(_HEAD_END)
    if len(buffer) >= MAX_HEAD_BYTES:
        raise ConnectProtocolError(f"no end of head within {MAX_HEAD_BYTES} bytes")
    return -1


def _split_head(head: bytes | bytearray) -> tuple[str, list[tuple[str, str]]]:
    """Check a head's framing; return its first line and (lowercase name, value) pairs."""
    if not isinstance(head, bytes | bytearray):
        raise ConnectProtocolError(f"head must be bytes, not {type(head).__name__}")
    if len(head) > MAX_HEAD_BYTES:
        raise ConnectProtocolError(
            f"head is {len(head)} bytes long, over the {MAX_HEAD_BYTES} byte limit"
        )
    if not head.endswith(_HEAD_END):
        raise ConnectProtocolError(f"head does not end with CRLF CRLF: {_excerpt(head[-64:])}")
    lines = bytes(head[: -len(_HEAD_END)]).split(b"\r\n")
    if len(lines) - 1 > MAX_HEADER_LINES:
        raise ConnectProtocolError(
            f"head has {len(lines) - 1} header lines, over the limit of {MAX_HEADER_LINES}"
        )
    for number, line in enumerate(lines, start=1):
        if not line:
            raise ConnectProtocolError(f"line {number} of the head is empty")
        bad = _NOT_VISIBLE_ASCII.search(line)
        if bad is not None:
            byte = bad.group()
            if byte in (b"\r", b"\n"):
                kind = "a bare CR or LF (lines must end with CRLF)"
            elif byte == b"\x00":
                kind = "a NUL byte"
            elif byte < b"\x80":
                kind = f"control character {byte!r}"
            else:
                kind = f"non-ASCII byte {byte!r}"
            raise ConnectProtocolError(f"line {number} of the head has {kind}: {_excerpt(line)}")
    first, *rest = [line.decode("ascii") for line in lines]
    headers: list[tuple[str, str]] = []
    for field in rest:
        name, colon, value = field.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise ConnectProtocolError(f"header line is not 'name: value': {_excerpt(field)}")
        headers.append((name.lower(), value.strip(" ")))
    return first, headers


def parse_connect_request(head: bytes) -> Target:
    """Parse a request head (up to and including its CRLF CRLF) into its target.

    Header fields are checked for form and otherwise ignored.
    """
    request_line, _ = _split_head(head)
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise ConnectProtocolError(
            f"request line must be 'CONNECT host:port HTTP/1.1': {_excerpt(request_line)}"
        )
    method, authority, version = parts
    if method != "CONNECT":
        raise ConnectProtocolError(f"method must be CONNECT, got {_excerpt(method)}")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise ConnectProtocolError(f"version must be HTTP/1.1 or HTTP/1.0, got {_excerpt(version)}")
    return Target.parse(authority)


def _clean_message(message: str) -> str:
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in message[:MAX_MESSAGE_CHARS])


def format_connect_response(
    status: int, *, error: str | None = None, message: str | None = None
) -> bytes:
    """The response head (and, on failure, the JSON body) the agent writes.

    200 has no body. Any 4xx or 5xx status gets ``{"error", "message"}``;
    *error* defaults per status (see ``DEFAULT_ERRORS``), *message* to the
    reason phrase. Non-printable characters in *message* become U+FFFD and it
    is cut to ``MAX_MESSAGE_CHARS``, so the body always fits the limit the
    relay enforces. Raises :class:`ValueError` for other statuses or a
    malformed *error* code.
    """
    if status == 200:
        if error is not None or message is not None:
            raise ValueError("a 200 response carries no error or message")
        return b"HTTP/1.1 200 Connection established\r\n\r\n"
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        raise ValueError(f"unknown HTTP status {status!r}") from None
    if not 400 <= status <= 599:
        raise ValueError(f"a CONNECT failure needs a 4xx or 5xx status, not {status}")
    if error is None:
        error = DEFAULT_ERRORS.get(status, UNREADABLE_ERROR)
    if not _ERROR_CODE.fullmatch(error):
        raise ValueError(f"error code must be lowercase snake_case, got {error!r}")
    text = _clean_message(phrase if message is None else message)
    body = json.dumps(
        {"error": error, "message": text}, ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


@dataclass(frozen=True, slots=True)
class ConnectResponse:
    """The agent's answer: its status and how many body bytes follow the head."""

    status: int
    content_length: int

    @property
    def established(self) -> bool:
        """True when the tunnel is open and the next bytes are the upstream's."""
        return 200 <= self.status <= 299


def parse_connect_response(head: bytes) -> ConnectResponse:
    """Parse a response head (up to and including its CRLF CRLF).

    A 2xx response has no body: as RFC 9110 requires, its Content-Length is
    ignored and ``content_length`` is 0. Otherwise Content-Length is optional
    (default 0) and at most ``MAX_ERROR_BODY_BYTES``.
    """
    status_line, headers = _split_head(head)
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise ConnectProtocolError(
            f"status line must be 'HTTP/1.1 NNN reason' with NNN from 200 to 599: "
            f"{_excerpt(status_line)}"
        )
    status = int(match.group(1))
    if 200 <= status <= 299:
        return ConnectResponse(status, 0)
    lengths = [value for name, value in headers if name == "content-length"]
    if any(name == "transfer-encoding" for name, _ in headers):
        raise ConnectProtocolError("Transfer-Encoding is not supported on a CONNECT error")
    if len(lengths) > 1:
        raise ConnectProtocolError("more than one Content-Length header")
    length = 0
    if lengths:
        if not _CONTENT_LENGTH.fullmatch(lengths[0]):
            raise ConnectProtocolError(f"invalid Content-Length {_excerpt(lengths[0])}")
        length = int(lengths[0])
        if length > MAX_ERROR_BODY_BYTES:
            raise ConnectProtocolError(
                f"error body of {length} bytes is over the {MAX_ERROR_BODY_BYTES} byte limit"
            )
    return ConnectResponse(status, length)


def parse_error_body(body: bytes) -> tuple[str, str]:
    """Return ``(error, message)`` from an error response's JSON body.

    Never raises: a body that is not the JSON object the agent sends gives
    ``("upstream_error", <short description>)``. Non-printable characters in
    the message become U+FFFD and it is cut to ``MAX_MESSAGE_CHARS``.
    """
    unreadable = (
        UNREADABLE_ERROR,
        f"the agent sent an unreadable error body of {len(body)} bytes: {_excerpt(body)}",
    )
    if len(body) > MAX_ERROR_BODY_BYTES:
        return unreadable
    try:
        data = json.loads(bytes(body))
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        return unreadable
    if not isinstance(data, dict):
        return unreadable
    error, message = data.get("error"), data.get("message")
    if not isinstance(error, str) or not _ERROR_CODE.fullmatch(error):
        return unreadable
    if not isinstance(message, str):
        message = "the agent gave no message"
    return error, _clean_message(message)
