"""Traffic a fragile API can bear: rate limits waited out, a concurrency cap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from server.relay import Relay
from tests.conftest import relay_settings
from tests.support.capture import APIClient, remember_secret
from tests.support.fragile_api import FragileAPI
from tests.support.waiting import wait_until

TOKEN = "tok-" + "r" * 20


@pytest.fixture
async def open_relay(tmp_path: Path) -> AsyncIterator[Relay]:
    relay = await Relay.start(relay_settings(tmp_path, allow_private_destinations=True))
    remember_secret(relay.admin_token, TOKEN)
    try:
        yield relay
    finally:
        await relay.close()


@pytest.fixture
async def client(open_relay: Relay) -> AsyncIterator[APIClient]:
    async with aiohttp.ClientSession() as session:
        yield APIClient(session, open_relay.http_base, open_relay.admin_token)


async def _connection(client: APIClient, api: FragileAPI, **http: Any) -> str:
    document = {
        "name": "fragile",
        "mode": "cloud",
        "http": {
            "base_uri": api.base,
            "auth": {"type": "token", "token": TOKEN, "scheme": "Bearer"},
            **http,
        },
    }
    created = await client.call("POST", "/v1/connections", json_body=document)
    assert created.status == 201, created.text
    conn_id: str = created.body["id"]
    return conn_id


@pytest.mark.parametrize("style", ["seconds", "date"])
async def test_retry_header_is_waited_out_and_waiting_callers_do_not_hammer(
    client: APIClient, fragile: FragileAPI, style: str
) -> None:
    fragile.style = style  # type: ignore[assignment]
    fragile.limit_next = 1
    conn_id = await _connection(client, fragile, rate_limit={"max_retries": 3})
    path = f"/v1/connections/{conn_id}/proxy/limited"
    first = asyncio.ensure_future(client.call("GET", path))
    await wait_until(lambda: fragile.limited == 1, what="the first limited answer")
    # Five more callers arrive while the connection is limited: they wait too.
    others = [asyncio.ensure_future(client.call("GET", path)) for _ in range(5)]
    answers = await asyncio.gather(first, *others)
    assert [a.status for a in answers] == [200] * 6
    assert answers[0].headers["Sluice-Retries"] == "1"
    assert all(a.headers["Sluice-Retries"] in ("0", "1") for a in answers[1:])
    assert fragile.early == 0, "a request reached the API inside its limit window"
    assert fragile.limited == 1
    # Every request after the first waited for the end of the window.
    assert all(t >= fragile.window_end for t in fragile.arrivals[1:])
    assert len(fragile.arrivals) == 7  # six callers, one of them sent twice


async def test_limit_in_a_200_body_is_backed_off(client: APIClient, fragile: FragileAPI) -> None:
    fragile.style = "body"
    fragile.limit_next = 2
    conn_id = await _connection(
        client,
        fragile,
        rate_limit={"fail_path": "error", "fail_values": ["rate_limited"], "max_retries": 3},
    )
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/limited")
    assert answer.status == 200
    assert answer.body == {"ok": True, "error": None}
    assert answer.headers["Sluice-Retries"] == "2"
    assert fragile.limited == 2


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_limit_in_a_compressed_200_body_is_backed_off(
    client: APIClient, fragile: FragileAPI, coding: str
) -> None:
    # The caller asks for compressed answers (aiohttp does by default), and
    # the API compresses: the relay still sees the fail value.
    fragile.style = "body"
    fragile.limit_next = 1
    fragile.compress = web.ContentCoding(coding)
    conn_id = await _connection(
        client,
        fragile,
        rate_limit={"fail_path": "error", "fail_values": ["rate_limited"], "max_retries": 3},
    )
    answer = await client.call(
        "GET",
        f"/v1/connections/{conn_id}/proxy/limited",
        headers={"Accept-Encoding": "gzip, deflate"},
    )
    assert answer.status == 200
    assert answer.headers["Content-Encoding"] == coding  # passed on as the API sent it
    assert answer.body == {"ok": True, "error": None}
    assert answer.headers["Sluice-Retries"] == "1"
    assert fragile.limited == 1
    assert len(fragile.arrivals) == 2


async def test_retries_run_out_and_the_last_answer_is_passed_on(
    client: APIClient, fragile: FragileAPI
) -> None:
    fragile.style = "body"
    fragile.limit_next = 10
    conn_id = await _connection(
        client,
        fragile,
        rate_limit={"fail_path": "error", "fail_values": ["rate_limited"], "max_retries": 1},
    )
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/limited")
    assert answer.status == 200
    assert answer.body == {"error": "rate_limited"}
    assert answer.headers["Sluice-Retries"] == "1"
    assert fragile.limited == 2


async def test_retries_run_out_on_a_429_and_it_is_passed_on_unchanged(
    client: APIClient, fragile: FragileAPI
) -> None:
    fragile.limit_next = 5
    conn_id = await _connection(client, fragile, rate_limit={"max_retries": 1})
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/limited")
    assert answer.status == 429
    assert answer.body == {"error": "slow down"}
    assert answer.headers["Retry-After"] == "1"
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["Sluice-Retries"] == "1"
    assert fragile.limited == 2
    assert fragile.early == 0


async def test_a_wait_longer_than_max_wait_is_not_waited(
    client: APIClient, fragile: FragileAPI
) -> None:
    fragile.limit_next = 1
    conn_id = await _connection(client, fragile, rate_limit={"max_wait_seconds": 0.5})
    began = time.monotonic()
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/limited")
    assert answer.status == 429
    assert answer.headers["Sluice-Retries"] == "0"
    assert time.monotonic() - began < 1


async def test_a_large_streamed_body_gets_the_limit_at_once(
    client: APIClient, fragile: FragileAPI
) -> None:
    conn_id = await _connection(client, fragile, rate_limit={})

    async def five_mib() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b"x" * 65536

    began = time.monotonic()
    answer = await client.call("POST", f"/v1/connections/{conn_id}/proxy/upload", data=five_mib())
    assert answer.status == 429
    assert answer.body == {"error": "slow down", "size": 5 * 1024 * 1024}
    assert answer.headers["Sluice-Retries"] == "0"
    assert answer.headers["Retry-After"] == "30"
    assert fragile.uploads == 1
    assert time.monotonic() - began < 10


async def test_without_rate_limit_settings_a_429_goes_straight_to_the_caller(
    client: APIClient, fragile: FragileAPI
) -> None:
    fragile.limit_next = 1
    conn_id = await _connection(client, fragile)
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/limited")
    assert answer.status == 429
    assert "Sluice-Retries" not in answer.headers


async def test_concurrency_cap_holds_and_everyone_is_served(
    client: APIClient, fragile: FragileAPI, open_relay: Relay
) -> None:
    fragile.delay = 0.1
    conn_id = await _connection(client, fragile, concurrency_level=3)
    path = f"/v1/connections/{conn_id}/proxy/slow"
    calls = asyncio.gather(*(client.call("GET", path) for _ in range(30)))
    # While they run, the gauges show the cap full and the rest queued.
    seen: set[tuple[float, float]] = set()
    while not calls.done():
        text = (await client.call("GET", "/metrics")).text
        seen.add(
            (
                _series(text, "sluice_connection_in_flight", conn_id),
                _series(text, "sluice_connection_queued", conn_id),
            )
        )
    answers = await calls
    assert [a.status for a in answers] == [200] * 30
    assert fragile.served == 30
    assert fragile.peak == 3
    assert max(in_flight for in_flight, _ in seen) == 3
    assert max(queued for _, queued in seen) > 0
    metrics = await client.call("GET", "/metrics")
    assert f'sluice_connection_queue_wait_seconds_count{{connection="{conn_id}"}}' in metrics.text
    # All done: nothing in flight, nothing queued.
    assert f'sluice_connection_in_flight{{connection="{conn_id}"}} 0.0' in metrics.text
    assert f'sluice_connection_queued{{connection="{conn_id}"}} 0.0' in metrics.text


def _series(text: str, name: str, conn_id: str) -> float:
    """The value of *name* for *conn_id* in a /metrics text (0 before it exists)."""
    prefix = f'{name}{{connection="{conn_id}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


async def test_short_queue_timeout_answers_concurrency_limited(
    client: APIClient, fragile: FragileAPI
) -> None:
    fragile.delay = 1.0
    conn_id = await _connection(client, fragile, concurrency_level=1, queue_timeout_seconds=0.2)
    path = f"/v1/connections/{conn_id}/proxy/slow"
    answers = await asyncio.gather(*(client.call("GET", path) for _ in range(5)))
    statuses = sorted(a.status for a in answers)
    assert statuses == [200, 503, 503, 503, 503]
    limited = [a for a in answers if a.status == 503]
    assert all(a.body["type"] == "concurrency_limited" for a in limited)
    assert "concurrency_level" in limited[0].body["detail"]
    assert fragile.peak == 1


async def _gates(client: APIClient) -> float:
    metrics = await client.call("GET", "/metrics")
    for line in metrics.text.splitlines():
        if line.startswith("sluice_rate_limit_gates "):
            return float(line.split()[-1])
    raise AssertionError("no sluice_rate_limit_gates in /metrics")


async def test_a_deleted_connection_leaves_no_gate_behind(
    client: APIClient, fragile: FragileAPI
) -> None:
    fragile.limit_next = 1
    fragile.retry_seconds = 30
    conn_id = await _connection(client, fragile, rate_limit={"max_retries": 0})
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/limited")
    assert answer.status == 429  # no retries allowed: passed on, the gate closed for 30 s
    assert await _gates(client) == 1
    assert (await client.call("DELETE", f"/v1/connections/{conn_id}")).status == 204
    assert await _gates(client) == 0


async def test_editing_rate_limit_opens_the_gate(client: APIClient, fragile: FragileAPI) -> None:
    fragile.limit_next = 1
    fragile.retry_seconds = 30
    conn_id = await _connection(client, fragile, rate_limit={"max_retries": 0})
    path = f"/v1/connections/{conn_id}/proxy/limited"
    assert (await client.call("GET", path)).status == 429
    edited = await client.call(
        "PATCH",
        f"/v1/connections/{conn_id}",
        json_body={"http": {"rate_limit": {"max_retries": 0, "fail_status": 503}}},
    )
    assert edited.status == 200, edited.text
    # The new rule starts with an open gate: the request goes at once (and
    # the API's 429, no limit under the new rule, comes straight back).
    began = time.monotonic()
    answer = await client.call("GET", path)
    assert answer.status == 429
    assert time.monotonic() - began < 5
    assert fragile.early == 1
    assert await _gates(client) == 0


async def test_a_chunked_limit_in_a_200_body_is_recognised(
    client: APIClient, fragile: FragileAPI
) -> None:
    fragile.limit_next = 2
    conn_id = await _connection(
        client,
        fragile,
        rate_limit={"fail_path": "error", "fail_values": ["rate_limited"], "max_retries": 3},
    )
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/chunked")
    assert answer.status == 200
    assert answer.body == {"ok": True, "error": None}
    assert answer.headers["Sluice-Retries"] == "2"
    assert fragile.limited == 2
    assert len(fragile.arrivals) == 3


async def test_a_chunked_answer_past_1_mib_streams_through_unchecked(
    client: APIClient, fragile: FragileAPI
) -> None:
    conn_id = await _connection(
        client,
        fragile,
        rate_limit={"fail_path": "error", "fail_values": ["rate_limited"], "max_retries": 3},
    )
    pad = 2 * 1024 * 1024
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/chunked?pad={pad}")
    assert answer.status == 200
    assert answer.body == {"error": "rate_limited", "pad": "x" * pad}
    assert answer.headers["Sluice-Retries"] == "0"
    assert answer.headers.get("Transfer-Encoding") == "chunked"
    assert len(fragile.arrivals) == 1


async def test_bad_traffic_settings_are_refused_naming_the_field(
    client: APIClient, fragile: FragileAPI
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"concurrency_level": 0}, "http.concurrency_level"),
        ({"concurrency_level": 101}, "http.concurrency_level"),
        ({"queue_timeout_seconds": 0}, "http.queue_timeout_seconds"),
        ({"rate_limit": {"max_retries": 11}}, "http.rate_limit.max_retries"),
        ({"rate_limit": {"max_wait_seconds": 0}}, "http.rate_limit.max_wait_seconds"),
        ({"rate_limit": {"fail_status": 200}}, "http.rate_limit.fail_status"),
        ({"rate_limit": {"fail_path": "error"}}, "http.rate_limit.fail_values"),
        ({"rate_limit": {"retry_header": "Retry After"}}, "http.rate_limit.retry_header"),
    ]
    for http, field in cases:
        document = {"name": "bad", "mode": "cloud", "http": {"base_uri": fragile.base, **http}}
        refused = await client.call("POST", "/v1/connections", json_body=document)
        assert refused.status == 422, (http, refused.text)
        assert [e["field"] for e in refused.body["errors"]] == [field], http
        assert refused.body["errors"][0]["message"]
    assert (await client.call("GET", "/v1/connections")).body["connections"] == []


async def test_a_streamed_body_within_1_mib_is_sent_again_whole(
    client: APIClient, fragile: FragileAPI
) -> None:
    fragile.limit_next = 1
    conn_id = await _connection(client, fragile, rate_limit={})
    piece = bytes(range(256)) * 256  # 64 KiB

    async def half_mib() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield piece

    answer = await client.call("POST", f"/v1/connections/{conn_id}/proxy/limited", data=half_mib())
    assert answer.status == 200
    assert answer.headers["Sluice-Retries"] == "1"
    assert fragile.bodies == [piece * 8, piece * 8]
