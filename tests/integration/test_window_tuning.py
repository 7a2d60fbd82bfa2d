"""Receive windows grow to a long link (sluice/window_tuning.py): every download ramps up
within a few round trips, even on a cold connection; a stream
through a delayed agent link moves far more than one starting window per
round trip, both ways; streams whose reader stopped hold no more than the
per-agent budget plus their starting windows; small answers beside a
download still come back within a round trip or two."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import FrameType

import aiohttp
import pytest

from bench.delay_line import DelayLine
from server.relay import Relay
from server.tunnel.http_client import SKIP_AUTO_HEADERS
from sluice import sshconfig
from tests.conftest import relay_settings
from tests.support.agent import AgentProcess
from tests.support.api import InternalAPI, noise
from tests.support.capture import remember_secret
from tests.support.relay_wire import window_adjusts_at
from tests.support.waiting import wait_until

# It measures what another test's load would skew: `make test` runs it alone.
pytestmark = pytest.mark.serial

MiB = 1024 * 1024
SSH_SEND = "sluice/ssh_send.py"
ASYNCSSH_CHANNEL = "asyncssh/channel.py"


@contextlib.asynccontextmanager
async def _far_agent(
    tmp_path: Path,
    api: InternalAPI,
    rtt: float,
    rate: float | None = None,
    agent_env: dict[str, str] | None = None,
    **settings: object,
) -> AsyncIterator[tuple[Relay, AgentProcess, DelayLine, str]]:
    """A relay in this process and an agent whose link to it has round trip *rtt*
    (and at most *rate* bytes/s each way, if given)."""
    relay = await Relay.start(relay_settings(tmp_path, **settings))
    remember_secret(relay.admin_token)
    agent: AgentProcess | None = None
    try:
        _, token = await relay.store.create_agent("far")
        remember_secret(str(token), token.secret)
        async with DelayLine.start(relay.ssh_address[1], rtt, rate=rate) as line:
            agent = AgentProcess(
                {
                    "SLUICE_AGENT_RELAY": f"127.0.0.1:{line.port}",
                    "SLUICE_AGENT_TOKEN": str(token),
                    "SLUICE_AGENT_RELAY_FINGERPRINT": relay.fingerprint,
                    "SLUICE_AGENT_ALLOW": f"127.0.0.1:{api.port}",
                    "SLUICE_AGENT_LOG_FORMAT": "json",
                    "SLUICE_AGENT_HEALTH_LISTEN": "off",
                }
                | (agent_env or {}),
                tmp_path / "agent.log",
            )
            await agent.start()
            await wait_until(
                lambda: relay.registry.is_online(token.agent_id), timeout=15, what="agent online"
            )
            yield relay, agent, line, token.agent_id
    finally:
        if agent is not None and agent.proc is not None and agent.proc.returncode is None:
            await agent.stop()
        await relay.close()


RTT = 0.1
PIECE = 512 * 1024


@pytest.mark.timeout(60)
async def test_windows_grow_to_a_long_link_both_ways(tmp_path: Path, api: InternalAPI) -> None:
    # One starting window per round trip: 1 MiB / 100 ms = 10.5 MB/s each
    # way; fixed windows reach less than that.
    # Grown ones must beat it clearly, even on a busy 2-core machine.
    down_bound = sshconfig.CHANNEL_WINDOW / RTT / 1e6
    up_bound = sshconfig.AGENT_RECEIVE_WINDOW / RTT / 1e6
    size = 32 * MiB
    async with _far_agent(tmp_path, api, RTT) as (relay, _, _, agent_id):
        http = relay.tunnel_http.session(agent_id)
        began = time.monotonic()
        async with http.get(f"{api.base}/noise/{size}") as resp:
            body = await resp.read()
        down = len(body) / (time.monotonic() - began) / 1e6
        began = time.monotonic()
        async with http.post(f"{api.base}/echo", data=io.BytesIO(noise(size, seed=5))) as resp:
            echoed = await resp.json()
        up = size / (time.monotonic() - began) / 1e6
    assert body == noise(size)
    assert echoed["bytes"] == size
    assert down > 2.5 * down_bound, (
        f"download {down:.1f} MB/s, fixed windows allow {down_bound:.1f}"
    )
    assert up > 1.6 * up_bound, f"upload {up:.1f} MB/s, fixed windows allow {up_bound:.1f}"


@pytest.mark.timeout(60)
async def test_every_download_ramps_up_on_a_long_link(tmp_path: Path, api: InternalAPI) -> None:
    # 16 MiB at 100 ms, three times on one agent connection, the first on a
    # connection that has carried nothing yet. Fixed windows allow 10.5 MB/s
    # (1 MiB per round trip). Slow start quadruples the window each round
    # trip, so even the first download ramps within a few of them (with
    # 256 KiB starting windows a window that doubled every other round trip
    # reached ~11 MB/s here); later ones start from what the connection
    # carried. 16 MiB is only a few round trips' worth of a grown window, and
    # this test's process (relay, API, delay line) bounds the rest.
    rtt, size = 0.1, 16 * MiB
    speeds = []
    async with _far_agent(tmp_path, api, rtt) as (relay, _, _, agent_id):
        http = relay.tunnel_http.session(agent_id)
        for _ in range(3):
            began = time.monotonic()
            async with http.get(f"{api.base}/blob/{size}") as resp:
                got = len(await resp.read())
            assert got == size
            speeds.append(size / (time.monotonic() - began) / 1e6)
    fixed = sshconfig.CHANNEL_WINDOW / rtt / 1e6
    shown = f"MB/s {[round(s, 1) for s in speeds]}, fixed windows {fixed:.1f}"
    assert speeds[0] > 1.8 * fixed, shown
    assert min(speeds[1:]) > 5 * fixed, shown


async def _moved_within(carried: Callable[[], int], rounds: float, rtt: float) -> int:
    """Bytes *carried()* (what a line has passed on, one way) grew by within
    *rounds* round trips of its first 64 KiB from now, as last seen by then
    (seen every 2 ms, or as often as this busy process gets to it)."""
    start = carried()
    await wait_until(lambda: carried() - start >= 64 * 1024, timeout=10, what="the first bytes")
    began, first = time.monotonic(), carried()
    seen = first
    while time.monotonic() - began < rounds * rtt:
        seen = carried()
        await asyncio.sleep(0.002)
    return seen - first


@pytest.mark.timeout(60)
async def test_the_first_transfers_on_a_cold_connection_ramp_within_two_round_trips(
    tmp_path: Path, api: InternalAPI
) -> None:
    """The connection's first download, then its first upload (the agent's
    own budget, cold too), each on a link that has carried nothing yet in
    its direction: slow start's first step at the stream's first top-up
    (the relay's login and the agent's ready signal told a long link), not
    a round trip later, and by 16, not 4. Seen on the wire, from the first
    64 KiB of each body the link passed on: within two round trips, 1 MiB
    plus the 16 MiB the first step allowed. Before, 1 MiB per round trip for
    the first two (then 4, then 16): about 2 MiB by then."""
    rtt = 0.1
    async with _far_agent(tmp_path, api, rtt) as (relay, _, line, agent_id):
        http = relay.tunnel_http.session(agent_id)
        await _hello(http, api)  # (a stream in the pool, as a caller's)

        async def download() -> None:
            async with http.get(f"{api.base}/blob/{4096 * MiB}") as resp:
                async for _ in resp.content.iter_any():
                    pass

        async def body() -> AsyncIterator[bytes]:
            piece = bytes(PIECE)
            while True:
                yield piece

        async def upload() -> None:
            async with http.post(f"{api.base}/echo", data=body()) as resp:
                await resp.read()

        moved = {}
        for name, transfer, carried in (
            ("download", download, lambda: line.carried_to_target),
            ("upload", upload, lambda: line.carried_to_caller),
        ):
            task = asyncio.create_task(transfer())
            try:
                moved[name] = await _moved_within(carried, 2, rtt)
                assert not task.done()
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                    await task
    shown = {name: f"{got / MiB:.1f} MiB" for name, got in moved.items()}
    assert min(moved.values()) > 8 * MiB, f"moved within two round trips: {shown}"


@pytest.mark.timeout(60)
async def test_a_download_may_hold_more_than_32_mib_in_flight_by_default(
    tmp_path: Path, api: InternalAPI
) -> None:
    """The default per-agent budget (sshconfig.MAX_INFLIGHT): 32 MiB plus the
    1 MiB start capped a download at 100 ms near 335 MB/s, below half of what
    the link carried directly (bench.long_link: 1 GiB at 275 MB/s, 447 MB/s
    with 64 MiB). Seen on the wire: the credit the relay has granted the
    download's channel (its starting window and every adjust) less what the
    link had carried to the relay by then, a lower bound of what the agent
    may send (the relay has read no more than the link carried)."""
    rtt = (
        0.3  # slow start (1, 4, 16, 64 MiB) within a few round trips, at a pace this process keeps
    )
    old_cap = 32 * MiB + sshconfig.CHANNEL_WINDOW
    async with _far_agent(tmp_path, api, rtt) as (relay, _, line, agent_id):
        [tunnel] = relay.registry.replicas(agent_id)
        adjusts = window_adjusts_at(tunnel, lambda: line.carried_to_target)
        http = relay.tunnel_http.session(agent_id)
        granted: dict[int, int] = {}  # per channel of the agent's
        credit = seen = got = 0
        async with http.get(f"{api.base}/blob/{4096 * MiB}") as resp:
            async for chunk in resp.content.iter_any():
                got += len(chunk)
                for channel, more, carried in adjusts[seen:]:
                    granted[channel] = granted.get(channel, sshconfig.CHANNEL_WINDOW) + more
                    credit = max(credit, granted[channel] - carried)
                seen = len(adjusts)
                if credit > old_cap + MiB or got > 200 * MiB:
                    break
    assert credit > old_cap + MiB, (
        f"the download's credit reached {credit} bytes at most ({got} read), "
        f"the old 32 MiB budget allowed {old_cap}"
    )


@pytest.mark.timeout(60)
async def test_stalled_readers_hold_no_more_than_the_budget(
    tmp_path: Path, api: InternalAPI
) -> None:
    cap = 4 * MiB
    streams = 20
    async with _far_agent(tmp_path, api, 0.04, max_inflight_per_agent=cap) as (
        relay,
        agent,
        line,
        agent_id,
    ):
        http = relay.tunnel_http.session(agent_id)
        read = [0] * streams
        taken = [0] * streams  # what each caller's reader took in (read or buffered)
        stop_reading = asyncio.Event()
        stopped = [asyncio.Event() for _ in range(streams)]

        async def download(i: int) -> None:
            async with http.get(f"{api.base}/blob/{4096 * MiB}") as resp:
                async for chunk in resp.content.iter_any():
                    read[i] += len(chunk)
                    if stop_reading.is_set():
                        break
                stopped[i].set()
                while True:  # hold the stream open, reading nothing
                    # What the caller's reader took in: read, or in its buffer.
                    taken[i] = read[i] + resp.content._size
                    await asyncio.sleep(0.1)

        tasks = [asyncio.create_task(download(i)) for i in range(streams)]
        try:
            # Flowing for a while first, so that windows grow as far as they may.
            [tunnel] = relay.registry.replicas(agent_id)
            granted = 0  # the most the windows had grown at once while flowing

            def flowed() -> bool:
                nonlocal granted
                granted = max(granted, tunnel.budget.granted)
                return sum(read) > 64 * MiB

            await wait_until(flowed, timeout=30, what="64 MiB read")
            stop_reading.set()
            for event in stopped:
                await asyncio.wait_for(event.wait(), 10)
            # Then wait until nothing more crosses the link.
            # A quiet half second (two samples, several round trips), with a deadline.
            deadline, last, quiet = time.monotonic() + 20, -1, 0
            while quiet < 2:
                assert time.monotonic() < deadline, "the link never went quiet"
                quiet = quiet + 1 if line.carried_to_target == last else 0
                last = line.carried_to_target
                await asyncio.sleep(0.25)  # a sample of the line's counter
            in_flight = line.carried_to_target - sum(taken)
            peak_agent_mb = agent.peak_rss_kib() / 1024
            granted = max(granted, tunnel.budget.granted)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    # Beyond what the callers took in: at most the budget and each stream's
    # starting window, plus the control traffic (CONNECT heads, answers' heads).
    allowed = cap + streams * sshconfig.CHANNEL_WINDOW + MiB
    assert 0 < granted <= cap  # windows did grow while flowing, within the budget
    assert in_flight <= allowed, f"{in_flight} bytes in flight, allowed {allowed}"
    assert peak_agent_mb < 150


@pytest.mark.timeout(60)
async def test_small_answers_beside_a_download_on_a_long_link(
    tmp_path: Path, api: InternalAPI
) -> None:
    rtt = 0.05
    async with _far_agent(tmp_path, api, rtt) as (relay, _, _, agent_id):
        http = relay.tunnel_http.session(agent_id)
        # What a GET takes on the idle link, on this machine now: the round
        # trip, plus this process's and the agent's own delays under the
        # machine's load (a loaded machine added tens of ms to every GET,
        # download or not, and failed the test about once in ten runs).
        idle = [await _hello(http, api) for _ in range(10)]
        got = 0

        async def bulk() -> None:
            nonlocal got
            async with http.get(f"{api.base}/blob/{4096 * MiB}") as resp:
                async for chunk in resp.content.iter_any():
                    got += len(chunk)

        download = asyncio.create_task(bulk())
        latencies = []
        try:
            await wait_until(lambda: got > 32 * MiB, timeout=20, what="the download under way")
            for _ in range(30):
                latencies.append(await _hello(http, api))
            assert not download.done()
        finally:
            download.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await download
    p50 = statistics.median(latencies)
    alone = max(rtt, statistics.median(idle))
    # One round trip each (as long as on the idle link), plus what queues
    # ahead of it at the slower end (here this test's one process: relay,
    # API and delay line). A window that grows while the stream waits, up
    # to the budget, queued 120-160 ms ahead of each answer here; one held
    # near the pace times the round trip queues a few ms (plus this busy
    # process's own delays).
    shown = (
        f"p50 {p50 * 1000:.1f} ms, alone {alone * 1000:.1f} ms on a {rtt * 1000:.0f} ms link; "
        f"GETs (ms): {[round(t * 1000) for t in latencies]}"
    )
    assert p50 <= alone + 0.05, shown


async def _hello(http: aiohttp.ClientSession, api: InternalAPI) -> float:
    """One small GET through the tunnel: how long it took, in seconds."""
    began = time.monotonic()
    async with http.get(f"{api.base}/hello") as resp:
        assert (await resp.json())["hello"] == "world"
    return time.monotonic() - began


async def _gets_beside(
    http: aiohttp.ClientSession, api: InternalAPI, moved: Callable[[], int], until: int
) -> list[tuple[float, bool]]:
    """Small GETs one after another on *http*'s streams, from the bulk
    transfer's first bytes until *moved()* reaches *until*: each one's time,
    in seconds, and whether it opened a stream (found none idle in the pool)."""
    await wait_until(lambda: moved() > 0, timeout=10, what="the bulk transfer's first bytes")
    opened: list[None] = []

    async def stream_opened(*_: object) -> None:
        opened.append(None)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(stream_opened)
    gets: list[tuple[float, bool]] = []
    async with aiohttp.ClientSession(  # *http*'s options (TunnelHTTP.session)
        connector=http.connector,
        connector_owner=False,
        trace_configs=[trace],
        auto_decompress=False,
        trust_env=False,
        skip_auto_headers=SKIP_AUTO_HEADERS,
    ) as traced:
        # Through the window's growth (the stock burst: the first second or
        # so) and beyond.
        while moved() < until:
            before = len(opened)
            began = time.monotonic()
            async with traced.get(f"{api.base}/hello") as resp:
                assert (await resp.json())["hello"] == "world"
            gets.append((time.monotonic() - began, len(opened) > before))
            assert len(gets) < 400, f"the bulk transfer is stuck at {moved()} bytes"
    return gets


def _assert_no_queue_ahead(gets: list[tuple[float, bool]], rtt: float) -> None:
    marked = [f"{t * 1000:.0f}" + ("*" if new else "") for t, new in gets]
    shown = f"GETs (ms, * on a new stream): {marked}"
    # A GET on a new stream waits for it to open: up to 3 round trips
    # (0.22-0.41 s here, scheduler or not: a loose bound). That is the first
    # one; CI once saw a later one take 0.30 s among 0.12-0.13 (the pool's
    # trace was not kept then, so whether it opened a stream is not known:
    # it is told apart now). The rest take one round trip plus the queues:
    # the sender's (its transport's high-water mark + the kernel's not-sent
    # low-water mark, about 8 ms at 50 MB/s) and the delay line's own (5 ms
    # + its socket buffers): 0.12-0.16 s here.
    # Stock asyncssh: a later GET took 0.37-0.73 s.
    opened = [t for t, new in gets if new]
    pooled = [t for t, new in gets if not new]
    assert len(opened) <= 2, shown
    assert max(opened, default=0.0) <= 3 * rtt + 0.3, shown
    assert len(pooled) >= 4, shown  # GETs all along the transfer (stock: 3 in all)
    assert max(pooled) <= rtt + 0.15, shown


@pytest.mark.timeout(60)
async def test_a_small_answer_does_not_wait_behind_a_growing_download(
    tmp_path: Path, api: InternalAPI
) -> None:
    """The send scheduler (sluice/send_scheduler.py, on by default) on the
    agent's side: on a link slower than the agent, a download's grown window
    waits in its channel, not in the transport and the kernel ahead of other
    streams' answers. Stock asyncssh queued megabytes there while the window
    grew, and a small GET beside the download took 0.4-0.7 s on this 100 ms,
    50 MB/s link (docs/22q-sender-queue.md; the notes of branch issue-22s)."""
    rtt, rate = RTT, 50e6
    probe = tmp_path / "probe.jsonl"
    env = {"SLUICE_QUEUE_PROBE": str(probe)}
    async with _far_agent(tmp_path, api, rtt, rate=rate, agent_env=env) as (relay, *_, agent_id):
        http = relay.tunnel_http.session(agent_id)
        got = 0

        async def bulk() -> None:
            nonlocal got
            async with http.get(f"{api.base}/blob/{4096 * MiB}") as resp:
                async for chunk in resp.content.iter_any():
                    got += len(chunk)

        download = asyncio.create_task(bulk())
        try:
            gets = await _gets_beside(http, api, lambda: got, 48 * MiB)
            assert not download.done()
        finally:
            download.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await download
    _assert_no_queue_ahead(gets, rtt)
    # Where the agent's bytes waited: about the transport's high-water mark
    # plus a 256 KiB turn, and the kernel's low-water mark plus one write
    # (about 0.75 MB). Stock asyncssh queued 28 MB here.
    samples = [json.loads(line) for line in probe.read_text().splitlines()]
    ahead = [s["transport"] + s["notsent"] for s in samples if "notsent" in s]
    assert len(ahead) > 100
    assert max(ahead) <= 1 * MiB, f"{max(ahead)} bytes ahead of a small answer"


@pytest.mark.timeout(60)
async def test_a_small_request_does_not_wait_behind_a_growing_upload(
    tmp_path: Path, api: InternalAPI
) -> None:
    """The send scheduler on the relay's side: an upload's grown window waits
    in its channel, not ahead of other streams' requests to the agent."""
    rtt, rate = RTT, 50e6
    async with _far_agent(tmp_path, api, rtt, rate=rate) as (relay, *_, agent_id):
        http = relay.tunnel_http.session(agent_id)
        sent = 0
        piece = bytes(256 * 1024)

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            while True:
                yield piece
                sent += len(piece)

        async def bulk() -> None:
            async with http.post(f"{api.base}/echo", data=body()) as resp:
                await resp.read()

        upload = asyncio.create_task(bulk())
        try:
            gets = await _gets_beside(http, api, lambda: sent, 48 * MiB)
            assert not upload.done()
        finally:
            upload.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await upload
    _assert_no_queue_ahead(gets, rtt)


