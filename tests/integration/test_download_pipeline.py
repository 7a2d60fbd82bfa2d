"""A download through the tunnel flows as a pipeline, not packet by packet:
the relay tops up an answer's window while the agent still holds credit for
a whole packet, so the agent never sits waiting for a window adjust between
two packets, and the relay sends few adjusts per MiB (each one a system call
on both sides and a wake-up of the agent). Seen in the window adjusts the
relay sends the agent (issue 22: with a window of one packet, every packet
waited for the adjust of the one before)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from bench.delay_line import DelayLine
from server.relay import Relay
from tests.conftest import AgentFactory, relay_settings
from tests.support.api import InternalAPI, blob_sha256
from tests.support.capture import remember_secret
from tests.support.relay_wire import channel_open_windows, window_adjusts

# It measures what another test's load would skew: `make test` runs it alone.
pytestmark = pytest.mark.serial

MiB = 1024 * 1024


@pytest.fixture
async def relay(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Relay]:
    """A relay whose windows keep their starting size: on a busy machine a
    loopback round of the window tuner can take longer than a long link's
    (sluice.window_tuning.LONG) and grow the window, with top-ups of its own;
    these tests are about the starting window. (Settings of its own: an
    indirect parameter.)"""
    extra: dict[str, object] = getattr(request, "param", {})
    relay = await Relay.start(relay_settings(tmp_path, max_inflight_per_agent=0, **extra))
    remember_secret(relay.admin_token)
    try:
        yield relay
    finally:
        await relay.close()


@pytest.mark.timeout(60)
async def test_a_download_never_waits_for_a_window_adjust(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    http = relay.tunnel_http.session(token.agent_id)
    async with http.get(f"{api.base}/hello") as resp:
        assert resp.status == 200
    [tunnel] = relay.registry.replicas(token.agent_id)

    # Every window adjust the relay sends on this tunnel: (agent's channel, bytes).
    sent = window_adjusts(tunnel)

    size = 64 * MiB
    digest = hashlib.sha256()
    async with http.get(f"{api.base}/blob/{size}") as resp:
        async for chunk in resp.content.iter_any():
            digest.update(chunk)
    assert digest.hexdigest() == blob_sha256(size)

    by_channel: dict[int, list[int]] = {}
    for chan, amount in sent:
        by_channel.setdefault(chan, []).append(amount)
    # The download's channel: the one that was granted (about) its whole body.
    adjusts = max(by_channel.values(), key=sum)
    assert sum(adjusts) > size - tunnel.window, adjusts[:8]
    # The credit the agent still held as each top-up went out: the window
    # less what the top-up returns. At least a packet: the next packet
    # leaves while the adjust is on its way (one packet per window: 0).
    left = [tunnel.window - amount for amount in adjusts]
    shown = [amount // 1024 for amount in left[:8]]
    assert min(left) >= tunnel.max_pktsize, f"credit left at top-ups (KiB): {shown}"
    # Few adjusts: one per packet was 4 per MiB.
    per_mib = len(adjusts) / (size / MiB)
    assert per_mib <= 2, f"{per_mib:.1f} window adjusts per MiB"


async def _opened_windows(relay: Relay, agent_id: str, api: InternalAPI) -> set[int]:
    """The starting windows of the channels the relay opens to the agent for
    (and after) a 4 MiB download, as sent on the wire."""
    [tunnel] = relay.registry.replicas(agent_id)
    windows = channel_open_windows(tunnel)
    http = relay.tunnel_http.session(agent_id)
    size = 4 * MiB
    digest = hashlib.sha256()
    async with http.get(f"{api.base}/blob/{size}") as resp:
        async for chunk in resp.content.iter_any():
            digest.update(chunk)
    assert digest.hexdigest() == blob_sha256(size)
    assert windows, "no channel opened after the hook"
    return set(windows)


@pytest.mark.parametrize(
    ("relay", "expected"),
    [
        ({}, 2 * MiB),
        ({"stream_window": MiB}, MiB),
        ({"stream_window": 256 * 1024}, 256 * 1024),
    ],
    indirect=["relay"],
    ids=["default-loopback", "1MiB", "256KiB"],
)
@pytest.mark.timeout(60)
async def test_the_stream_window_setting_is_what_the_agent_is_offered(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory, expected: int
) -> None:
    """Operators with many callers that may stall trade the download pipeline
    for memory: ``stream_window`` is each stream's starting window on the wire,
    whatever the link. Unset, an agent on a short link (loopback) gets 2 MiB:
    less CPU per MiB of a download (server/tunnel/link_window.py)."""
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    assert await _opened_windows(relay, token.agent_id, api) == {expected}


@pytest.mark.timeout(60)
async def test_an_agent_on_a_long_link_keeps_the_1mib_window(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    """Behind a delay line (20 ms, user space: the relay's kernel sees a
    loopback peer) the agent's login takes a round trip of the link, so its
    answers start at 1 MiB as before: more would queue ahead of small
    answers beside a download (issue 27)."""
    async with DelayLine.start(relay.ssh_address[1], 0.02) as line:
        _, token = await start_agent(
            [f"127.0.0.1:{api.port}"], relay_address=f"127.0.0.1:{line.port}"
        )
        assert await _opened_windows(relay, token.agent_id, api) == {MiB}


def test_a_stream_window_out_of_bounds_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        relay_settings(tmp_path, stream_window=1024)
    assert "stream_window" in str(err.value)
    assert "greater than or equal to 65536" in str(err.value)
