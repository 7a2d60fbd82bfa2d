"""Handlebars templates in a connection's URIs, headers and bodies (pybars3).

A template sees one name, ``connection``: the connection's own document with
its secrets decrypted, so ``{{connection.http.encrypted.password}}`` works as
the guide shows. There are no helpers beyond ``if``, ``unless``, ``each``,
``with`` and ``lookup``; nothing reads files, the environment or other
connections.

Escaping. Handlebars HTML-escapes ``{{x}}``, which is never right for HTTP, so
``{{x}}`` escapes for where the text goes instead, and ``{{{x}}}`` (or
``{{& x}}``) always inserts the value as it is:

=========  ==================================  ==============================
target     ``{{x}}`` inserts                   used for
=========  ==================================  ==============================
text       the value as it is                  plaintext and csv bodies
header     the value as it is                  header values (see below)
uri        percent-encoded (``/`` too)         relative URIs
json       JSON string content (quotes, ``\\``  json bodies, inside quotes:
           and controls escaped)               ``"{{connection…}}"``
xml        XML-escaped (``& < > " '``)         xml bodies
form       ``application/x-www-form-urlencoded``  urlencoded bodies
=========  ==================================  ==============================

So ``?key={{connection.http.encrypted.api_key}}`` and
``{"refresh_token": "{{connection.http.encrypted.refresh_token}}"}`` stay
well-formed whatever the secret holds; use ``{{{ }}}`` to insert a piece of
path or ready-made JSON. Header values and URIs are checked after rendering:
a CR, LF or NUL (any control character in a URI) is refused, whichever form
inserted it. Objects render as ``[object Object]``, arrays comma-joined, as in
handlebars.js; a missing value renders as nothing.

Safety. pybars compiles a template to Python source with path segments and
literals pasted in unquoted, so a template such as
``{{a.[x') or evil() or ('y]}}`` would run code. Every template is therefore
checked against a strict subset of the handlebars grammar before pybars sees
it: plain paths, quoted strings without backslashes, numbers, and the helpers
above; no partials, subexpressions, raw blocks, or ``__dunder__`` segments.
That check also catches unclosed tags and blocks, which pybars would silently
drop with everything after them.
"""

from __future__ import annotations

import functools
import html
import json
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal, cast
from urllib.parse import quote, quote_plus

from pybars import Compiler, PybarsError, strlist  # untyped: see [tool.mypy] overrides

Target = Literal["text", "header", "uri", "json", "xml", "form"]
Renderer = Callable[..., str]

MAX_TEMPLATE_CHARS: Final = 65_536
MAX_NESTING: Final = 16
BLOCK_HELPERS: Final = frozenset({"if", "unless", "each", "with"})
_DATA_NAMES: Final = frozenset({"@root", "@index", "@key", "@first", "@last"})
_BODY_TARGETS: Final[Mapping[str, Target]] = {
    "json": "json",
    "xml": "xml",
    "urlencoded": "form",
    "plaintext": "text",
    "csv": "text",
}
_ESCAPERS: Final[Mapping[Target, Callable[[str], str]]] = {
    "text": lambda value: value,
    "header": lambda value: value,
    "uri": lambda value: quote(value, safe=""),
    "json": lambda value: json.dumps(value, ensure_ascii=False)[1:-1],
    "xml": lambda value: html.escape(value, quote=True),
    "form": lambda value: quote_plus(value, safe=""),
}

# The grammar templates must fit (see "Safety" above).
_WS: Final = r"[ \t\r\n]"
_SEG: Final = r"(?:@?[A-Za-z0-9_-]+|\[[^\[\]'\"\\{}]+\])"
_PATH: Final = rf"(?:\.\./)*(?:(?:this|\.)(?:[./]{_SEG})*|{_SEG}(?:[./]{_SEG})*)"
_STRING: Final = r"(?:\"[^\"\\\x00-\x1f]*\"|'[^'\\\x00-\x1f]*')"
# pybars reads a leading number or true/false/null/undefined as a literal even
# when more characters follow, so such arguments must stand alone.
_LITERAL: Final = r"(?:-?[0-9]+|true|false|null|undefined)"
_ARG: Final = rf"(?:{_STRING}|{_LITERAL}(?![^ \t\r\n])|(?!{_LITERAL}){_PATH})"
_EXPR_RE: Final = re.compile(rf"{_WS}*(?P<head>{_PATH})(?P<args>(?:{_WS}+{_ARG})*){_WS}*")
_ARG_RE: Final = re.compile(_ARG)
_SEGMENT_RE: Final = re.compile(_SEG)
_TAG_RE: Final = re.compile(
    r"\{\{~?(?:!(?P<comment>.*?)|\{(?P<triple>[^{}]*)\}|(?P<body>[^{}]*?))~?\}\}", re.DOTALL
)
_HEADER_FORBIDDEN: Final = re.compile(r"[\r\n\x00]")
_URI_FORBIDDEN: Final = re.compile(r"[\x00-\x1f\x7f]")

