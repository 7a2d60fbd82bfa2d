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

from server.relay import Relay
from tests.conftest import AgentFactory, relay_settings
from tests.support.api import InternalAPI, blob_sha256
from tests.support.capture import remember_secret
from tests.support.relay_wire import channel_open_windows, window_adjusts

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


@pytest.mark.parametrize(
    ("relay", "expected"),
    [({}, MiB), ({"stream_window": 256 * 1024}, 256 * 1024)],
    indirect=["relay"],
    ids=["default", "256KiB"],
)
@pytest.mark.timeout(60)
async def test_the_stream_window_setting_is_what_the_agent_is_offered(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory, expected: int
) -> None:
    """Operators with many callers that may stall trade the download pipeline
    for memory: ``stream_window`` is each stream's starting window on the wire."""
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    [tunnel] = relay.registry.replicas(token.agent_id)
    windows = channel_open_windows(tunnel)
    http = relay.tunnel_http.session(token.agent_id)
    size = 4 * MiB
    digest = hashlib.sha256()
    async with http.get(f"{api.base}/blob/{size}") as resp:
        async for chunk in resp.content.iter_any():
            digest.update(chunk)
    assert digest.hexdigest() == blob_sha256(size)
    assert windows, "no channel opened after the hook"
    assert set(windows) == {expected}, windows


def test_a_stream_window_out_of_bounds_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        relay_settings(tmp_path, stream_window=1024)
    assert "stream_window" in str(err.value)
    assert "greater than or equal to 65536" in str(err.value)
