"""structlog set up once per process: JSON for collectors, console on a TTY."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "json", "console"]

_MASK = "***"
# Token shapes Sluice issues; masked even when nobody registered the value.
_TOKEN_SHAPES = re.compile(r"slc_agt_[a-z0-9]{16}_[A-Za-z0-9]{40}|slcadm_[A-Za-z0-9_-]{20,}")


class SecretMasker:
    """A structlog processor that masks every known secret wherever it appears.

    Secrets are registered at start (tokens, keys); any string in the event
    dict that contains one has it replaced, so a token pasted into an error
    message cannot leak through a log line either.
    """

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, *secrets: str | None) -> None:
        for secret in secrets:
            if secret and len(secret) >= 6:
                self._secrets.add(secret)

    def discard(self, secret: str) -> None:
        self._secrets.discard(secret)

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _MASK)
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
    numeric = logging.getLevelNamesMapping()[level.upper()]

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
    # asyncssh logs through stdlib logging; keep it quiet unless debugging.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=out, force=True)
    logging.getLogger("asyncssh").setLevel(max(numeric, logging.WARNING))