@pytest.mark.timeout(60)
async def test_a_download_grows_beside_one_its_reader_holds_back(
    tmp_path: Path, api: InternalAPI
) -> None:
    """A stream whose reader is slower than the link (pausing the channel
    again and again) gives back the growth it cannot use: a download beside
    it still grows its window. (With the tuner ignoring every round in which
    the reader paused, e175c23, the slow stream kept the whole per-agent
    budget and the next download moved one starting window per round trip:
    5 MB/s at 50 ms with 256 KiB starting windows.)"""
    rtt, reader, size = 0.1, 20e6, 24 * MiB
    start = sshconfig.CHANNEL_WINDOW
    # A budget its first stream's slow start reaches (1, 4, 16 MiB).
    cap = 16 * MiB
    async with _far_agent(tmp_path, api, rtt, max_inflight_per_agent=cap) as (
        relay,
        _,
        line,
        agent_id,
    ):
        http = relay.tunnel_http.session(agent_id)
        slow = 0

        async def read_slowly() -> None:
            nonlocal slow
            async with http.get(f"{api.base}/blob/{4096 * MiB}") as resp:
                began = time.monotonic()
                async for chunk in resp.content.iter_any():
                    slow += len(chunk)
                    # At full speed first (the window grows as far as it
                    # may), then as a reader of *reader* bytes/s that
                    # takes a piece at a time (a busy caller): the stream
                    # pauses in every round trip. Pacing, not a wait.
                    if slow < 32 * MiB:
                        began = time.monotonic()
                        continue
                    ahead = (slow - 32 * MiB) / reader - (time.monotonic() - began)
                    if ahead > PIECE / reader:
                        await asyncio.sleep(ahead)

        held_back = asyncio.create_task(read_slowly())
        try:
            # Long enough for its window to grow, and to find the reader's pace.
            await wait_until(lambda: slow > 48 * MiB, timeout=20, what="48 MiB read slowly")
            line.reset_most_in_flight()
            began = time.monotonic()
            got = 0
            async with http.get(f"{api.base}/blob/{size}") as resp:
                async for chunk in resp.content.iter_any():
                    got += len(chunk)
            took = time.monotonic() - began
            in_flight = line.most_in_flight_to_target
            assert not held_back.done()
        finally:
            held_back.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await held_back
    assert got == size
    rate = size / took
    shown = f"{rate / 1e6:.1f} MB/s, {in_flight / MiB:.1f} MiB in flight at most"
    # One starting window per round trip: 10.5 MB/s, 1 MiB in flight (plus
    # the slow stream's 2 MB: its reader's pace times the round trip), so
    # about 3 MiB at most. Grown: 6-17 MiB (6.0-7.4 on a loaded machine,
    # where the full suite once saw 6.0 against a bound of 6: now 4.5).
    print(shown)
    assert rate > 2 * start / rtt, shown
    assert in_flight > 4.5 * start, shown


