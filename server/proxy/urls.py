"""URL = base URI + relative URI, the way the product guide means it."""

from __future__ import annotations

import functools
import re
from urllib.parse import quote

from yarl import URL

_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


class URLError(ValueError):
    """A relative URI that cannot be joined safely (the message says why)."""


@functools.lru_cache(maxsize=1024)
def _parsed_base(base_uri: str) -> tuple[str, str, str]:
    """(origin, path without trailing slash, raw query) of a base URI, or URLError."""
    try:
        base = URL(base_uri)
        origin = str(base.origin())
    except (ValueError, UnicodeError) as exc:  # yarl cannot encode the host (IDNA)
        raise URLError(f"base_uri cannot be used as a URL: {type(exc).__name__}") from None
    if not base.absolute or base.scheme not in ("http", "https"):
        raise URLError("base_uri must be an absolute http(s) URL")
    return origin, base.raw_path.rstrip("/"), base.raw_query_string


def join_uri(base_uri: str, relative: str) -> URL:
    """Join like a person reads it: no slash lost or doubled, both queries kept.

    ``https://h/api?v=1`` + ``/items?x=2`` → ``https://h/api/items?v=1&x=2``.
    The relative part can never change scheme, host or port; characters that
    are not allowed in a URL are percent-encoded, control characters refused.
    """
    if _FORBIDDEN.search(relative):
        raise URLError("relative URI contains a control character (CR, LF, NUL, …)")
    rel = relative.split("#", 1)[0]
    if rel.startswith("//") or _SCHEME.match(rel):
        raise URLError("relative URI must not name a scheme or host; it is joined to base_uri")
    rel_path, _, rel_query = rel.partition("?")
    origin, base_path, base_query = _parsed_base(base_uri)
    rel_path = quote(rel_path.lstrip("/"), safe=_PATH_SAFE)
    path = f"{base_path}/{rel_path}" if rel_path else (base_path or "/")
    queries = [q for q in (base_query, quote(rel_query, safe=_QUERY_SAFE)) if q]
    text = origin + path + ("?" + "&".join(queries) if queries else "")
    return URL(text, encoded=True)


_NOT_PRINTABLE = re.compile(r"[^\x21-\x7e]")


def _quote_unprintable(text: str) -> str:
    """Percent-encode what cannot stand in a request-target (space, non-ASCII);
    everything printable, ``%2F`` and ``%25`` included, stays as it is."""
    if not _NOT_PRINTABLE.search(text):
        return text
    return _NOT_PRINTABLE.sub(lambda m: quote(m.group(0), safe=""), text)


@functools.lru_cache(maxsize=1024)
def _base_target(base_uri: str) -> tuple[URL, str, str]:
    """(origin URL, raw path as written, raw query) of a base URI."""
    origin, _, _ = _parsed_base(base_uri)
    base = URL(base_uri)
    return URL(origin, encoded=True), base.raw_path, base.raw_query_string


def base_origin_and_path(base_uri: str) -> tuple[str, str]:
    """The base URI's origin (as yarl spells it) and raw path, for reverse mapping."""
    origin, path, _ = _parsed_base(base_uri)
    return origin, path


def join_target(base_uri: str, relative: str) -> tuple[URL, str]:
    """The API's origin and the request-target for a proxied request.

    Unlike ``join_uri`` nothing of the caller's part is normalised: ``/`` and
    ``?`` stay as sent (an empty query, a trailing slash, ``%2F``, ``%25``).
    ``relative`` is what follows ``.../proxy`` in the caller's target: empty,
    or starting with ``/`` or ``?``. With base ``https://h/api?v=1``,
    ``/items/?x=2`` becomes ``/api/items/?v=1&x=2`` and ``?x`` ``/api?v=1&x``.
    A relative part starting with ``//`` is refused: as a URL it would name
    another host.
    """
    if _FORBIDDEN.search(relative):
        raise URLError("relative URI contains a control character (CR, LF, NUL, …)")
    rel = relative.split("#", 1)[0]
    if rel.startswith("//") or _SCHEME.match(rel):
        raise URLError("relative URI must not name a scheme or host; it is joined to base_uri")
    origin, base_path, base_query = _base_target(base_uri)
    rel_path, mark, rel_query = rel.partition("?")
    if rel_path and not rel_path.startswith("/"):
        rel_path = "/" + rel_path
    path = (base_path.rstrip("/") + rel_path) if rel_path else (base_path or "/")
    path = _quote_unprintable(path or "/")
    if base_query and rel_query:
        query = "?" + base_query + "&" + _quote_unprintable(rel_query)
    elif base_query or mark:
        query = "?" + (base_query or _quote_unprintable(rel_query))
    else:
        query = ""
    return origin, path + query


def with_target_param(target: str, name: str, value: str) -> str:
    """Set query parameter *name* to *value* in a request-target, replacing the
    caller's parameters of that name; the rest of the query stays as sent."""
    path, _, query = target.partition("?")
    encoded = quote(name, safe="")
    parts = query.split("&") if query else []
    kept = [part for part in parts if part.split("=", 1)[0] != encoded]
    kept.append(f"{encoded}={quote(value, safe='')}")
    return path + "?" + "&".join(kept)
