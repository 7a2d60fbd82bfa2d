"""The admin bearer token for the relay API, and its rotation with a grace period."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

FILE_NAME = "admin_token"
PREVIOUS_FILE_NAME = "admin_token.previous"
MIN_CHARS = 16
TOKEN_PREFIX = "slcadm_"  # noqa: S105 - a prefix secret scanners can look for


def load_or_create_admin_token(
    data_dir: Path, token: str | None, token_file: Path | None
) -> tuple[str, bool]:
    """Return (token, created). Setting first, then token_file, then data_dir/admin_token,
    generated (mode 0600) on first start. A token under MIN_CHARS characters,
    from any source, is refused: a blank one would let a blank bearer in."""
    if token is not None:
        if len(token.strip()) < MIN_CHARS:
            raise ValueError(f"admin_token: the token must be at least {MIN_CHARS} characters")
        return token.strip(), False
    path = token_file or data_dir / FILE_NAME
    if path.exists():
        value = path.read_text().strip()
        if len(value) < MIN_CHARS:
            raise ValueError(
                f"admin_token_file {path}: the token must be at least {MIN_CHARS} characters"
            )
        return value, False
    if token_file is not None:
        raise ValueError(f"admin_token_file {path}: no such file")
    value = new_admin_token()
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_private(path, value, exclusive=True)
    return value, True


def new_admin_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _write_private(path: Path, text: str, *, exclusive: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(tmp if not exclusive else path, flags, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    if not exclusive:
        os.replace(tmp, path)


class AdminTokenConfigured(Exception):
    """The admin token comes from configuration; rotate it there."""


class AdminTokenReadOnly(Exception):
    """The admin token file cannot be replaced (a systemd credential, a read-only mount)."""


def _why_not_replaceable(path: Path) -> str | None:
    """Why a new token could not replace *path*, or None when it can.

    Replacing means writing a file beside it and renaming it over it, so the
    directory must be writable (access(2) also reports a read-only mount).
    """
    directory = path.parent
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"its directory {directory} is read-only for the relay"
    return None


class AdminTokens:
    """The current admin token, and the previous one during a rotation's grace.

    Only a hash of the previous token is kept (in ``admin_token.previous``,
    with its expiry), so a restart during the grace period keeps it working.
    """

    def __init__(
        self,
        current: str,
        *,
        data_dir: Path,
        token_file: Path | None,
        configured: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._current = ""
        self._current_digest = ""
        self.epoch: object = ""
        self._set_current(current)
        self._data_dir = data_dir
        self._token_file = token_file
        self._configured = configured
        self._clock = clock
        self._previous: tuple[str, float] | None = None
        previous = data_dir / PREVIOUS_FILE_NAME
        if previous.exists():
            try:
                saved = json.loads(previous.read_text())
                self._previous = (str(saved["sha256"]), float(saved["expires_at"]))
            except (ValueError, KeyError, TypeError):
                self._previous = None

    def __repr__(self) -> str:
        return f"<AdminTokens configured={self._configured} grace={self._previous is not None}>"

    @property
    def current(self) -> str:
        return self._current

    @property
    def configured(self) -> bool:
        return self._configured

    def _set_current(self, token: str) -> None:
        self._current = token
        self._current_digest = _digest(token)  # hashed once, not per request
        # ``epoch``: an opaque marker, compared by identity, that changes
        # whenever the current token does (a rotation, the cluster's token
        # adopted): what a caller's memo of a token it checked was valid
        # under. An attribute, not a property: the front reads it per request.
        self.epoch = self._current_digest

    def is_current(self, presented: str) -> bool:
        """Whether *presented* is the current token (not the previous one in its grace)."""
        return hmac.compare_digest(_digest(presented), self._current_digest)

    def state(self) -> dict[str, object]:
        """The token and the previous one's hash and expiry, as the cluster stores them."""
        previous = self._previous
        return {
            "token": self._current,
            "previous_sha256": previous[0] if previous else None,
            "previous_expires_at": previous[1] if previous else None,
        }

    def adopt(self, state: dict[str, object]) -> None:
        """Take the cluster's token (from ``state()`` of the relay that set it)."""
        token = state.get("token")
        if not isinstance(token, str) or len(token) < 16:
            raise ValueError("the cluster's admin token is malformed")
        previous, expires = state.get("previous_sha256"), state.get("previous_expires_at")
        if isinstance(previous, str) and isinstance(expires, int | float):
            self._previous = (previous, float(expires))
        else:
            self._previous = None
        if token != self._current:
            _write_private(self._token_file or self._data_dir / FILE_NAME, token)
        self._set_current(token)

    def actor(self, presented: str) -> str | None:
        """Who this bearer token is ('admin:<8 hex>'), or None when it is not valid."""
        digest = _digest(presented)
        ok_current = hmac.compare_digest(digest, self._current_digest)
        ok_previous = False
        if self._previous is not None:
            ok_previous = hmac.compare_digest(digest, self._previous[0])
            if ok_previous and self._clock() >= self._previous[1]:
                ok_previous = False
        return f"admin:{digest[:8]}" if ok_current or ok_previous else None

    def rotate(self, grace_seconds: float) -> str:
        """A new admin token; the old one keeps working for *grace_seconds*."""
        if self._configured:
            raise AdminTokenConfigured(
                "the admin token is set by admin_token / SLUICE_SERVER_ADMIN_TOKEN; "
                "change it there and restart"
            )
        target = self._token_file or self._data_dir / FILE_NAME
        # Checked before anything is written: a rotation that stored the
        # previous token's hash and then failed would leave a half-rotation.
        reason = _why_not_replaceable(target)
        if reason is not None:
            raise AdminTokenReadOnly(
                f"admin_token_file {target} cannot be replaced: {reason} (a systemd "
                "credential or a read-only mount). Nothing was changed. Put a new token "
                "into the file's source and restart the relay"
            )
        old, new = self._current, new_admin_token()
        previous_file = self._data_dir / PREVIOUS_FILE_NAME
        if grace_seconds > 0:
            self._previous = (_digest(old), self._clock() + grace_seconds)
            _write_private(
                previous_file,
                json.dumps({"sha256": self._previous[0], "expires_at": self._previous[1]}),
            )
        else:
            self._previous = None
            previous_file.unlink(missing_ok=True)
        _write_private(target, new)
        self._set_current(new)
        return new
