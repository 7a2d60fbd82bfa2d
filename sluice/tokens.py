"""Agent access tokens: ``slc_<agent id>_<secret>``.

The ``slc_`` prefix lets secret scanners find leaked tokens. The relay keeps
only a SHA-256 hash of the secret part: secrets are 238 random bits, so a
slow password hash would add latency and no safety.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from typing import Final

TOKEN_PREFIX: Final = "slc_"  # noqa: S105 - a prefix, not a password
AGENT_ID_PREFIX: Final = "agt_"
_ID_ALPHABET: Final = string.ascii_lowercase + string.digits
_SECRET_ALPHABET: Final = string.ascii_letters + string.digits
_ID_LEN: Final = 16
_SECRET_LEN: Final = 40

_TOKEN_RE: Final = re.compile(rf"^slc_(agt_[a-z0-9]{{{_ID_LEN}}})_([A-Za-z0-9]{{{_SECRET_LEN}}})$")


class InvalidTokenFormat(ValueError):
    """The text is not shaped like a Sluice agent token (never says what it was)."""


@dataclass(frozen=True, slots=True)
class AgentToken:
    agent_id: str
    secret: str

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}{self.agent_id}_{self.secret}"

    def __repr__(self) -> str:
        return f"AgentToken(agent_id={self.agent_id!r}, secret=***)"

    @classmethod
    def parse(cls, text: str) -> AgentToken:
        match = _TOKEN_RE.match(text.strip())
        if match is None:
            raise InvalidTokenFormat(
                "not a Sluice agent token: expected 'slc_agt_<16 chars>_<40 chars>' "
                "as printed by 'sluice-server agents create'"
            )
        return cls(agent_id=match.group(1), secret=match.group(2))

    def secret_hash(self) -> str:
        return hash_secret(self.secret)


def new_agent_id() -> str:
    return AGENT_ID_PREFIX + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LEN))


def new_token(agent_id: str) -> AgentToken:
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(_SECRET_LEN))
    return AgentToken(agent_id=agent_id, secret=secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Constant-time check of a presented secret against a stored hash."""
    return hmac.compare_digest(hash_secret(secret).encode(), stored_hash.encode())
