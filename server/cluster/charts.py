"""The console's traffic charts for the whole cluster: the relay asked asks
every other live relay for its series over the signed hop, with a short
timeout, and merges them (``server.proxy.traffic_stats.merged_hour``).

The answer names the relays that contributed and those that did not answer
in time, so a chart with a hole says where the hole is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog
from yarl import URL

from server.cluster.forward import HOP_HEADER, TRAFFIC, HopAuth
from server.cluster.presence import Presence
from server.proxy.traffic_stats import TrafficStats, merged_hour
from server.storage.cluster import RelayRow

log = structlog.get_logger("sluice.relay.traffic")


class ClusterCharts:
    """Gathers a connection's traffic series from every live relay."""

    def __init__(
        self,
        presence: Presence,
        hop: HopAuth,
        session: Callable[[], aiohttp.ClientSession],  # the forwarder's pool
        *,
        timeout: float,
    ) -> None:
        self._presence = presence
        self._hop = hop
        self._session = session
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"<ClusterCharts timeout={self._timeout:g}s>"

    async def _ask(self, relay: RelayRow, conn_id: str) -> list[dict[str, Any]] | None:
        """*relay*'s own series of *conn_id*; None when it did not answer in time."""
        url = URL(f"{relay.cluster_url}/v1/connections/{conn_id}/traffic", encoded=False)
        headers = {HOP_HEADER: self._hop.sign("GET", conn_id, "", TRAFFIC)}
        session = self._session()
        try:
            async with session.get(
                url,
                params={"scope": "relay"},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                if resp.status != 200:
                    log.warning("traffic_peer_refused", relay=relay.id, status=resp.status)
                    return None
                body = await resp.json()
            series = body["series"]
            if not isinstance(series, list):
                raise TypeError("series is not a list")
            return series
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            log.warning("traffic_peer_failed", relay=relay.id, error=type(exc).__name__)
            return None

    async def last_hour(self, conn_id: str, stats: TrafficStats) -> dict[str, Any]:
        """The cluster's last hour of *conn_id*, and who contributed."""
        me = self._presence.relay_id
        peers = [r for r in await self._presence.relays() if r.id != me and r.cluster_url]
        answers = await asyncio.gather(*(self._ask(relay, conn_id) for relay in peers))
        exports = [stats.export(conn_id)] + [a for a in answers if a is not None]
        return {
            "minutes": merged_hour(exports, stats.now()),
            "relays": [{"id": me, "ssh": self._presence.advertise_ssh, "answered": True}]
            + [
                {"id": relay.id, "ssh": relay.advertise_ssh, "answered": answer is not None}
                for relay, answer in zip(peers, answers, strict=True)
            ],
        }
