"""The agent's receive window for request bodies on a short link
(``agent.tunnel.stream_window``): 2 MiB, as the relay starts its answers
there, so an upload's top-ups go half as often (each a write of the agent's
and a wake-up of the relay's)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

import pytest

from server.relay import Relay
from sluice import sshconfig
from tests.conftest import AgentFactory
from tests.integration.test_upstream_reads import ssh_packets
from tests.support.api import InternalAPI, noise
from tests.support.byte_pipe import BytePipe
from tests.support.waiting import wait_until

MiB = 1024 * 1024
BULK = 32 * MiB
# CHANNEL_WINDOW_ADJUST under AES-GCM: 9 bytes of payload, 1 of padding
# length and 6 of padding (the length and tag are not counted).
ADJUST = 16


async def _body(total: int, piece: int) -> AsyncIterator[bytes]:
    block = noise(piece)
    for _ in range(total // piece):
        yield block


@pytest.mark.timeout(60)
async def test_an_upload_over_a_short_link_is_granted_more_than_a_mib_at_a_time(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    host, port = relay.ssh_address
    pipe = BytePipe(host, port)
    await pipe.start()
    try:
        agent, token = await start_agent(
            [f"127.0.0.1:{api.port}"], relay_address=f"127.0.0.1:{pipe.listen_port}"
        )
        [tunnel] = pipe.connections
        judged: list[dict[str, object]] = []

        def window_judged() -> bool:
            judged[:] = [
                json.loads(line)
                for line in agent.log().splitlines()
                if '"event": "stream_window"' in line
            ]
            return bool(judged)

        await wait_until(window_judged, what="the agent's stream window")
        # Loopback, through a pipe in this process: a short link.
        assert judged[0]["window"] == sshconfig.SHORT_LINK_CHANNEL_WINDOW, judged
        http = relay.tunnel_http.session(token.agent_id)
        async with http.get(f"{api.base}/hello") as resp:  # opens the stream
            assert resp.status == 200
        before = len(ssh_packets(bytes(tunnel.upstream), whole=False))
        async with http.post(f"{api.base}/echo", data=_body(BULK, MiB)) as resp:
            answer = await resp.json()
        expected = hashlib.sha256(noise(MiB) * (BULK // MiB)).hexdigest()
        assert (answer["bytes"], answer["sha256"]) == (BULK, expected)
        adjusts = [
            n for n in ssh_packets(bytes(tunnel.upstream), whole=False)[before:] if n == ADJUST
        ]
        # Each top-up grants more than a MiB on average: with a 1 MiB window
        # asyncssh grants once less than half is left, 768 KiB at most
        # (three 256 KiB packets), so 40 or more for 32 MiB.
        assert 0 < len(adjusts) < BULK // MiB, len(adjusts)
    finally:
        await pipe.close()
