"""structlog set up once per process: JSON for collectors, console on a TTY."""

from __future__ import annotations

import bisect
import json
import logging
import re
import sys
import urllib.parse
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "json", "console"]

# The least level configure_logging lets through (0, everything, until it is
# called: structlog's own default). A line made for every request reads it
# first: a call at a level that is off still costs a logger lookup, three
# Python calls and the building of its arguments.
min_level = 0

_MASK = "***"
# Token shapes Sluice issues; masked even when nobody registered the value.
_TOKEN_SHAPES = re.compile(r"slc_agt_[a-z0-9]{16}_[A-Za-z0-9]{40}|slcadm_[A-Za-z0-9_-]{20,}")


def secret_forms(secret: str) -> set[str]:
    """*secret* as it may appear in text: as is, escaped inside a JSON or
    Python string literal, and percent-encoded in a URL."""
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
        urllib.parse.quote(secret),
    }
    return {form for form in forms if form}


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """*text* with every form of every secret replaced; longest forms first,
    so no part of a longer secret is left behind by a shorter one."""
    forms: set[str] = set()
    for secret in secrets:
        forms |= secret_forms(secret)
    for form in sorted(forms, key=len, reverse=True):
        if form in text:
            text = text.replace(form, _MASK)
    return text


class SecretMasker:
    """A structlog processor that masks every known secret wherever it appears.

    Secrets are registered at start (tokens, keys); any string in the event
    dict that contains one has it replaced, so a token pasted into an error
    message cannot leak through a log line either.
    """

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._forms: list[str] = []  # every form of every secret, longest first
        self._lengths: list[int] = []  # their lengths, negated (ascending for bisect)

    def add(self, *secrets: str | None) -> None:
        fresh = [s for s in secrets if s and len(s) >= 6 and s not in self._secrets]
        if fresh:
            self._secrets.update(fresh)
            self._update()

    def discard(self, secret: str) -> None:
        self._secrets.discard(secret)
        self._update()

    def _update(self) -> None:
        forms: set[str] = set()
        for secret in self._secrets:
            forms |= secret_forms(secret)
        self._forms = sorted(forms, key=len, reverse=True)
        self._lengths = [-len(form) for form in self._forms]

    def mask(self, text: str) -> str:
        # Only forms that fit in *text* are looked for: most logged strings
        # (ids, event names) are shorter than any secret, and every log line
        # of a relay with many connections passes through here.
        for form in self._forms[bisect.bisect_left(self._lengths, -len(text)) :]:
            if form in text:
                text = text.replace(form, _MASK)
        if "slc" in text:
            text = _TOKEN_SHAPES.sub(_MASK, text)
        return text

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, BaseException):
            return self.mask(repr(value))
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event_dict.items()):
            event_dict[key] = self._scrub(value)
        return event_dict


def configure_logging(
    fmt: LogFormat = "auto",
    level: str = "info",
    *,
    masker: SecretMasker | None = None,
    stream: Any = None,
    cache: bool = True,
) -> None:
    """Configure structlog (and stdlib logging under it) for this process."""
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    global min_level
    numeric = logging.getLevelNamesMapping()[level.upper()]
    min_level = numeric

    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if masker is not None:
        processors.append(masker)
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        # Tests turn caching off so structlog.testing.capture_logs sees every logger.
        cache_logger_on_first_use=cache,
    )
    # Libraries log through stdlib logging (aiohttp's server errors, asyncio,
    # asyncssh): their records go through the same processors, so they are
    # masked and rendered like every other line. aiohttp logs the head of a
    # request it refuses, Authorization header included.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *processors,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # Quiet unless debugging: asyncssh is chatty at info.
    root.setLevel(max(numeric, logging.WARNING))
    logging.getLogger("asyncssh").setLevel(max(numeric, logging.WARNING))
