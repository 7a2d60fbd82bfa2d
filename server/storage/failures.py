"""Telling a failure of the database apart from a bug, for a clear answer."""

from __future__ import annotations

import traceback

from sqlalchemy.exc import SQLAlchemyError

# Code whose frames a database failure passes through: a timeout or a reset
# raised inside the driver is the database's, the same exception elsewhere
# is not.
_DRIVERS = ("asyncpg", "sqlalchemy", "aiosqlite", "sqlite3")


def is_database_failure(exc: BaseException) -> bool:
    """True when *exc* is the store failing (unreachable, stalled, gone),
    not a mistake in the relay: the caller may try again later."""
    if isinstance(exc, SQLAlchemyError):
        return True
    if not isinstance(exc, (TimeoutError, OSError)) and type(exc).__module__.split(".")[0] not in (
        _DRIVERS
    ):
        return False
    return any(
        frame.f_globals.get("__name__", "").split(".")[0] in _DRIVERS
        for frame, _ in traceback.walk_tb(exc.__traceback__)
    )