# pybars keeps its code builder in a class attribute, so compiling is not
# thread-safe even with one Compiler per call.
_compile_lock = threading.Lock()


class TemplateError(ValueError):
    """A template is malformed or failed to render; never carries rendered values."""


def check_template(template: str) -> None:
    """Raise TemplateError unless *template* fits the supported grammar."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"template is longer than {MAX_TEMPLATE_CHARS} characters")
    _check_syntax(template)
    # pybars strips '~' and standalone-block whitespace before parsing; check
    # exactly what it will parse too, so no tag can change shape in between.
    _check_syntax(Compiler().whitespace_control(template))


def render(template: str, connection: Mapping[str, Any], *, target: Target = "text") -> str:
    """Render *template* with only ``connection`` in scope, escaping for *target*."""
    compiled = _compile(template, target)
    context = _Object({"connection": connection})
    try:
        return str(compiled(context))
    except PybarsError as exc:
        raise TemplateError(f"template could not be rendered: {exc}") from None
    except Exception as exc:  # pybars surfaces a bad path or argument as any error
        raise TemplateError(
            f"template could not be rendered ({type(exc).__name__}); "
            "check its paths and helper arguments"
        ) from None


def render_header_value(
    template: str, connection: Mapping[str, Any], *, name: str = "header"
) -> str:
    value = render(template, connection, target="header")
    if _HEADER_FORBIDDEN.search(value):
        raise TemplateError(
            f"{name}: the rendered value contains a CR, LF or NUL character; "
            "check the connection values the template inserts"
        )
    return value


def render_uri(template: str, connection: Mapping[str, Any], *, name: str = "relative_uri") -> str:
    value = render(template, connection, target="uri")
    if _URI_FORBIDDEN.search(value):
        raise TemplateError(
            f"{name}: the rendered URI contains a control character; "
            "insert values with {{ }} so they are percent-encoded"
        )
    return value


def body_target(media_type: str) -> Target:
    """The escaping for a body of *media_type* (``json``, ``xml``, ``urlencoded``, …)."""
    return _BODY_TARGETS.get(media_type, "text")


def render_body(template: str, connection: Mapping[str, Any], media_type: str) -> str:
    return render(template, connection, target=body_target(media_type))


@functools.lru_cache(maxsize=256)
def _compile(template: str, target: Target) -> Renderer:
    check_template(template)
    with _compile_lock:
        try:
            function = Compiler().compile(template)
        except PybarsError as exc:
            raise TemplateError(f"template error: {exc}") from None
        except Exception as exc:  # checked above, so this is a gap in that check
            raise TemplateError(f"template could not be compiled ({type(exc).__name__})") from None
    # pybars registers every template as a module; unregister it so evicted
    # cache entries can be freed (the function keeps its own globals).
    sys.modules.pop(function.__module__, None)
    function.__globals__["prepare"] = _preparer(_ESCAPERS[target])
    return cast(Renderer, function)


def _preparer(escape: Callable[[str], str]) -> Callable[[Any, bool], Any]:
    """pybars' ``prepare`` with *escape* in place of HTML escaping."""

    def prepare(value: Any, should_escape: bool) -> Any:
        if type(value) is strlist:  # already-rendered block output
            return value
        text = _display(value)
        return escape(text) if should_escape else text

    return prepare


def _display(value: Any) -> str:
    if isinstance(value, _Scalar):
        value = value.value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Object(Mapping[str, Any]):
    """A read-only JSON object for templates: missing keys are None, not errors.

    pybars falls back to ``getattr`` when a lookup raises, which would expose
    dict methods; a mapping that never raises keeps templates on the data.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: object) -> Any:
        if not isinstance(key, str) or key not in self._data:
            return None
        return _wrap(self._data[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return True  # handlebars: every object is truthy, even {}

    def __str__(self) -> str:
        return "[object Object]"

    __repr__ = __str__


class _Array(Sequence[Any]):
    """A read-only JSON array: ``.0``, ``.[0]`` and ``.length``; out of range is None."""

    __slots__ = ("_items",)

    def __init__(self, items: Sequence[Any]) -> None:
        self._items = items

    def __getitem__(self, key: Any) -> Any:
        if key == "length":
            return len(self._items)
        if isinstance(key, str) and key.isascii() and key.isdigit():
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(self._items):
            return _wrap(self._items[key])
        return None

    def __iter__(self) -> Iterator[Any]:
        return (_wrap(item) for item in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __str__(self) -> str:
        return ",".join(_display(item) for item in self)

    __repr__ = __str__


class _Scalar:
    """A string, number or boolean as templates see it: a value with no methods.

    pybars falls back to ``getattr`` for a name it cannot index, and calls
    what it finds: on a plain ``str`` that reaches ``str.format``, and through
    it Python internals and the environment. Indexing this never raises, so
    that fallback never happens.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __getitem__(self, key: object) -> None:
        return None

    def __bool__(self) -> bool:
        return bool(self.value)

    def __eq__(self, other: object) -> bool:
        return bool(self.value == (other.value if isinstance(other, _Scalar) else other))

    def __hash__(self) -> int:
        return hash(self.value)

    def __str__(self) -> str:
        return _display(self.value)

    __repr__ = __str__


