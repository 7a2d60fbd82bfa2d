"""Paths into JSON response bodies, and the ping verdict built on them.

A path is dotted keys with optional array indexes: ``ok``,
``data.items[0].status``, ``a.b[2][1]``, ``[0].id``, ``x-request.state``.
Keys may hold any character but ``.``, ``[`` and ``]``. A purely numeric
key also indexes an array (``items.0`` is ``items[0]``). The empty path is
the whole document (so a refresh answer that is just a JSON string can be the
token).

Both a ping's ``success_path`` and a token refresh's ``token_path`` use this
syntax; ``parse_path`` is what the connection model validates them with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final, Protocol

Segment = str | int

_MAX_ECHO: Final = 100
_SEGMENT_RE: Final = re.compile(r"([^.\[\]]*)((?:\[\d+\])*)")
_INDEX_RE: Final = re.compile(r"\[(\d+)\]")


def parse_path(path: str) -> tuple[Segment, ...]:
    """Split *path* into keys (str) and indexes (int); ValueError says what is wrong."""
    if not path:
        return ()
    segments: list[Segment] = []
    for position, part in enumerate(path.split(".")):
        match = _SEGMENT_RE.fullmatch(part)
        if match is None:
            raise ValueError(
                f"path segment {position + 1} is not 'key' or 'key[index]' "
                "(brackets hold only digits, e.g. items[0])"
            )
        key, indexes = match.groups()
        if not key and not (position == 0 and indexes):
            raise ValueError(f"path segment {position + 1} is empty (check for '..' or a dot)")
        if key:
            segments.append(key)
        segments.extend(int(index) for index in _INDEX_RE.findall(indexes))
    return tuple(segments)


def lookup(document: Any, path: str) -> tuple[bool, Any]:
    """Follow *path* through parsed JSON: (True, value) or (False, None) if absent.

    Raises ValueError only when *path* itself is malformed.
    """
    current = document
    for segment in parse_path(path):
        if isinstance(current, dict) and isinstance(segment, str):
            if segment not in current:
                return False, None
            current = current[segment]
        elif isinstance(current, list):
            index = _as_index(segment)
            if index is None or index >= len(current):
                return False, None
            current = current[index]
        else:
            return False, None
    return True, current


def _as_index(segment: Segment) -> int | None:
    if isinstance(segment, int):
        return segment
    if segment.isascii() and segment.isdigit():
        return int(segment)
    return None


def as_comparable(value: Any) -> str:
    """The text a success value is compared with: JSON scalars as JSON prints them."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def is_truthy(value: Any) -> bool:
    """JavaScript truthiness of a JSON value: false, null, 0 and "" are falsy."""
    if value is None or value is False or value == "":
        return False
    return not (isinstance(value, int | float) and not isinstance(value, bool) and value == 0)


def ping_verdict(
    status: int,
    body: bytes,
    content_type: str | None,
    success_path: str | None,
    success_values: list[str],
    *,
    mask: Callable[[str], str] = str,
) -> tuple[bool, str]:
    """Decide whether a ping response means the connection works, and say why.

    4xx and 5xx always fail. With a *success_path* the body must be JSON and
    the value there must equal one of *success_values* exactly
    (case-sensitively); with no success values it must merely be truthy
    (present and not false, null, 0 or "").
    A value shown in the message passes through *mask* before it is shortened.
    """
    if status >= 400:
        return False, f"the API answered HTTP {status}"
    if not success_path:
        return True, f"the API answered HTTP {status}"
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        kind = f"{content_type} " if content_type else ""
        return False, (
            f"the API answered HTTP {status} with a {kind}body that is not JSON, "
            f"so success path {success_path!r} cannot be checked"
        )
    try:
        found, value = lookup(document, success_path)
    except ValueError as exc:
        return False, f"success path {success_path!r} is not a valid path: {exc}"
    if not found:
        return False, f"success path {success_path!r} is not in the response (HTTP {status})"
    shown = _echo(value, mask)
    if success_values:
        if as_comparable(value) in success_values:
            return True, f"HTTP {status}, success path {success_path!r} is {shown}"
        expected = _truncate(repr(list(success_values)))
        return False, f"success path {success_path!r} is {shown}, expected one of {expected}"
    if is_truthy(value):
        return True, f"HTTP {status}, success path {success_path!r} is {shown}"
    return False, f"success path {success_path!r} is {shown}, expected a true value"


def _echo(value: Any, mask: Callable[[str], str] = str) -> str:
    # Strings are quoted so that "true" (a string) and true (JSON) read apart.
    if isinstance(value, str):
        return _truncate(mask(json.dumps(value, ensure_ascii=False)))
    return _truncate(mask(as_comparable(value)))


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_ECHO else text[: _MAX_ECHO - 1] + "…"


class PingRules(Protocol):
    """The verdict's part of a connection's ``http.ping`` settings."""

    success_path: str | None
    success_values: list[str]
    fail_path: str | None
    fail_values: list[str]
    error_path: str | None


def health_verdict(
    status: int,
    body: bytes,
    content_type: str | None,
    ping: PingRules,
    *,
    mask: Callable[[str], str] = str,
) -> tuple[bool, str]:
    """:func:`ping_verdict`, then the ping's ``fail_path``/``fail_values`` (a
    match fails a 2xx) and ``error_path`` (on failure, the value there is the
    message, as the API put it).

    *ping* is a connection's ``http.ping`` (``server.connections.model.Ping``).
    """
    ok, message = ping_verdict(
        status, body, content_type, ping.success_path, list(ping.success_values), mask=mask
    )
    fail_path, error_path = ping.fail_path, ping.error_path
    if not (fail_path or error_path):
        return ok, message
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return ok, message
    if ok and fail_path:
        found, value = lookup(document, fail_path)
        if found and as_comparable(value) in ping.fail_values:
            ok = False
            message = f"HTTP {status}, fail path {fail_path!r} is {_echo(value, mask)}"
    if not ok and error_path:
        found, value = lookup(document, error_path)
        if found and value not in (None, ""):
            text = value if isinstance(value, str) else as_comparable(value)
            message = _truncate(mask(text))
    return ok, message
