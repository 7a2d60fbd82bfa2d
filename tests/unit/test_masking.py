"""Secrets are masked before anything is shortened or escaped: no piece of
one survives into a problem detail, a stored test result or a log line."""

from __future__ import annotations

import json
import urllib.parse

from server.connections.model import Connection
from server.proxy.auth.base import describe as _describe
from server.proxy.engine import Handle
from server.proxy.success_path import ping_verdict
from sluice.logs import SecretMasker

# 80 characters, as the refresh token an API echoed in the review.
REFRESH = "rt_" + "".join(chr(ord("a") + i % 26) for i in range(77))
# One that JSON and repr() escape: a quote, a backslash and a non-ASCII letter.
ODD = 'sé"cret\\value-' + "z" * 20


def _handle(*secrets: str) -> Handle:
    connection = Connection.model_validate(
        {"name": "t", "mode": "cloud", "http": {"base_uri": "https://api.example/"}}
    )
    return Handle(id="con_x", connection=connection, masks=list(secrets))


def _no_piece_of(secret: str, text: str, piece: int = 8) -> None:
    for start in range(len(secret) - piece + 1):
        assert secret[start : start + piece] not in text, (secret[start : start + piece], text)


def test_a_long_secret_echoed_in_a_refresh_answer_is_masked_whole() -> None:
    raw = json.dumps({"error": "expired", "refresh_token": REFRESH, "hint": REFRESH}).encode()
    shown = _describe(raw, _handle(REFRESH))
    assert "refresh_token=" in shown
    _no_piece_of(REFRESH, shown)


def test_a_long_secret_in_a_body_that_is_not_json_is_masked_whole() -> None:
    raw = (b"x" * 100) + REFRESH.encode() + b" and more"
    _no_piece_of(REFRESH, _describe(raw, _handle(REFRESH)))


def test_escaped_forms_of_a_secret_are_masked() -> None:
    raw = json.dumps({"token": ODD, "list": [ODD]}).encode()
    shown = _describe(raw, _handle(ODD))
    assert "cret" not in shown, shown
    _no_piece_of(json.dumps(ODD)[1:-1], shown)


def test_a_ping_verdict_shows_a_masked_value_not_its_head() -> None:
    body = json.dumps({"status": REFRESH}).encode()
    ok, message = ping_verdict(
        200, body, "application/json", "status", ["up"], mask=_handle(REFRESH).mask
    )
    assert not ok
    _no_piece_of(REFRESH, message)


def test_the_log_masker_masks_json_escaped_and_percent_encoded_forms() -> None:
    masker = SecretMasker()
    masker.add(ODD)
    line = " ".join(
        [json.dumps({"t": ODD}), repr(ODD), urllib.parse.quote(ODD, safe=""), f"url=?k={ODD}"]
    )
    masked = masker.mask(line)
    assert "cret" not in masked, masked
    assert masked.count("***") == 4
