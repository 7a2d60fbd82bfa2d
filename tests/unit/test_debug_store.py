"""Debug-log storage: bounded per connection, deleted after the retention;
the masker on its own."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.connections.model import Connection
from server.proxy.debug_log import BODY_PREFIX, Recording
from server.proxy.engine import Handle
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
    assert masker.body(b"x" * 6 + b"s3cr3t/value", 8) == "xxxxxx***"


SECRET = "s3cr3t/value-" + "v" * 20


def _recorded_body(body: bytes) -> str:
    connection = Connection.model_validate(
        {"name": "t", "mode": "cloud", "http": {"base_uri": "https://api.example/"}}
    )
    recording = Recording(Handle(id="con_x", connection=connection, masks=[SECRET]), "POST", "/")
    assert recording.body(body) is body
    text: str = recording.entry()["request"]["body"]
    return text


def _no_piece_of(secret: str, text: str, piece: int = 6) -> None:
    for start in range(len(secret) - piece + 1):
        assert secret[start : start + piece] not in text, (secret[start : start + piece], text)


def test_no_piece_of_a_secret_past_the_8_kib_cut_is_kept() -> None:
    # The secret masked early shortens the text; its last appearance starts
    # past 8 KiB, only its head captured: that head must not move into view.
    cap = BODY_PREFIX + Masker([SECRET]).longest
    head = SECRET.encode() * 3
    shrunk = head + b"x" * (cap - 20 - len(head)) + SECRET.encode() + b" tail"
    shown = _recorded_body(shrunk)
    assert shown.startswith("******")
    _no_piece_of(SECRET, shown)
    # Two-byte letters: 8 KiB of them is half as many characters, and the
    # cut is at 8 KiB of the body, not 8,192 characters.
    accented = "é".encode() * (BODY_PREFIX // 2) + SECRET.encode() + b" tail"
    shown = _recorded_body(accented)
    assert shown == "é" * (BODY_PREFIX // 2)
    # A secret straddling the cut is masked whole, not cut.
    straddling = b"x" * (BODY_PREFIX - 5) + SECRET.encode() + b" tail"
    assert _recorded_body(straddling) == "x" * (BODY_PREFIX - 5) + "***"
