"""The one redaction processor: secrets never reach a log line."""

from __future__ import annotations

import io
import json

import structlog

from sluice.logs import SecretMasker, configure_logging
from sluice.tokens import new_agent_id, new_token


def _render(masker: SecretMasker, **event: object) -> str:
    out = masker(None, "info", dict(event))
    return json.dumps(out, default=str)


def test_registered_secrets_are_masked_everywhere() -> None:
    masker = SecretMasker()
    masker.add("hunter2-hunter2", None, "abc")  # too-short values are not masked
    line = _render(
        masker,
        event="x",
        msg="pw=hunter2-hunter2",
        nested={"list": ["hunter2-hunter2"]},
        exc=ValueError("bad hunter2-hunter2"),
    )
    assert "hunter2-hunter2" not in line
    assert line.count("***") == 3


def test_token_shapes_are_masked_without_registration() -> None:
    token = str(new_token(new_agent_id()))
    admin = "slcadm_" + "Q" * 43
    line = _render(SecretMasker(), event="oops", detail=f"got {token} and {admin}")
    assert token not in line
    assert admin not in line


def test_configured_logging_masks_and_emits_json() -> None:
    buf = io.StringIO()
    masker = SecretMasker()
    masker.add("s3cret-value-1")
    configure_logging("json", "info", masker=masker, stream=buf)
    try:
        structlog.get_logger("t").info("hello", token="s3cret-value-1")
    finally:
        from tests.support.capture import SINK

        configure_logging("json", "debug", masker=SecretMasker(), stream=SINK, cache=False)
    record = json.loads(buf.getvalue().splitlines()[-1])
    assert record["token"] == "***"
    assert record["event"] == "hello"