@pytest.mark.timeout(60)
async def test_readers_that_barely_read_hold_no_more_than_the_budget(
    tmp_path: Path, api: InternalAPI
) -> None:
    """20 downloads whose windows grew, then whose callers take a piece only
    now and then: each piece resumes the channel, and what arrived while it
    was paused waits in its buffer. That counts against the window (the
    relay's reader, aiohttp's, pauses at 512 KiB; asyncssh's own top-up
    counted none of the buffer, so each piece let up to a whole grown window
    more in). And a stream held back so is not idle: its growth is in use,
    not the budget's to take back for another stream (which, its reader
    slow too, was taken back in turn: 29-32 MB waited, in CI and here)."""
    cap = 4 * MiB
    streams = 20
    async with _far_agent(tmp_path, api, 0.04, max_inflight_per_agent=cap) as (
        relay,
        _,
        line,
        agent_id,
    ):
        http = relay.tunnel_http.session(agent_id)
        read = [0] * streams
        buffered: list[Callable[[], int]] = [lambda: 0] * streams
        slow_down = asyncio.Event()

        async def download(i: int) -> None:
            async with http.get(f"{api.base}/blob/{4096 * MiB}") as resp:
                buffered[i] = lambda: resp.content._size  # taken in, not read yet
                async for chunk in resp.content.iter_any():
                    read[i] += len(chunk)
                    if slow_down.is_set():
                        break
                while True:  # a piece every 0.1 s: a caller that barely reads
                    read[i] += len(await resp.content.readany())
                    await asyncio.sleep(0.1)

        tasks = [asyncio.create_task(download(i)) for i in range(streams)]
        try:
            # Flowing for a while first, so that windows grow as far as they may.
            await wait_until(lambda: sum(read) > 64 * MiB, timeout=30, what="64 MiB read")
            slow_down.set()
            # What crossed the link and the callers have not taken in waits
            # in the relay (the channels' buffers): sampled for 3 s.
            most = 0
            for _ in range(30):
                await asyncio.sleep(0.1)  # a sample of the line's counter
                taken = sum(read) + sum(size() for size in buffered)
                most = max(most, line.carried_to_target - taken)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    # At most the budget and each stream's starting window, plus the control
    # traffic (CONNECT heads, answers' heads) and the credit a peer still holds
    # from a window that shrank as its budget went to another stream (alone:
    # 15.2-21.3 MB in 10 runs, 4 of them beside a busy loop; before streams
    # held back by their reader were kept from the reclaim, 18.1-32.2 MB, 4
    # of 16 runs above the 27.3 allowed).
    allowed = cap + streams * sshconfig.CHANNEL_WINDOW + 2 * MiB
    print(f"at most {most} bytes waited in the relay")
    assert most <= allowed, f"{most} bytes waited in the relay, allowed {allowed}"


