"""The admin bearer token for the relay API."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

FILE_NAME = "admin_token"


def load_or_create_admin_token(
    data_dir: Path, token: str | None, token_file: Path | None
) -> tuple[str, bool]:
    """Return (token, created). Setting first, then token_file, then data_dir/admin_token,
    generated (mode 0600) on first start."""
    if token:
        return token.strip(), False
    path = token_file or data_dir / FILE_NAME
    if path.exists():
        value = path.read_text().strip()
        if len(value) < 16:
            raise ValueError(f"admin_token_file {path}: the token must be at least 16 characters")
        return value, False
    if token_file is not None:
        raise ValueError(f"admin_token_file {path}: no such file")
    value = "slcadm_" + secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    return value, True


def token_matches(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())