def _wrap(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _Object(value)
    if isinstance(value, list | tuple):
        return _Array(value)
    if value is None:
        return None
    return _Scalar(value)


def _check_syntax(source: str) -> None:
    stack: list[tuple[str, bool]] = []  # (block name, seen else)
    position = source.find("{{")
    while position != -1:
        match = _TAG_RE.match(source, position)
        if match is None:
            excerpt = source[position : position + 20]
            raise _error(source, position, "unclosed or malformed tag", excerpt)
        tag = match.group(0)
        try:
            if match.group("comment") is None:
                triple = match.group("triple")
                if triple is not None:
                    _check_expression(triple)
                else:
                    _check_body(match.group("body"), stack)
        except TemplateError as exc:
            raise _error(source, position, str(exc), tag) from None
        position = source.find("{{", match.end())
    if stack:
        raise _error(source, len(source), f"block '{{{{#{stack[-1][0]}}}}}' is never closed", "")


def _check_body(body: str, stack: list[tuple[str, bool]]) -> None:
    sigil, rest = body[:1], body[1:]
    if sigil == "&":
        _check_expression(rest)
    elif (sigil == "^" and not rest.strip(" \t\r\n")) or body.strip(" \t\r\n") == "else":
        if not stack or stack[-1][1]:
            raise TemplateError("'else' outside a block, or a second 'else' in one block")
        stack[-1] = (stack[-1][0], True)
    elif sigil in ("#", "^"):
        match = _EXPR_RE.fullmatch(rest)
        args = _check_args(match.group("args")) if match else []
        if match is None or match.group("head") not in BLOCK_HELPERS or len(args) != 1:
            raise TemplateError(
                f"a block is one of {'/'.join(sorted(BLOCK_HELPERS))} with one argument, "
                "e.g. {{#if connection.http.encrypted.token}}"
            )
        if len(stack) >= MAX_NESTING:
            raise TemplateError(f"blocks nest deeper than {MAX_NESTING}")
        stack.append((match.group("head"), False))
    elif sigil == "/":
        if not stack:
            raise TemplateError("closing tag without an open block")
        if rest != stack[-1][0]:
            raise TemplateError(f"expected '{{{{/{stack[-1][0]}}}}}' (no spaces inside)")
        stack.pop()
    elif sigil == ">":
        raise TemplateError("partials are not supported")
    else:
        _check_expression(body)


def _check_expression(body: str) -> None:
    match = _EXPR_RE.fullmatch(body)
    if match is None:
        raise TemplateError(
            "expected a path such as connection.http.encrypted.password, optionally "
            "after 'lookup'; strings may not contain backslashes"
        )
    head = match.group("head")
    args = _check_args(match.group("args"))
    _check_path(head)
    if head == "lookup":
        if len(args) != 2:
            raise TemplateError("'lookup' takes two arguments: an object and a key")
    elif head in BLOCK_HELPERS or head in ("log", "helperMissing", "blockHelperMissing"):
        raise TemplateError(f"'{head}' cannot be used here")
    elif args:
        raise TemplateError(f"unknown helper '{head}'; the only inline helper is 'lookup'")


def _check_args(text: str) -> list[str]:
    args = _ARG_RE.findall(text)
    for arg in args:
        if not arg.startswith(("'", '"')):
            _check_path(arg)
    return args


def _check_path(path: str) -> None:
    for segment in _SEGMENT_RE.findall(path):
        name = segment[1:-1] if segment.startswith("[") else segment
        if name == "else" and not segment.startswith("["):
            raise TemplateError("'else' is only a block separator; write [else] for a key")
        if name.startswith("__"):
            raise TemplateError("path segments may not start with '__'")
        if name.startswith("@") and name not in _DATA_NAMES:
            raise TemplateError(f"unknown data variable; use one of {sorted(_DATA_NAMES)}")
        if not name.isprintable():
            raise TemplateError("path segments may not contain control characters")


def _error(source: str, position: int, reason: str, excerpt: str) -> TemplateError:
    line = source.count("\n", 0, position) + 1
    column = position - (source.rfind("\n", 0, position) + 1) + 1
    shown = excerpt if len(excerpt) <= 40 else excerpt[:39] + "…"
    near = f" near {shown!r}" if shown else ""
    return TemplateError(f"template error at line {line}, column {column}{near}: {reason}")
