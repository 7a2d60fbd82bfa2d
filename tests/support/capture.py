"""Everything the relay logs and answers during the suite, kept for secret checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp


class LogSink:
    """A file-like target for structlog's PrintLogger; keeps every line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.extend(line for line in text.splitlines() if line)
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


SINK = LogSink()
SECRETS: set[str] = set()
RESPONSES: list[str] = []


def remember_secret(*values: str) -> None:
    SECRETS.update(v for v in values if v)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str
    body: Any = field(default=None)


class APIClient:
    """Calls the relay API with the admin token; records every answer body."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base: str,
        token: str,
        proxy_session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.session = session
        # Proxy calls on connections of their own: the relay's front serves a
        # caller's connection itself until its first API call, then hands it
        # to aiohttp for good; on a shared one they would test aiohttp's route.
        self.proxy_session = proxy_session
        self.base = base
        self.token = token

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        shows_token: bool = False,
    ) -> Answer:
        """Call the API. *shows_token*: this answer carries a token by design
        (agent create/rotate), so it is left out of the leak check."""
        all_headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        all_headers.update(headers or {})
        http = self.session
        if self.proxy_session is not None and "/proxy/" in path:
            http = self.proxy_session
        async with http.request(
            method, self.base + path, json=json_body, data=data, headers=all_headers
        ) as resp:
            text = await resp.text()
            if not shows_token:
                RESPONSES.append(text)
            RESPONSES.append(json.dumps(dict(resp.headers)))
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = None
            return Answer(resp.status, dict(resp.headers), text, body)
