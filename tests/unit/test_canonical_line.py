"""The relay's line per proxied request (``server.proxy.exchange.canonical_line``)
costs nothing when info is off: no structlog call, no arguments built (a call
at a level that is off still looks the logger up and runs three Python
functions, for every request)."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from server.proxy.exchange import canonical_line
from sluice.logs import SecretMasker, configure_logging
from tests.support.capture import SINK


@contextmanager
def logging_at(level: str) -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("json", level, masker=SecretMasker(), stream=out, cache=False)
    try:
        yield out
    finally:
        configure_logging("json", "debug", masker=SecretMasker(), stream=SINK, cache=False)


def python_calls(run: Any) -> list[str]:
    """The Python functions *run* calls (their files), via sys.setprofile."""
    called: list[str] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            called.append(frame.f_code.co_filename)

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return called


def _line() -> None:
    canonical_line("c1", "on_premise", "GET", 200, 12, time.perf_counter())


def test_no_structlog_call_while_info_is_off() -> None:
    with logging_at("warning") as out:
        called = python_calls(_line)
    assert [f for f in called if "structlog" in f] == []
    assert out.getvalue() == ""


def test_the_line_is_written_while_info_is_on() -> None:
    with logging_at("info") as out:
        _line()
    record = json.loads(out.getvalue().splitlines()[-1])
    assert record["event"] == "proxied"
    assert (record["connection"], record["status"], record["bytes_down"]) == ("c1", 200, 12)
