"""Forwarding: a relay without a tunnel to a connection's agent sends the
request on to a relay that has one.

The hop is plain HTTP to the other relay's cluster listener, the same
``/v1/connections/{id}/proxy/...`` route a caller uses, authenticated by an
HMAC over (relay, time, method, connection, path) under a key derived from
the master key instead of the admin token. Bodies stream both ways through
aiohttp, with its flow control. The receiving relay serves a forwarded
request only through its own tunnels (never forwards again), so a request
makes at most one hop.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from typing import Any

import aiohttp
import structlog
from multidict import CIMultiDict
from yarl import URL

from server.cluster.presence import Presence
from server.errors import AgentOffline, RelayError, TunnelLost
from server.proxy.headers import HOP_BY_HOP, Fields, connection_options
from server.storage.cluster import RelayRow
from server.tunnel.http1 import Answer, Body

log = structlog.get_logger("sluice.relay.forward")

HOP_HEADER = "Sluice-Relay-Hop"
HOP_KEY_LABEL = "sluice/relay-hop/v1"
# Set on every proxied answer (server.proxy.route.VIA_HEADER): its absence
# means the answer is the relay's own problem document.
VIA_HEADER = "Sluice-Connection"
# What a hop is for (HopAuth.sign).
SLOT = "slot"
TRAFFIC = "traffic"
_PURPOSES = frozenset({"", SLOT, TRAFFIC})
# How far apart two relays' clocks (and a request's flight) may be.
HOP_MAX_AGE = 60.0
# How long the relays holding an agent's tunnels are taken as known.
HOLDERS_TTL = 0.5
_DROPPED = HOP_BY_HOP | {b"host", b"authorization", b"content-length", HOP_HEADER.lower().encode()}


class HopAuth:
    """Signs and checks the relay-to-relay header."""

    def __init__(self, key: bytes, relay_id: str, clock: Any = time.time) -> None:
        self._key = key
        self.relay_id = relay_id
        self._clock = clock

    def __repr__(self) -> str:
        return f"<HopAuth {self.relay_id}>"

    def _mac(
        self, relay_id: str, at: str, method: str, conn_id: str, relative: str, purpose: str
    ) -> str:
        fields = (relay_id, at, method, conn_id, relative) + ((purpose,) if purpose else ())
        return hmac.new(self._key, "\n".join(fields).encode(), hashlib.sha256).hexdigest()

    def sign(self, method: str, conn_id: str, relative: str, purpose: str = "") -> str:
        """The header's value. *purpose* (signed too) says what the hop is for:
        "" the agent's tunnel is held there (the sender holds the request's
        concurrency slot), SLOT the sender holds no share of the cap (the
        receiver takes one of its slots), TRAFFIC a peer's traffic series."""
        at = str(int(self._clock()))
        mac = self._mac(self.relay_id, at, method, conn_id, relative, purpose)
        return f"{self.relay_id}.{at}.{mac}" + (f".{purpose}" if purpose else "")

    def check(self, value: str, method: str, conn_id: str, relative: str) -> tuple[str, str] | None:
        """(sending relay's id, purpose) when *value* is a valid, fresh signature; else None."""
        parts = value.strip().split(".")
        if len(parts) == 3:
            parts.append("")
        if len(parts) != 4 or not parts[1].isdigit() or parts[3] not in _PURPOSES:
            return None
        relay_id, at, mac, purpose = parts
        if abs(self._clock() - int(at)) > HOP_MAX_AGE:
            return None
        expected = self._mac(relay_id, at, method, conn_id, relative, purpose)
        return (relay_id, purpose) if hmac.compare_digest(expected, mac) else None


