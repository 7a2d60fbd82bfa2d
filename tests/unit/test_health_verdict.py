"""The ping's fail path and error path, on top of the success path."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from server.connections.model import Ping
from server.proxy.success_path import health_verdict


def _verdict(status: int, document: object, **ping: object) -> tuple[bool, str]:
    rules = Ping.model_validate({"relative_uri": "/health", **ping})
    return health_verdict(status, json.dumps(document).encode(), "application/json", rules)


def test_fail_value_fails_a_200() -> None:
    assert _verdict(200, {"state": "degraded"}, fail_path="state", fail_values=["degraded"]) == (
        False,
        "HTTP 200, fail path 'state' is \"degraded\"",
    )
    assert _verdict(200, {"state": "fine"}, fail_path="state", fail_values=["degraded"])[0]


def test_error_path_is_the_message_of_a_failure() -> None:
    ok, message = _verdict(
        500, {"errors": [{"message": "db down"}]}, error_path="errors[0].message"
    )
    assert not ok
    assert message == "db down"
    # Only failures take it: a pass keeps its own message.
    ok, message = _verdict(200, {"errors": [{"message": "x"}]}, error_path="errors[0].message")
    assert ok
    assert message == "the API answered HTTP 200"


def test_ping_body_needs_a_method_that_sends_one() -> None:
    with pytest.raises(ValidationError) as caught:
        Ping.model_validate({"relative_uri": "/graphql", "body": "{}"})
    assert caught.value.errors()[0]["loc"] == ("body",)
    with pytest.raises(ValidationError) as caught:
        Ping.model_validate({"relative_uri": "/h", "fail_values": ["x"]})
    assert caught.value.errors()[0]["loc"] == ("fail_values",)
