"""aiohttp on tunnel streams: how relay code sends HTTP to an agent's network.

``TunnelConnector`` replaces aiohttp's TCP connector: each new connection is
a CONNECT stream through one of the agent's live replicas, with TLS run end
to end inside it. aiohttp pools these streams like sockets, so keep-alive
reuses a stream across requests. The only aiohttp internal touched is
``BaseConnector._create_connection``, the hook aiohttp's own connectors use.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import weakref
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.tracing import Trace

from server.errors import UpstreamTimeout
from server.tunnel.channel_transport import feed, start_tls
from server.tunnel.registry import Tunnel, TunnelRegistry
from server.tunnel.stream_opener import StreamOpener, stream_target
from server.tunnel.stream_pool import StreamPool, TunnelDialer

# aiohttp adds these when a request has none; the proxy sends only what the
# caller sent and the connection owns (server.proxy.headers).
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


@functools.cache
def default_tls(verify: bool) -> ssl.SSLContext:
    """The system CA store's TLS context (or, *verify* False, one that checks
    nothing), made once: loading the CA store costs milliseconds."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class TunnelConnector(aiohttp.BaseConnector):
    """An aiohttp connector whose connections are streams through an agent."""

    def __init__(
        self, opener: StreamOpener, *, connect_timeout: float = 10.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._opener = opener
        self._agent_id = opener.agent_id
        self._connect_timeout = connect_timeout
        self._tunnel_of: weakref.WeakKeyDictionary[ResponseHandler, Tunnel] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"<TunnelConnector agent={self._agent_id}>"

    def _ssl_context(self, req: ClientRequest) -> ssl.SSLContext:
        if isinstance(req.ssl, ssl.SSLContext):
            return req.ssl
        if req.ssl is False:
            return default_tls(False)
        if req.ssl is True or req.ssl is None:
            return default_tls(True)
        raise ValueError("certificate fingerprints are not supported through a tunnel")

    async def _create_connection(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        host = (req.host or "").lower()
        target = stream_target(host, req.port)
        limit = timeout.sock_connect or timeout.connect or self._connect_timeout
        protocol = ResponseHandler(asyncio.get_running_loop())
        try:
            async with asyncio.timeout(limit):
                transport, _session, rest, tunnel = await self._opener.open(target)
                self._tunnel_of[protocol] = tunnel
                if not req.is_ssl():
                    transport.set_protocol(protocol)
                    protocol.connection_made(transport)
                    if rest:
                        feed(protocol, rest)
                    return protocol
                try:
                    await start_tls(
                        transport,
                        protocol,
                        self._ssl_context(req),
                        req.server_hostname or host,
                    )
                except ssl.SSLCertVerificationError as exc:
                    raise aiohttp.ClientConnectorCertificateError(req.connection_key, exc) from exc
                except ssl.SSLError as exc:
                    raise aiohttp.ClientConnectorSSLError(req.connection_key, exc) from exc
                return protocol
        except TimeoutError:
            raise UpstreamTimeout(
                f"no connection to {target.authority()} through agent {self._agent_id} "
                f"within {limit:g} s"
            ) from None

    def _release(self, key: Any, protocol: ResponseHandler, *, should_close: bool = False) -> None:
        # A stream on a draining replica is not pooled: the agent is waiting
        # for its streams to end before it exits.
        tunnel = self._tunnel_of.get(protocol)
        if tunnel is not None and tunnel.draining:
            should_close = True
        super()._release(key, protocol, should_close=should_close)

    def close_idle(self, tunnel: Tunnel) -> int:
        """Close pooled (idle) streams that run through *tunnel*."""
        closed = 0
        for conns in self._conns.values():
            for protocol, _since in list(conns):
                if self._tunnel_of.get(protocol) is tunnel:
                    conns.remove((protocol, _since))
                    protocol.close()
                    closed += 1
        return closed


class TunnelHTTP:
    """One pooled aiohttp session per agent; closed with the relay."""

    def __init__(
        self,
        registry: TunnelRegistry,
        *,
        connect_timeout: float = 10.0,
        keepalive_timeout: float = 15.0,
        max_streams: int = 1024,
        streams_per_second: float = 1000.0,
    ) -> None:
        self._registry = registry
        self._connect_timeout = connect_timeout
        self._max_streams = max_streams
        self._streams_per_second = streams_per_second
        self._keepalive_timeout = keepalive_timeout
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._openers: dict[str, StreamOpener] = {}
        self._pools: dict[str, StreamPool] = {}
        registry.on_draining(self._tunnel_draining)

    def __repr__(self) -> str:
        return f"<TunnelHTTP sessions={len(self._sessions)}>"

    def session(self, agent_id: str) -> aiohttp.ClientSession:
        """The aiohttp session whose requests travel through *agent_id*'s tunnel."""
        session = self._sessions.get(agent_id)
        if session is None or session.closed:
            connector = TunnelConnector(
                self._opener(agent_id),
                connect_timeout=self._connect_timeout,
                keepalive_timeout=self._keepalive_timeout,
                limit=0,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                trust_env=False,
                skip_auto_headers=SKIP_AUTO_HEADERS,
            )
            self._sessions[agent_id] = session
        return session

    def pool(self, agent_id: str) -> StreamPool:
        """The kept-alive HTTP/1.1 streams through *agent_id*'s tunnel (the fast path)."""
        pool = self._pools.get(agent_id)
        if pool is None:
            pool = StreamPool(
                TunnelDialer(self._opener(agent_id)),
                connect_timeout=self._connect_timeout,
                keepalive_timeout=self._keepalive_timeout,
            )
            self._pools[agent_id] = pool
        return pool

    def _opener(self, agent_id: str) -> StreamOpener:
        opener = self._openers.get(agent_id)
        if opener is None:
            opener = StreamOpener(
                self._registry,
                agent_id,
                max_streams=self._max_streams,
                streams_per_second=self._streams_per_second,
            )
            self._openers[agent_id] = opener
        return opener

    def _tunnel_draining(self, tunnel: Tunnel) -> None:
        session = self._sessions.get(tunnel.agent_id)
        if session is not None and isinstance(session.connector, TunnelConnector):
            session.connector.close_idle(tunnel)
        pool = self._pools.get(tunnel.agent_id)
        if pool is not None:
            pool.close_idle(tunnel)

    async def forget(self, agent_id: str) -> None:
        self._openers.pop(agent_id, None)
        pool = self._pools.pop(agent_id, None)
        if pool is not None:
            pool.close_idle()
        session = self._sessions.pop(agent_id, None)
        if session is not None:
            await session.close()

    async def close(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close_idle()
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()