@pytest.mark.timeout(60)
async def test_a_held_back_streams_top_ups_take_the_tuned_send_path(
    tmp_path: Path, api: InternalAPI
) -> None:
    """While a reader holds its stream back (it paused the channel, and what
    arrived since waits in its buffer), the window tuner makes the stream's
    top-ups (as it does for every grown window): they go out as the tuned
    ``sluice.ssh_send.send_window_adjust``, not asyncssh's ``send_packet``,
    which cost some 20 Python calls and a ``getrandom`` system call (its
    padding) each: 2 such top-ups per MiB of a download whose window had
    grown on a busy loopback (issue 22, branch issue-28f, ``bench.calls
    --mixed``: the relay's Python calls per MiB 91 -> 48)."""
    counts: collections.Counter[str] = collections.Counter()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            code = frame.f_code
            if code.co_name == "send_window_adjust" and code.co_filename.endswith(SSH_SEND):
                counts["tuned"] += 1
            elif code.co_name == "send_packet" and code.co_filename.endswith(ASYNCSSH_CHANNEL):
                counts["asyncssh"] += 1
        elif event == "c_call" and getattr(arg, "__name__", "") == "urandom":
            counts["urandom"] += 1

    # No growth (a budget of 0): the top-ups are the held-back stream's alone.
    async with _far_agent(tmp_path, api, 0.002, max_inflight_per_agent=0) as (
        relay,
        _,
        _line,
        agent_id,
    ):
        http = relay.tunnel_http.session(agent_id)
        got = 0
        async with http.get(f"{api.base}/blob/{64 * MiB}") as resp:
            async for chunk in resp.content.iter_any():
                got += len(chunk)
                if got > 4 * MiB:
                    break
            sys.setprofile(profile)
            try:
                # A piece at a time, with a pause after each: the relay's
                # reader pauses the channel again and again.
                while got < 20 * MiB:
                    got += len(await resp.content.readany())
                    await asyncio.sleep(0.002)  # a busy caller's pace, not a wait
            finally:
                sys.setprofile(None)
    shown = f"{got / MiB:.0f} MiB read; top-ups: {dict(counts)}"
    print(shown)
    assert counts["tuned"] >= 8, shown  # about one per MiB
    assert counts["asyncssh"] == 0, shown
    assert counts["urandom"] == 0, shown