class ForwardedProblem(RelayError):
    """The relay we forwarded to answered with a problem of its own: passed on as is."""

    def __init__(self, status: int, kind: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status  # type: ignore[misc]
        self.type = kind  # type: ignore[misc]
        self.title = title  # type: ignore[misc]


async def _problem(resp: aiohttp.ClientResponse, relay: RelayRow) -> ForwardedProblem:
    try:
        body = json.loads(await resp.read())
    except ValueError:
        body = {}
    finally:
        resp.release()
    if not isinstance(body, dict):
        body = {}
    return ForwardedProblem(
        resp.status,
        str(body.get("type", "relay_error")),
        str(body.get("title", "The relay could not complete the request")),
        str(body.get("detail", f"relay {relay.advertise_ssh} answered {resp.status}")),
    )


class Forwarder:
    """Sends requests to the relays that hold an agent's tunnels."""

    def __init__(self, presence: Presence, hop: HopAuth, *, connect_timeout: float) -> None:
        self._presence = presence
        self._hop = hop
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._holders: dict[str, tuple[float, list[RelayRow]]] = {}
        self.forwarded = 0

    def __repr__(self) -> str:
        return f"<Forwarder forwarded={self.forwarded}>"

    def session(self) -> aiohttp.ClientSession:
        """The pooled client for relay-to-relay calls."""
        return self._http()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                auto_decompress=False,
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def holders(self, agent_id: str) -> list[RelayRow]:
        """Live relays other than this one with a live tunnel to *agent_id*, shuffled.

        Looked up at most every HOLDERS_TTL seconds per agent (two reads), so
        a stream of forwarded requests does not read the database each time.
        """
        now = time.monotonic()
        cached = self._holders.get(agent_id)
        if cached is not None and now - cached[0] < HOLDERS_TTL:
            relays = list(cached[1])
        else:
            relays = await self._look_up(agent_id)
            if len(self._holders) > 10_000:
                self._holders.clear()
            if relays:  # "none" is not kept: an agent coming online is used at once
                self._holders[agent_id] = (now, list(relays))
        random.shuffle(relays)
        return relays

    def forget(self, agent_id: str) -> None:
        """Look the holders up again next time (one failed)."""
        self._holders.pop(agent_id, None)

    async def _look_up(self, agent_id: str) -> list[RelayRow]:
        replicas = (await self._presence.replicas(agent_id)).get(agent_id, [])
        ids = {r.relay_id for r in replicas if not r.draining}
        ids.discard(self._presence.relay_id)
        if not ids:
            return []
        return [r for r in await self._presence.relays() if r.id in ids and r.cluster_url]

    async def forward(
        self,
        agent_id: str | None,
        conn_id: str,
        method: str,
        relative: str,
        headers: Fields,
        body: Body,
        *,
        to: list[RelayRow] | None = None,
        purpose: str = "",
    ) -> Answer:
        """The answer of a relay that holds the agent; AgentOffline when none does.

        *to*: these relays instead (tried in order), for a hop of *purpose*
        SLOT (this relay holds no share of the connection's cap).
        """
        if to is None:
            assert agent_id is not None
            relays = await self.holders(agent_id)
        else:
            relays = to
        holds = "the agent's tunnel" if to is None else "a share of the concurrency cap"
        if not relays:
            raise AgentOffline(
                f"agent {agent_id} is not connected to any relay; start it or check its log"
            )
        dropped = _DROPPED | connection_options(headers)
        sent: CIMultiDict[str] = CIMultiDict(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in headers
            if name.lower() not in dropped
        )
        # Only a body held in memory can be sent to a second relay.
        replayable = body is None or isinstance(body, bytes)
        failure: RelayError = AgentOffline(f"agent {agent_id} is not connected to any relay")
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._connect_timeout, sock_connect=self._connect_timeout
        )
        for relay in relays:
            sent[HOP_HEADER] = self._hop.sign(method, conn_id, relative, purpose)
            url = URL(f"{relay.cluster_url}/v1/connections/{conn_id}/proxy{relative}", encoded=True)
            try:
                resp = await self._http().request(
                    method,
                    url,
                    headers=sent,
                    data=body,
                    allow_redirects=False,
                    timeout=timeout,
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("forward_failed", relay=relay.advertise_ssh, error=type(exc).__name__)
                failure = TunnelLost(
                    f"relay {relay.advertise_ssh}, which holds {holds}, "
                    f"could not be reached ({type(exc).__name__})"
                )
                if agent_id is not None:
                    self.forget(agent_id)
                if not replayable:
                    raise failure from None
                continue
            if VIA_HEADER not in resp.headers:
                problem = await _problem(resp, relay)
                if problem.type == "agent_offline" and agent_id is not None:
                    self.forget(agent_id)
                if problem.type == "agent_offline" and replayable:
                    failure = problem
                    continue
                raise problem
            self.forwarded += 1
            return resp
        raise failure
