"""A bulk answer's window shrinks while small answers run beside it on the
same agent connection, and grows back once they stop."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from server.relay import Relay
from server.tunnel.window_share import WindowShare
from tests.conftest import AgentFactory
from tests.support.api import InternalAPI
from tests.support.waiting import wait_until

MiB = 1024 * 1024


@pytest.mark.timeout(60)
async def test_a_bulk_answer_shares_its_window_with_small_answers_beside_it(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    http = relay.tunnel_http.session(token.agent_id)
    async with http.get(f"{api.base}/hello") as resp:
        assert resp.status == 200
    [tunnel] = relay.registry.replicas(token.agent_id)
    share: WindowShare = tunnel.share
    assert share.shared < share.full

    def windows() -> set[int]:
        return {chan._init_recv_window for chan in tunnel.ssh._channels.values()}

    got = 0

    async def bulk() -> None:
        nonlocal got
        async with http.get(f"{api.base}/blob/{4096 * MiB}") as resp:
            async for chunk in resp.content.iter_any():
                got += len(chunk)

    small_running = True

    async def small() -> None:
        while small_running:
            async with http.get(f"{api.base}/hello") as resp:
                assert (await resp.json())["hello"] == "world"

    download = asyncio.create_task(bulk())
    try:
        await wait_until(lambda: got > 4 * MiB, what="the download under way")
        assert windows() == {share.full}  # alone, it has the whole window
        gets = asyncio.create_task(small())
        try:
            await wait_until(lambda: share.shared in windows(), what="the shared window")
            assert not gets.done()
        finally:
            small_running = False
            await gets
        await wait_until(lambda: windows() == {share.full}, what="the whole window back")
        assert not download.done()
    finally:
        download.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await download
