"""The request engine: one code path for cloud and on-premise connections.

It turns "send METHOD relative-URI through connection C" into an HTTP request
(URL joined to the base URI, headers from the connection, its media type and
the credentials of its auth scheme, see ``server.proxy.auth``), sends it
directly or through the connection's agent, retries once when the scheme
asks (a refreshed token, a new session, a digest challenge), and answers
connection tests (ping).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from multidict import CIMultiDict
from yarl import URL

from server.connections.certificates import CertificateError
from server.connections.model import Connection, media_type_header
from server.errors import AgentOffline, RelayError, UpstreamBadAnswer, UpstreamHeadTooLarge
from server.proxy import wiretap
from server.proxy.auth.authenticator import Authenticator
from server.proxy.auth.base import Handle as AuthHandle
from server.proxy.auth.base import SaveSecrets, TokenRefreshFailed, Tools
from server.proxy.cloud_http import CloudHTTP
from server.proxy.headers import (
    Fields,
    connection_options,
    encode_text,
    get,
    request_fields,
)
from server.proxy.prepared import PreparedRequests
from server.proxy.success_path import health_verdict
from server.proxy.templating import TemplateError, render_body, render_header_value, render_uri
from server.proxy.tls import TLSContexts
from server.proxy.urls import URLError, join_target
from server.tunnel.http1 import USER_AGENT, Answer, Body, Http1Response, Http1Stream
from server.tunnel.http_client import TunnelHTTP, default_tls
from server.tunnel.registry import TunnelRegistry
from server.tunnel.stream_pool import prepare
from sluice.logs import mask_secrets

if TYPE_CHECKING:
    from server.cluster.forward import Forwarder

log = structlog.get_logger("sluice.relay.engine")

# Bodies up to this size are kept so the request can be replayed after a
# token refresh; larger streamed bodies are sent once.
REPLAY_LIMIT = 1024 * 1024
PING_BODY_LIMIT = 1024 * 1024

# Sent with aiohttp's client instead of the lean stream pool: CONNECT (whose
# answer turns the connection into a tunnel).
_SLOW_PATH_METHODS = frozenset({"CONNECT"})


class InvalidRequest(RelayError):
    type = "invalid_request"
    status = 400
    title = "The request cannot be sent through this connection"


class UpgradeNotSupported(RelayError):
    type = "upgrade_not_supported"
    status = 501
    title = "The relay does not switch protocols (Upgrade) on a proxied request"


class UpstreamTLSError(RelayError):
    type = "upstream_tls_error"
    status = 502
    title = "The API's TLS certificate was not accepted"


__all__ = ["Engine", "Handle", "InvalidRequest", "TokenRefreshFailed", "UpstreamTLSError"]


@dataclass
class Handle:
    """A connection as the engine uses it: settings with secrets decrypted.

    ``id`` is None for unsaved settings (the test endpoint); their refreshed
    token lives only as long as the handle.
    """

    id: str | None
    connection: Connection
    masks: list[str] = field(default_factory=list)
    # Shared by the handles of one cached read of the settings (server.proxy.prepared).
    prepared: PreparedRequests = field(default_factory=PreparedRequests, repr=False, compare=False)

    def template_context(self) -> dict[str, Any]:
        return self.connection.model_dump(mode="json")

    def mask(self, text: str) -> str:
        """*text* with this connection's secrets masked, escaped and
        percent-encoded forms included."""
        return mask_secrets(text, (secret for secret in self.masks if len(secret) >= 4))


# A request sent at once: its stream, and the answer to come.
Begun = tuple[Http1Stream, "asyncio.Future[Http1Response]"]


@dataclass(frozen=True)
class PingResult:
    ok: bool
    status: int | None
    elapsed_ms: float
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "status": self.status,
            "elapsed_ms": self.elapsed_ms,
            "message": self.message,
        }


class Engine:
    def __init__(
        self,
        registry: TunnelRegistry,
        tunnel_http: TunnelHTTP,
        cloud_http: CloudHTTP,
        save_secrets: SaveSecrets,
        on_refresh: Callable[[str], None] | None = None,
        remember_secrets: Callable[..., None] | None = None,
    ) -> None:
        """*remember_secrets* (the log masker) is told every secret an auth
        scheme learns (refreshed tokens, session cookies)."""
        self._registry = registry
        self._remember = remember_secrets
        self._tunnel_http = tunnel_http
        self._cloud = cloud_http
        self._auth = Authenticator(Tools(self._send_auth, save_secrets, on_refresh))
        self._tls = TLSContexts()
        # Set by the relay when it is a cluster member: a ping for an agent
        # whose tunnels other relays hold goes through one of them.
        self.forwarder: Forwarder | None = None

    def __repr__(self) -> str:
        return f"<Engine {self._auth!r} {self._tls!r}>"

    # -- sending ------------------------------------------------------------
    def _session(self, handle: Handle) -> aiohttp.ClientSession:
        connection = handle.connection
        if connection.mode == "on_premise":
            assert connection.agent_id is not None
            self._check_online(connection.agent_id)
            return self._tunnel_http.session(connection.agent_id)
        return self._cloud.session

    def _check_online(self, agent_id: str) -> None:
        if not self._registry.is_online(agent_id):
            raise AgentOffline(f"agent {agent_id} is not connected; start it or check its log")

    def _ssl(self, handle: Handle) -> ssl.SSLContext | bool:
        try:
            return self._tls.for_settings(handle.connection.http.tls)
        except CertificateError as exc:
            raise InvalidRequest(f"http.tls.client_certificate.{exc.field}: {exc.reason}") from None

    def _timeout(self, handle: Handle) -> aiohttp.ClientTimeout:
        t = handle.connection.http.timeouts
        return aiohttp.ClientTimeout(total=t.total, connect=t.connect, sock_connect=t.connect)

    def _target(self, handle: Handle, relative: str) -> tuple[URL, str]:
        """The API's origin and the request-target, the caller's part kept as sent."""
        try:
            origin, target = join_target(handle.connection.http.base_uri, relative)
        except URLError as exc:
            raise InvalidRequest(str(exc)) from None
        return origin, target

    def _fields(
        self, handle: Handle, caller: Fields, auth: Sequence[tuple[str, str]] = ()
    ) -> Fields:
        """What the API gets: ``server.proxy.headers.request_fields`` with this
        connection's own fields (configured headers, *auth*: the auth scheme's
        credentials) and defaults (media type, User-Agent)."""
        http = handle.connection.http
        owned: list[tuple[str, str]] = []
        context: dict[str, Any] | None = None
        # The model refuses framing and hop-by-hop names (RESERVED_HEADERS),
        # stored documents included: they are validated again when read.
        for header in http.headers:
            if "{{" not in header.value:
                owned.append((header.name, header.value))
                continue
            if context is None:
                context = handle.template_context()
            try:
                value = render_header_value(header.value, context, name=f"header {header.name}")
            except TemplateError as exc:
                raise InvalidRequest(f"header {header.name}: {exc}") from None
            owned.append((header.name, value))
        for name, value in auth:
            owned = [(n, v) for n, v in owned if n.lower() != name.lower()]
            owned.append((name, value))
        return request_fields(
            caller, encode_text(owned) if owned else (), _defaults(http.media_type)
        )

    async def _send(
        self,
        handle: Handle,
        method: str,
        origin: URL,
        target: str,
        fields: Fields,
        body: Body,
        length: int | None = None,
    ) -> Answer:
        wiretap.sent(method, origin, target, fields)
        if handle.connection.mode == "cloud":
            self._cloud.check(origin)
        if method not in _SLOW_PATH_METHODS:
            return await self._send_lean(handle, method, origin, target, fields, body, length)
        return await self._send_aiohttp(handle, method, origin.with_path(""), target, fields, body)

    async def _send_aiohttp(
        self, handle: Handle, method: str, origin: URL, target: str, fields: Fields, body: Body
    ) -> Answer:
        """CONNECT, through aiohttp (header values as text: obs-text is not kept)."""
        url = URL(str(origin).rstrip("/") + target, encoded=True)
        headers = CIMultiDict(
            (n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in fields
        )
        session = self._session(handle)
        try:
            return await session.request(
                method,
                url,
                headers=headers,
                data=body,
                ssl=self._ssl(handle),
                timeout=self._timeout(handle),
                allow_redirects=False,
            )
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            raise UpstreamTLSError(f"TLS to {url.host} failed: {exc}") from exc
        except TimeoutError:
            from server.errors import UpstreamTimeout

            raise UpstreamTimeout(
                f"{url.host} did not answer within the connection's timeouts"
            ) from None
        except RelayError:
            raise
        except aiohttp.ClientConnectorError as exc:
            from server.errors import UpstreamConnectFailed

            cause = exc.__cause__
            if isinstance(cause, RelayError):
                raise cause from None
            raise UpstreamConnectFailed(f"cannot connect to {url.host}: {exc.strerror}") from exc
        except (HttpProcessingError, aiohttp.ClientResponseError) as exc:
            # aiohttp's parser refused the answer's head; its text may quote
            # the head (and a URL-parameter token in it), so only the kind is told.
            text = str(exc).lower()
            if isinstance(exc, LineTooLong) or any(
                words in text for words in ("got more than", "too long", "too many")
            ):
                raise UpstreamHeadTooLarge(
                    f"{url.host} sent an answer head larger than the relay accepts"
                ) from None
            raise UpstreamBadAnswer(
                f"{url.host} sent an answer that is not valid HTTP/1.1"
            ) from None

    async def _send_lean(
        self,
        handle: Handle,
        method: str,
        url: URL,
        target: str,
        fields: Fields,
        body: Body,
        length: int | None,
    ) -> Answer:
        """The proxy's path: a kept-alive HTTP/1.1 stream, through the agent
        (on-premise) or from the relay (cloud)."""
        if handle.connection.mode == "on_premise":
            agent_id = handle.connection.agent_id
            assert agent_id is not None
            self._check_online(agent_id)
            pool = self._tunnel_http.pool(agent_id)
        else:
            pool = self._cloud.pool
        tls: ssl.SSLContext | None = None
        if url.scheme == "https":
            chosen = self._ssl(handle)
            tls = chosen if isinstance(chosen, ssl.SSLContext) else default_tls(chosen)
        timeouts = handle.connection.http.timeouts
        try:
            return await pool.request(
                method,
                url,
                target,
                fields,
                body,
                tls,
                connect=timeouts.connect,
                total=timeouts.total,
                length=length,
            )
        except ssl.SSLError as exc:
            raise UpstreamTLSError(f"TLS to {url.host} failed: {exc}") from exc
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

    async def request(
        self,
        handle: Handle,
        method: str,
        relative: str,
        headers: Fields,
        body: Body,
    ) -> Answer:
        """Send a request through *handle*'s connection; the caller releases the answer.

        *headers* are the caller's fields as received (bytes, in order). The
        connection's auth scheme adds its credentials; when it asks for it (a
        401 to refresh a token, a digest challenge) the request is sent once
        more, with a body of at most REPLAY_LIMIT bytes replayed."""
        if b"upgrade" in connection_options(headers) and get(headers, b"upgrade") is not None:
            raise UpgradeNotSupported(
                "the request asks to switch protocols (Upgrade: "
                f"{(get(headers, b'upgrade') or b'').decode('latin-1')}); the relay proxies "
                "HTTP/1.1 requests only; send it without Connection: upgrade"
            )
        replay: bytes | None = None
        may_retry = self._auth.may_retry(handle)
        if may_retry and body is not None and not isinstance(body, bytes):
            replay, body = await _buffer_small(body)
        elif isinstance(body, bytes):
            replay = body
        length = _declared_length(headers)
        origin, target = self._target(handle, relative)
        grant = await self._auth.authorize(handle, method, target)
        self._remember_learned(handle)
        response = await self._send(
            handle,
            method,
            origin,
            grant.target,
            self._fields(handle, headers, grant.headers),
            body,
            length,
        )
        # A scheme that never sends a request twice is not asked (asking
        # builds the answer's headers as text, a cost on every request).
        if (
            not may_retry
            or (body is not None and replay is None)
            or not self._auth.wants_retry(handle, grant, response.status, response.headers)
        ):
            return response
        response.release()
        await self._auth.on_unauthorized(handle, grant, response.headers)
        grant = await self._auth.authorize(handle, method, target)
        self._remember_learned(handle)
        return await self._send(
            handle,
            method,
            origin,
            grant.target,
            self._fields(handle, headers, grant.headers),
            replay,
        )

    def begin_now(
        self,
        handle: Handle,
        method: str,
        relative: str,
        headers: Fields,
        body: bytes | None,
        declared: int | None,
    ) -> Begun | None:
        """``request`` without waiting (``server.proxy.fast_path``): sent at
        once on an idle kept-alive stream when nothing needs awaiting first
        (no token to fetch, no retry the scheme may ask for, no stream to
        dial). None when that is not so, or when something is wrong with
        the request: nothing was sent, and ``request`` says what is wrong.
        *declared* is the caller's Content-Length field (``request`` reads
        it from *headers*)."""
        if method in _SLOW_PATH_METHODS:
            return None
        connection = handle.connection
        http = connection.http
        prepared = handle.prepared
        size = len(body) if body is not None else declared
        # The whole request, when the fast path sent it before from these
        # very settings (``PreparedRequests.requests``).
        request_key = (method, relative, tuple(headers), size)
        kept = prepared.requests.get(request_key)
        try:
            if kept is not None and kept[0] is connection:
                origin, head, learned = kept[1], kept[2], kept[3]
                if learned:
                    # What the grant told the handle and the log masker, as
                    # the scheme's grant_now does each time.
                    handle.masks.extend(learned)
                    if self._remember is not None:
                        self._remember(*learned)
            else:
                joined = prepared.target(http.base_uri, relative)
                # A request-target seen for the first time: its head is not
                # kept (one-off paths, /items/1, /items/2..., would only fill
                # the cache).
                again = joined is not None
                if joined is None:
                    joined = self._target(handle, relative)
                    prepared.keep_target(http.base_uri, relative, joined)
                origin, target = joined
                known = len(handle.masks)  # told to the log masker already
                grant = self._auth.grant_at_once(handle, target)
                if grant is None:
                    return None  # a scheme that may send it twice, or must wait first
                learned = tuple(handle.masks[known:])
                if learned and self._remember is not None:
                    self._remember(*learned)
                tls: ssl.SSLContext | None = None
                if origin.scheme == "https":
                    chosen = self._ssl(handle)
                    tls = chosen if isinstance(chosen, ssl.SSLContext) else default_tls(chosen)
                # (A templated field is rendered for each request.)
                keep = again and not any("{{" in h.value for h in http.headers)
                made = None
                if keep:
                    # Everything the head is made of, but the settings object
                    # (the cache checks that one by identity).
                    key = (method, grant.target, tuple(headers), tuple(grant.headers), size, tls)
                    made = prepared.head(key, connection)
                if made is None:
                    fields = self._fields(handle, headers, grant.headers)
                    made = prepare(method, origin, grant.target, fields, size, tls)
                    if keep:
                        prepared.keep_head(key, connection, made)
                if keep and tls is None:
                    # (A TLS context is looked up for each request: a reloaded
                    # certificate makes a new one, and so a new pool key.)
                    prepared.keep_request(request_key, (connection, origin, made, learned))
                head = made
            if connection.mode == "on_premise":
                agent_id = connection.agent_id
                if agent_id is None or not self._registry.is_online(agent_id):
                    return None
                pool = self._tunnel_http.pool(agent_id)
            else:
                self._cloud.check(origin)
                pool = self._cloud.pool
            # The wiretap is not told: its only listener, the debug log,
            # sends through ``request`` (a connection with an open window
            # never takes this way).
            return pool.begin_prepared(head, body, http.timeouts.total)
        except (RelayError, ValueError):
            return None

    def _remember_learned(self, handle: Handle) -> None:
        """Secrets the auth scheme learned (in ``handle.masks``) reach the log
        masker too: a refreshed token must not appear in any log line."""
        if self._remember is not None and handle.masks:
            self._remember(*handle.masks)

    def forget_token(self, conn_id: str) -> None:
        """Drop cached tokens, sessions and challenges (the connection was edited or deleted)."""
        self._auth.forget(conn_id)

    async def _send_auth(
        self,
        handle: AuthHandle,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: bytes | None,
    ) -> Answer:
        """For auth schemes: token, refresh and login calls go the API's way."""
        assert isinstance(handle, Handle)
        headers.setdefault("User-Agent", USER_AGENT)
        return await self._send(
            handle,
            method,
            url.with_path("").with_query(None),
            url.raw_path_qs,
            encode_text(headers.items()),
            body,
        )

    # -- ping -----------------------------------------------------------------
    async def ping(self, handle: Handle) -> PingResult:
        """Test the connection with its ping settings; never raises for a failed test."""
        ping = handle.connection.http.ping
        began = time.perf_counter()

        def done(ok: bool, status: int | None, message: str) -> PingResult:
            ms = round((time.perf_counter() - began) * 1000, 1)
            return PingResult(ok, status, ms, handle.mask(message))

        if ping is None or not ping.relative_uri:
            return done(False, None, "no ping relative URI is set; it is required for a test")
        try:
            context = handle.template_context()
            relative = render_uri(ping.relative_uri, context, name="http.ping.relative_uri")
            media_type = handle.connection.http.media_type
            body = render_body(ping.body, context, media_type).encode() if ping.body else None
            response = await self._ping_request(handle, ping.method, relative, body)
        except TemplateError as exc:
            return done(False, None, f"ping template: {exc}")
        except RelayError as exc:
            return done(False, None, f"{exc.type}: {exc}")
        except (aiohttp.ClientError, HttpProcessingError, OSError, ValueError) as exc:
            # Whatever else the way to the API throws is a failed test, not a
            # relay error; its text may quote the URL, so only its kind is told.
            return done(False, None, f"the request failed: {type(exc).__name__}")
        try:
            async with response:
                raw = await response.content.read(PING_BODY_LIMIT)
                content_type = response.headers.get("Content-Type")
        except RelayError as exc:
            return done(False, response.status, f"{exc.type}: {exc}")
        except (aiohttp.ClientError, HttpProcessingError, OSError, ValueError) as exc:
            return done(False, response.status, f"the answer was cut off: {type(exc).__name__}")
        ok, message = health_verdict(response.status, raw, content_type, ping, mask=handle.mask)
        return done(ok, response.status, message)

    async def _ping_request(
        self, handle: Handle, method: str, relative: str, body: bytes | None
    ) -> Answer:
        """Through this relay's tunnel; when this relay holds none to the
        agent but another relay of the cluster does, through that relay, as a
        forwarded proxy request (so the ping takes the path a request would)."""
        connection = handle.connection
        agent_id = connection.agent_id
        if (
            self.forwarder is not None
            and handle.id is not None
            and connection.mode == "on_premise"
            and agent_id is not None
            and not self._registry.is_online(agent_id)
        ):
            # The proxy route's tail starts with "/" or "?" (or is empty).
            if relative and relative[0] not in "/?":
                relative = "/" + relative
            return await self.forwarder.forward(agent_id, handle.id, method, relative, [], body)
        return await self.request(handle, method, relative, [], body)


def _declared_length(headers: Fields) -> int | None:
    """The caller's Content-Length, so a streamed body keeps it (else: chunked)."""
    value = get(headers, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


@functools.lru_cache(maxsize=64)
def _defaults(media_type: str) -> Fields:
    """Fields the API gets when the caller sent none of that name."""
    content_type = media_type_header(media_type).encode()
    return [
        (b"Content-Type", content_type),
        (b"Accept", content_type),
        (b"User-Agent", USER_AGENT.encode()),
    ]


async def _buffer_small(body: Body) -> tuple[bytes | None, Body]:
    """Read up to REPLAY_LIMIT; return (bytes, bytes) if it all fit, else (None, stream)."""
    assert body is not None
    assert not isinstance(body, bytes)
    chunks: list[bytes] = []
    size = 0
    iterator = body.iter_any() if isinstance(body, aiohttp.StreamReader) else body
    agen = iterator.__aiter__()
    async for chunk in agen:
        chunks.append(chunk)
        size += len(chunk)
        if size > REPLAY_LIMIT:

            async def rest() -> AsyncIterable[bytes]:
                for c in chunks:
                    yield c
                async for c in agen:
                    yield c

            return None, rest()
    data = b"".join(chunks)
    return data, data
