"""Debug-log storage: bounded per connection, deleted after the retention;
the masker on its own."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.proxy.masking import Masker
from server.settings import sqlite_url
from server.storage.store import Store, utcnow

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(tmp_path: Path, database: str | None) -> AsyncIterator[Store]:
    s = await Store.open(database or sqlite_url(tmp_path / "s.db"))
    try:
        yield s
    finally:
        await s.close()


async def test_entries_are_bounded_and_purged_after_the_window(store: Store) -> None:
    now = utcnow()
    await store.create_connection("con_a", "a", "cloud", None, "{}")
    assert await store.debug.open_window("con_nosuch", now, now) is None
    await store.debug.open_window("con_a", now, now + dt.timedelta(minutes=5))
    for i in range(7):
        await store.debug.append("con_a", now, {"n": i}, keep=5)
    page = await store.debug.page("con_a", limit=10)
    assert [e["n"] for e in page] == [6, 5, 4, 3, 2]
    # Still open: a purge leaves it alone.
    assert await store.debug.purge(now + dt.timedelta(minutes=1)) == 0
    await store.debug.close_window("con_a", now)
    assert await store.debug.purge(now + dt.timedelta(seconds=1)) == 5
    assert await store.debug.page("con_a", limit=10) == []
    assert await store.debug.window("con_a") is None


def test_masker_masks_headers_params_and_secret_values() -> None:
    masker = Masker(["s3cr3t/value", "abc"], header_names=["X-Custom-Auth"], param_names=["k"])
    assert masker.headers([(b"X-Custom-Auth", b"v"), (b"Accept", b"s3cr3t/value!")]) == [
        ["X-Custom-Auth", "***"],
        ["Accept", "***!"],
    ]
    assert masker.url("https://h/p?k=1&access_token=2&q=s3cr3t%2Fvalue&abc=abc") == (
        "https://h/p?k=***&access_token=***&q=***&abc=abc"
    )
    # A secret straddling the cut is masked before the cut is made.
    assert masker.body(b"x" * 6 + b"s3cr3t/value", 8) == "xxxxxx**"
