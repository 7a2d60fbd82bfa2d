"""The relay's data dir and database file, private to the relay's user
whatever the umask (systemd's UMask= covers only the packaged unit)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
# SQLite's companions of a database file (they hold its data too).
_SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def private_dir(path: Path) -> None:
    """Create *path* (and parents) if missing; make it 0700 either way."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        path.chmod(DIR_MODE)


def private_sqlite_file(database: str | None) -> None:
    """Create the SQLite file *database* 0600 before SQLite does (it would use
    the umask), and make an existing one and its companions 0600."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    for suffix in _SQLITE_SUFFIXES:
        companion = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            if companion.stat().st_mode & 0o777 != FILE_MODE:
                companion.chmod(FILE_MODE)
