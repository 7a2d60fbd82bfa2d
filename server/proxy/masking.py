"""Secrets masked out of what the debug log keeps.

Masked: the values of credential headers (Authorization, cookies, API keys,
the connection's own token header), query parameters that carry tokens (and
the connection's own token parameter), and the connection's own secret
values wherever they appear, also percent- or JSON-encoded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

MASK = "***"

_HEADER_WORDS = (
    "authorization",
    "cookie",
    "token",
    "secret",
    "password",
    "api-key",
    "apikey",
    "api_key",
    "session",
    "signature",
    "credential",
)
_PARAM_WORDS = (
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "sig",
    "auth",
    "credential",
    "session",
    "code",
)
# Secrets this short would mask ordinary words; they are not stored as such.
_SHORTEST = 4


class Masker:
    """Masks one connection's secrets (*secrets*: its decrypted values)."""

    def __init__(
        self,
        secrets: Iterable[str],
        header_names: Iterable[str] = (),
        param_names: Iterable[str] = (),
    ) -> None:
        variants: set[str] = set()
        for secret in secrets:
            if len(secret) < _SHORTEST:
                continue
            variants.update(
                {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
            )
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted(variants, key=len, reverse=True)
        self._headers = {name.lower() for name in header_names}
        self._params = {name.lower() for name in param_names}

    def __repr__(self) -> str:
        return f"<Masker secrets={len(self._secrets)}>"

    @property
    def longest(self) -> int:
        """Bytes of the longest form of a secret (UTF-8): how far past a cut
        a body must be kept to see a secret that straddles it whole."""
        return max((len(secret.encode()) for secret in self._secrets), default=0)

    def text(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def header_is_secret(self, name: str) -> bool:
        lowered = name.lower()
        return lowered in self._headers or any(word in lowered for word in _HEADER_WORDS)

    def headers(self, fields: Iterable[tuple[bytes, bytes]]) -> list[list[str]]:
        out = []
        for raw_name, raw_value in fields:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("utf-8", "replace")
            out.append([name, MASK if self.header_is_secret(name) else self.text(value)])
        return out

    def url(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.query:
            pairs = parse_qsl(parts.query, keep_blank_values=True)
            masked = [
                (name, MASK if self._param_is_secret(name) else value) for name, value in pairs
            ]
            parts = parts._replace(query=urlencode(masked, safe="*"))
        return self.text(urlunsplit(parts))

    def _param_is_secret(self, name: str) -> bool:
        lowered = name.lower()
        return lowered in self._params or any(word in lowered for word in _PARAM_WORDS)

    def body(self, data: bytes, limit: int) -> str:
        """The first *limit* bytes of a body, as text, secrets masked.

        *data* may run past *limit* by :attr:`longest`, so a secret that
        straddles the cut is masked whole. Nothing past the cut is kept: the
        head of a secret captured there matches no secret, and would show
        once the masks before it had shortened the text.
        """
        text = data.decode("utf-8", "replace")
        end = len(data[:limit].decode("utf-8", "replace"))
        straddling = True
        while straddling:
            straddling = False
            for secret in self._secrets:
                at = text.find(secret, max(0, end - len(secret) + 1))
                if at != -1 and at < end < at + len(secret):
                    end, straddling = at + len(secret), True
        return self.text(text[:end])
