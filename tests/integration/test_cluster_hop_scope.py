"""What a relay-to-relay signature opens: the purpose it was signed for, on
its own route, and nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from server.cluster.forward import HOP_HEADER, HOP_KEY_LABEL, SLOT, TRAFFIC, HopAuth
from server.relay import Relay
from tests.conftest import relay_settings
from tests.support.capture import remember_secret


@pytest.fixture
async def member(tmp_path: Path, cluster_database: str) -> AsyncIterator[Relay]:
    relay = await Relay.start(relay_settings(tmp_path, database_url=cluster_database))
    remember_secret(relay.admin_token)
    try:
        yield relay
    finally:
        await relay.close()


async def test_a_traffic_signature_opens_the_relays_own_series_and_nothing_else(
    member: Relay,
) -> None:
    peer = HopAuth(member.box.derive(HOP_KEY_LABEL), "rly_peer")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            member.http_base + "/v1/connections",
            json={"name": "x", "mode": "cloud", "http": {"base_uri": "https://example.com/"}},
            headers={"Authorization": f"Bearer {member.admin_token}"},
        ) as resp:
            assert resp.status == 201
            conn_id = (await resp.json())["id"]
        traffic = f"{member.http_base}/v1/connections/{conn_id}/traffic"

        async def status(url: str, value: str) -> int:
            async with http.get(url, headers={HOP_HEADER: value}) as resp:
                return resp.status

        asked = peer.sign("GET", conn_id, "", TRAFFIC)
        assert await status(traffic + "?scope=relay", asked) == 200
        # Not the cluster's view (that would make relays ask each other in turn) ...
        assert await status(traffic, asked) == 401
        # ... nor the proxy route, nor another connection's series.
        proxy = f"{member.http_base}/v1/connections/{conn_id}/proxy"
        assert await status(proxy, peer.sign("GET", conn_id, "", TRAFFIC)) == 401
        assert (
            await status(traffic + "?scope=relay", peer.sign("GET", "con_other", "", TRAFFIC))
            == 401
        )
        # A proxy hop's signature (plain or slot) does not open the series.
        assert await status(traffic + "?scope=relay", peer.sign("GET", conn_id, "")) == 401
        assert await status(traffic + "?scope=relay", peer.sign("GET", conn_id, "", SLOT)) == 401
        # Nor does the connection's other routes accept any hop.
        assert await status(f"{member.http_base}/v1/connections/{conn_id}", asked) == 401
