"""The console of a relay cluster: the traffic charts count every relay's requests."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

from server.relay import Relay
from tests.conftest import relay_settings
from tests.integration.test_ui import page, sign_in
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.cluster import master_key
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from playwright.async_api import Page

__all__ = ["page"]  # the browser fixture, shared with test_ui


@pytest.fixture
def cluster_key() -> str:
    return master_key()


@pytest.fixture
async def relay(tmp_path: Path, cluster_database: str, cluster_key: str) -> AsyncIterator[Relay]:
    """The relay whose console the browser opens (the page fixture's relay)."""
    member = await Relay.start(
        relay_settings(
            tmp_path,
            database_url=cluster_database,
            master_key=cluster_key,
            allow_private_destinations=True,
        )
    )
    remember_secret(member.admin_token)
    try:
        yield member
    finally:
        await member.close()


@pytest.fixture
async def other(
    tmp_path: Path, cluster_database: str, cluster_key: str, relay: Relay
) -> AsyncIterator[Relay]:
    member = await Relay.start(
        relay_settings(
            tmp_path,
            data_dir=tmp_path / "other",
            database_url=cluster_database,
            master_key=cluster_key,
            allow_private_destinations=True,
        )
    )
    try:
        yield member
    finally:
        await member.close()


@pytest.mark.timeout(120)
async def test_the_charts_count_every_relays_requests(
    relay: Relay, other: Relay, api: InternalAPI, page: Page
) -> None:
    from playwright.async_api import expect

    async with aiohttp.ClientSession() as session:
        here = APIClient(session, relay.http_base, relay.admin_token)
        there = APIClient(session, other.http_base, other.admin_token)
        created = await here.call(
            "POST",
            "/v1/connections",
            json_body={"name": "Shared", "mode": "cloud", "http": {"base_uri": api.base}},
        )
        assert created.status == 201, created.text
        conn_id = created.body["id"]
        # All five requests in one minute, so the chart's latest minute holds them all.
        await wait_until(lambda: time.time() % 60 < 50, timeout=15, what="a fresh minute")
        for client, count in ((here, 2), (there, 3)):
            for _ in range(count):
                proxied = await client.call("GET", f"/v1/connections/{conn_id}/proxy/hello")
                assert proxied.status == 200

    await sign_in(page, relay, f"#/connections/{conn_id}/activity")
    await expect(page.get_by_role("heading", name="Activity: Shared")).to_be_visible()
    await expect(
        page.get_by_text("The last hour, minute by minute, over 2 of the cluster's 2 relays.")
    ).to_be_visible()
    requests = page.get_by_role("img", name=re.compile(r"^Requests per minute: latest 5 req.min"))
    await expect(requests).to_be_visible()
