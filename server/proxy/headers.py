"""Header fields as the wire carries them, and what the proxy changes in them.

A field list is an ordered list of ``(name, value)`` byte pairs: repeats
kept, in order, values never decoded (obs-text such as ``caf\\xe9`` passes as
the byte it is). Names compare case-insensitively. Both modes (cloud and
on-premise) and both listeners (the front and aiohttp's route) build what
goes out with the two functions here, ``request_fields`` and
``answer_fields``; docs/PROXY.md lists every change they make and why.

Work is on bytes and plain lists: this runs once per proxied request on the
fast path, where a per-request object graph would cost measurable CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Field = tuple[bytes, bytes]
Fields = list[Field]

# Hop-by-hop fields (RFC 9110 §7.6.1; Proxy-Connection and Keep-Alive as
# deployed): they describe one connection, not the message, so they never
# cross the relay. The fields named in a Connection field are removed too.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request fields the relay writes itself: Host (the API's authority) and the
# framing (Content-Length is written again with the same value), and the
# caller's credential for the relay (Authorization), which the API never sees.
_REQUEST_OWNED_BY_RELAY = frozenset({b"host", b"content-length", b"authorization"})
# Answer fields the relay writes itself: the framing of the caller's answer
# (the same Content-Length, or chunked where the API sent chunked).
_ANSWER_FRAMING = frozenset({b"content-length"})
_DROPPED_FROM_REQUEST = HOP_BY_HOP | _REQUEST_OWNED_BY_RELAY
_DROPPED_FROM_ANSWER = HOP_BY_HOP | _ANSWER_FRAMING
_LOCATIONS = frozenset({b"location", b"content-location"})


def _add_options(value: bytes, into: set[bytes]) -> None:
    for token in value.split(b","):
        if option := token.strip().lower():
            into.add(option)


def connection_options(fields: Iterable[Field]) -> frozenset[bytes]:
    """The (lower-case) field names listed in the Connection fields of *fields*."""
    named: set[bytes] = set()
    for name, value in fields:
        if name.lower() == b"connection":
            _add_options(value, named)
    return frozenset(named)


def get(fields: Iterable[Field], name: bytes) -> bytes | None:
    """The first value of field *name* (lower-case), or None."""
    for field, value in fields:
        if field.lower() == name:
            return value
    return None


def lowered_names(fields: Sequence[Field]) -> list[bytes]:
    """Each field's name in lower case, in order: lowered in one call, not one
    per field (a name holds no line break: the parsers and the settings'
    validation refuse one)."""
    if not fields:
        return []
    return b"\n".join([field[0] for field in fields]).lower().split(b"\n")


def _kept(
    fields: Sequence[Field], dropped: frozenset[bytes], names: list[bytes] | None = None
) -> list[tuple[bytes, Field]]:
    """*fields* less *dropped* and those named in Connection, each with its
    lower-case name (*names*: ``lowered_names(fields)``, when made already).
    This runs for every request and every answer."""
    kept: list[tuple[bytes, Field]] = []
    named: set[bytes] | None = None
    for name, field in zip(lowered_names(fields) if names is None else names, fields, strict=True):
        if name in dropped:
            if name == b"connection":
                if named is None:
                    named = set()
                _add_options(field[1], named)
            continue
        kept.append((name, field))
    if named:
        return [pair for pair in kept if pair[0] not in named]
    return kept


def request_fields(
    caller: Sequence[Field], owned: Sequence[Field], defaults: Sequence[Field]
) -> Fields:
    """The fields the API gets (Host and framing are added by the writer).

    *caller*'s fields in their order, less hop-by-hop ones, those named in
    Connection, Host, Content-Length and Authorization; then the
    connection's *owned* fields (its configured headers and auth), which
    replace the caller's fields of the same name; then each of *defaults*
    (media type, User-Agent) the caller did not send.
    """
    pairs = _kept(caller, _DROPPED_FROM_REQUEST)
    present = {name for name, _ in pairs}
    if owned:
        replaced = {name.lower() for name, _ in owned}
        if not present.isdisjoint(replaced):
            pairs = [pair for pair in pairs if pair[0] not in replaced]
        present |= replaced
    kept = [field for _, field in pairs]
    kept.extend(owned)
    for field in defaults:
        if field[0].lower() not in present:
            kept.append(field)
    return kept


def answer_fields(
    api: Sequence[Field], rewrite: LocationRewrite | None, names: list[bytes] | None = None
) -> Fields:
    """The API's answer fields the caller gets (framing is added by the writer):
    hop-by-hop ones and those named in Connection dropped, Location and
    Content-Location under the base URI pointed at the proxy route. *names*:
    ``lowered_names(api)``, when the caller made them already."""
    pairs = _kept(api, _DROPPED_FROM_ANSWER, names)
    if rewrite is None:
        return [field for _, field in pairs]
    return [
        (field[0], rewrite.apply(field[1])) if name in _LOCATIONS else field
        for name, field in pairs
    ]


class LocationRewrite:
    """Maps URLs under a connection's base URI to its proxy route.

    ``http://api:8080/base/x?y`` and ``/base/x?y`` (base URI
    ``http://api:8080/base``) both become ``/v1/connections/ID/proxy/x?y``,
    as nginx's ``proxy_redirect default`` and Apache's ``ProxyPassReverse``
    do; any other value stays as the API sent it.
    """

    __slots__ = ("_origin", "_path", "_route")

    def __init__(self, origin: bytes, base_path: bytes, route: bytes) -> None:
        self._origin = origin.lower()  # scheme://host[:port], as the base URI spells it
        self._path = base_path.rstrip(b"/")
        self._route = route

    def __repr__(self) -> str:
        return f"<LocationRewrite {self._origin!r}{self._path!r} -> {self._route!r}>"

    def apply(self, value: bytes) -> bytes:
        rest = value
        if value[:1] != b"/" or value[:2] == b"//":
            if value[: len(self._origin)].lower() != self._origin:
                return value
            rest = value[len(self._origin) :]
            if rest[:1] not in (b"/", b"?", b"#", b""):
                return value  # another port or host that shares the prefix
        if not rest.startswith(self._path):
            return value
        tail = rest[len(self._path) :]
        if tail[:1] not in (b"/", b"?", b"#", b""):
            return value  # /basement is not under /base
        return self._route + tail


def encode_text(fields: Iterable[tuple[str, str]]) -> Fields:
    """Fields the relay itself holds as text (settings, templates), as bytes."""
    return [(name.encode("latin-1"), value.encode("utf-8")) for name, value in fields]
