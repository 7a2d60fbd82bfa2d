"""A repeated answer costs the relay no header work (issue 22): when an API
answers a kept-alive caller's repeated request with the same head (Date
changes once a second), the relay neither parses it again
(``server.tunnel.http1.AnswerMemo``) nor makes the caller's fields and head
anew (``server.proxy.exchange.answer_headers``, ``FrontProtocol.head``). The
caller still gets exactly what a fresh answer gives: hop-by-hop fields
dropped, Location pointed at the proxy route, the connection named, the
framing, and ``Connection: close`` when it asked for that.

The relay runs in this process: ``sys.setprofile`` counts the Python calls it
makes into its header code while the caller sends its requests.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import Counter
from types import FrameType
from urllib.parse import urlsplit

import pytest

from sluice import logs
from tests.conftest import AgentFactory
from tests.support.capture import APIClient, remember_secret
from tests.support.raw_api import RawAPI, raw_api

TOKEN = "repeated-answers-token-" + "r" * 16
BODY = b'{"items": [1, 2, 3]}'
# What the relay's header work runs: parsing the API's fields (llhttp's
# callbacks), choosing the caller's fields; writing the caller's head lowers
# its fields once in the front (a C call, made from FrontProtocol's code).
HEADER_WORK = {"on_header", "answer_fields", "lowered_names", "_kept"}
# Nor a call per answer for what the caller inlines: the error test of the
# traffic stats and the count of its minute, the canonical log line while
# info is off, the fast path's size test and count of the answer, the admin
# token's epoch (an attribute), the window tuner's grown and held_back (its
# ``received`` says whether the share may size the window), the send path's
# test of its cipher (``_send_data_fast`` makes it inline) (qualified names).
INLINED = {
    "is_error",
    "_Minute.add",
    "canonical_line",
    "is_small",
    "counted",
    "AdminTokens.epoch",
    "WindowTuner.grown",
    "WindowTuner.held_back",
    "_gcm_ready",
    # Properties (a Python call the interpreter cannot inline: ~160 ns each
    # in 3.11) the pool and the fast path look at once a request: the
    # stream's closed (from StreamPool._take), the caller's hung_up; and the
    # answer's _finish, which the stream's _complete_exchange makes inline.
    "Http1Stream.closed",
    "FrontProtocol.hung_up",
    "Http1Response._finish",
}
# Nor does the relay's code ask for the running loop per request: in Python
# 3.11 each ask is a getpid system call (the stream pool reads the stream's
# loop instead). C calls made from the relay's own modules.
RELAY_CODE = "/server/"
RUNNING_LOOP = "get_running_loop"
# The stream's own Python calls for a repeated exchange (sending the request,
# taking the answer in, handing the stream back, the caller taking the body),
# at most; more is work that a repeat does not need (the pool reads the
# stream's ``bound_loop``, not its ``loop`` property; the head timer and
# resume_reading are called only when they have something to do; a body
# that completes its answer is not fed through ``_feed``, and the whole
# answer is taken and released in one call). 9 while the pool asked the
# stream's closed property and the answer's _finish was a call of its own.
HTTP1 = "server/tunnel/http1.py"
HTTP1_CALLS = 7
# And the front's, for reading the caller's head and writing the answer (the
# fast path tried and the answer written inline, not in methods of their own).
# 8 while the fast path asked the caller's hung_up property.
FRONT = "server/proxy/front.py"
FRONT_CALLS = 7
# And the channel transport's under the stream: the answer fed on (the
# stream's looks at whether the channel is closing, and its request written,
# go to the channel itself).
CHANNEL = "server/tunnel/channel_transport.py"
CHANNEL_CALLS = 1
# And the auth scheme's, for the connection's token: none, the repeated
# request's head is kept whole with its grant (``PreparedRequests.requests``).
AUTH = "server/proxy/auth/"
AUTH_CALLS = 0
# Nor a look at the kept target or head: one look at the kept request, inline.
PREPARED = "server/proxy/prepared.py"
PREPARED_CALLS = 0
# And the fast path's: the request sent (try_fast), its answer taken (the
# callback). 3 while each request made an object of a class of its own to
# hold the exchange (its __init__ a call the interpreter cannot inline; a
# functools.partial holds it since).
FAST = "server/proxy/fast_path.py"
FAST_CALLS = 2


def api_answer(port: int) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\n"
        b"Date: Sat, 05 Dec 2026 00:00:00 GMT\r\n"
        b"Content-Type: application/json\r\n"
        b"Keep-Alive: timeout=60\r\n"
        b"Location: http://127.0.0.1:%d/v1/items/7\r\n"
        b"X-Request-Cost: 3\r\n"
        b"Content-Length: %d\r\n\r\n" % (port, len(BODY))
    ) + BODY


async def _plain_connection(client: APIClient, name: str, agent_id: str, port: int) -> str:
    """An on-premise connection, without auth, to the raw API on *port*."""
    created = await client.call(
        "POST",
        "/v1/connections",
        json_body={
            "name": name,
            "mode": "on_premise",
            "agent_id": agent_id,
            "http": {"base_uri": f"http://127.0.0.1:{port}/v1"},
        },
    )
    assert created.status == 201, created.text
    return str(created.body["id"])


async def test_a_repeated_answer_is_passed_on_without_header_work(
    client: APIClient, start_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Info off, as a relay under load runs: no canonical line is made.
    monkeypatch.setattr(logs, "min_level", logging.WARNING)

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        writer.write(api_answer(raw.port))
        await writer.drain()
        return True

    async for raw in raw_api(answer):
        _, token = await start_agent([f"127.0.0.1:{raw.port}"])
        remember_secret(TOKEN)
        created = await client.call(
            "POST",
            "/v1/connections",
            json_body={
                "name": "repeated answers",
                "mode": "on_premise",
                "agent_id": token.agent_id,
                "http": {
                    "base_uri": f"http://127.0.0.1:{raw.port}/v1",
                    "auth": {"type": "token", "token": TOKEN, "scheme": "Bearer"},
                },
            },
        )
        assert created.status == 201, created.text
        conn_id = created.body["id"]
        first, again, closing, calls = await _repeat(client, conn_id)

    head = first[-1]
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert b"\r\nDate: Sat, 05 Dec 2026 00:00:00 GMT\r\n" in head
    assert f"\r\nLocation: /v1/connections/{conn_id}/proxy/items/7\r\n".encode() in head
    assert f"\r\nSluice-Connection: {conn_id}\r\n".encode() in head
    assert b"\r\nX-Request-Cost: 3\r\n" in head
    assert b"\r\nContent-Length: %d\r\n" % len(BODY) in head
    assert b"keep-alive" not in head.lower()
    assert b"connection: close" not in head.lower()
    assert again == [head] * 10
    assert closing == head[:-2] + b"Connection: close\r\n\r\n"
    budget = Counter(
        {
            HTTP1: HTTP1_CALLS,
            FRONT: FRONT_CALLS,
            AUTH: AUTH_CALLS,
            CHANNEL: CHANNEL_CALLS,
            PREPARED: PREPARED_CALLS,
            FAST: FAST_CALLS,
        }
    )
    # None of the header work, and the modules within their budgets, for all
    # but one or two requests: the connection's cached settings may expire
    # under one (every 2 s; it then goes the general way, as it should).
    within = [request for request in calls if request - budget == Counter()]
    assert len(within) >= len(calls) - 2, calls


async def _repeat(
    client: APIClient, conn_id: str
) -> tuple[list[bytes], list[bytes], bytes, list[Counter[str]]]:
    """On one caller connection: 3 requests to warm up, 10 counted (the
    relay's header work in each, its calls per module), one that asks to
    close. Their answer heads, and the counts."""
    front = urlsplit(client.base)
    assert front.hostname is not None
    reader, writer = await asyncio.open_connection(front.hostname, front.port)
    request = (
        f"GET /v1/connections/{conn_id}/proxy/items HTTP/1.1\r\n"
        f"Host: relay\r\nAuthorization: Bearer {client.token}\r\n"
    ).encode()

    async def call(last: bytes = b"") -> bytes:
        writer.write(request + last + b"\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert await reader.readexactly(len(BODY)) == BODY
        return head

    calls: list[Counter[str]] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        code = frame.f_code
        counts = calls[-1]
        if event == "call":
            for module in (HTTP1, FRONT, CHANNEL, PREPARED, FAST):
                if code.co_filename.endswith(module):
                    counts[module] += 1
            if AUTH in code.co_filename:
                counts[AUTH] += 1
        if event == "call" and (code.co_name in HEADER_WORK or code.co_qualname in INLINED):
            counts[code.co_name] += 1
        elif event == "c_call":
            name = getattr(arg, "__qualname__", "")
            if name == "bytes.lower" and code.co_qualname.startswith("FrontProtocol."):
                counts["front: bytes.lower"] += 1
            elif name == RUNNING_LOOP and RELAY_CODE in code.co_filename:
                counts[f"relay: {RUNNING_LOOP}"] += 1

    async def counted() -> bytes:
        calls.append(Counter())
        sys.setprofile(profile)
        try:
            return await call()
        finally:
            sys.setprofile(None)

    try:
        async with asyncio.timeout(20):
            first = [await call() for _ in range(3)]  # the stream and memos warm up
            again = [await counted() for _ in range(10)]
            closing = await call(b"Connection: close\r\n")
            assert await reader.read() == b""  # the relay closed as it said
    finally:
        writer.close()
    return first, again, closing, calls


async def test_an_equal_answer_from_another_stream_reuses_the_callers_head(
    client: APIClient, start_agent: AgentFactory
) -> None:
    """The same answer on another stream of the pool (at c=32 a caller's
    requests take whichever stream is idle) gives the caller's head made
    before: the front lowers no fields to make it again."""
    held = asyncio.Event()
    release = asyncio.Event()

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        if b" /v1/hold " in head:
            held.set()
            await release.wait()
        writer.write(api_answer(raw.port))
        await writer.drain()
        return True

    async for raw in raw_api(answer):
        _, token = await start_agent([f"127.0.0.1:{raw.port}"])
        conn_id = await _plain_connection(client, "another stream", token.agent_id, raw.port)
        first, again, lowered = await _on_another_stream(client, conn_id, raw, held, release)
    assert again == first[-1]
    assert lowered == Counter(), "the caller's head was made again"


async def _on_another_stream(
    client: APIClient, conn_id: str, raw: RawAPI, held: asyncio.Event, release: asyncio.Event
) -> tuple[list[bytes], bytes, Counter[str]]:
    """One caller's 3 warm-up requests on its stream, then one while another
    caller's request holds that stream: the heads, and the front's
    ``bytes.lower`` calls for the last."""
    front = urlsplit(client.base)
    assert front.hostname is not None
    caller = await asyncio.open_connection(front.hostname, front.port)
    other = await asyncio.open_connection(front.hostname, front.port)

    def request(path: str) -> bytes:
        return (
            f"GET /v1/connections/{conn_id}/proxy/{path} HTTP/1.1\r\n"
            f"Host: relay\r\nAuthorization: Bearer {client.token}\r\n\r\n"
        ).encode()

    async def call(path: str = "items") -> bytes:
        caller[1].write(request(path))
        head = await caller[0].readuntil(b"\r\n\r\n")
        assert await caller[0].readexactly(len(BODY)) == BODY
        return head

    lowered = Counter[str]()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if (
            event == "c_call"
            and getattr(arg, "__qualname__", "") == "bytes.lower"
            and frame.f_code.co_qualname.startswith("FrontProtocol.")
        ):
            lowered["front: bytes.lower"] += 1

    try:
        async with asyncio.timeout(20):
            first = [await call() for _ in range(3)]  # its stream and memos warm up
            connections = raw.connections
            # Another caller's request holds that stream: the next one takes
            # another stream (a new API connection), whose answer is the same.
            other[1].write(request("hold"))
            await held.wait()
            sys.setprofile(profile)
            try:
                again = await call()
            finally:
                sys.setprofile(None)
            assert raw.connections == connections + 1, "not on another stream"
            release.set()
            await other[0].readuntil(b"\r\n\r\n")
    finally:
        caller[1].close()
        other[1].close()
    return first, again, lowered


async def test_a_head_differing_only_in_set_cookie_is_made_anew(
    client: APIClient, start_agent: AgentFactory
) -> None:
    """Answers equal but for their Set-Cookie field (same status, length and
    Date): the caller gets each answer's own cookie, never the head memoised
    for the one before."""

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        cookie = head.split(b" ")[1].rsplit(b"/", 1)[1]  # the path's last part
        writer.write(
            b"HTTP/1.1 200 OK\r\n"
            b"Date: Sat, 05 Dec 2026 00:00:00 GMT\r\n"
            b"Set-Cookie: session=%b\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (cookie, len(BODY), BODY)
        )
        await writer.drain()
        return True

    async for raw in raw_api(answer):
        _, token = await start_agent([f"127.0.0.1:{raw.port}"])
        conn_id = await _plain_connection(client, "cookies", token.agent_id, raw.port)
        front = urlsplit(client.base)
        assert front.hostname is not None
        reader, writer = await asyncio.open_connection(front.hostname, front.port)
        order = [b"alice", b"alice", b"alice", b"bob", b"alice", b"bob", b"bob"]
        heads: list[bytes] = []
        try:
            async with asyncio.timeout(20):
                for who in order:
                    writer.write(
                        f"GET /v1/connections/{conn_id}/proxy/{who.decode()} HTTP/1.1\r\n"
                        f"Host: relay\r\nAuthorization: Bearer {client.token}\r\n\r\n".encode()
                    )
                    heads.append(await reader.readuntil(b"\r\n\r\n"))
                    assert await reader.readexactly(len(BODY)) == BODY
        finally:
            writer.close()
    for who, head in zip(order, heads, strict=True):
        cookies = [line for line in head.split(b"\r\n") if line.lower().startswith(b"set-cookie")]
        assert cookies == [b"Set-Cookie: session=" + who], (who, head)
