"""A real OAuth 2.0 token endpoint (Authlib's ``AuthorizationServer``) and a
resource API that accepts its tokens, on two ports.

The token endpoint serves client credentials (secret in the Basic header or
in the body), password and refresh-token grants (rotating refresh tokens);
it counts its calls and the resource API counts its 401s.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    OAuth2Payload,
    OAuth2Request,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from multidict import MultiDict

CLIENT_ID = "sluice-test-client"
CLIENT_SECRET = "cs-" + "s3cr3t" * 4
USERNAME = "ada"
PASSWORD = "pw-" + "l0velace" * 3


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str
    auth_methods: tuple[str, ...] = ("client_secret_basic", "client_secret_post")

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return ""

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in self.auth_methods

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return True


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, form: MultiDict[str]) -> None:
        self._form = form

    @property
    def data(self) -> dict[str, str]:
        return dict(self._form)

    @property
    def datalist(self) -> dict[str, list[str]]:
        return {k: self._form.getall(k) for k in self._form}


class _Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, request: web.Request, form: MultiDict[str]) -> None:
        super().__init__(request.method, str(request.url), headers=request.headers)
        self._form_data = form
        self.payload = _Payload(form)

    @property
    def form(self) -> MultiDict[str]:
        return self._form_data

    @property
    def args(self) -> MultiDict[str]:
        return MultiDict()


@dataclass
class Issued:
    access_token: str
    expires_at: float
    grant_type: str


@dataclass
class OAuthProvider:
    """State shared by the token endpoint and the resource API."""

    token_port: int = 0
    api_port: int = 0
    expires_in: int = 3600
    token_calls: int = 0
    token_bodies: list[str] = field(default_factory=list)
    token_auth_headers: list[str | None] = field(default_factory=list)
    api_calls: int = 0
    api_unauthorized: int = 0
    access: dict[str, Issued] = field(default_factory=dict)
    refresh_tokens: set[str] = field(default_factory=set)
    issued_refresh: list[str] = field(default_factory=list)
    grant_types: list[str] = field(default_factory=list)

    @property
    def token_uri(self) -> str:
        return f"http://127.0.0.1:{self.token_port}/oauth/token"

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def new_refresh_token(self) -> str:
        token = "rt-" + secrets.token_urlsafe(24)
        self.refresh_tokens.add(token)
        self.issued_refresh.append(token)
        return token

    def revoke_all_access(self) -> None:
        self.access.clear()


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, provider: OAuthProvider) -> None:
        super().__init__()
        self.provider = provider
        self.clients = {CLIENT_ID: Client(CLIENT_ID, CLIENT_SECRET)}

    def query_client(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        self.provider.access[token["access_token"]] = Issued(
            token["access_token"],
            time.monotonic() + token.get("expires_in", 3600),
            request.payload.grant_type,
        )
        self.provider.grant_types.append(request.payload.grant_type)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request

    def handle_response(
        self, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> web.Response:
        return web.Response(body=json.dumps(body), status=status, headers=dict(headers))


class _PasswordGrant(grants.ResourceOwnerPasswordCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def authenticate_user(self, username: str, password: str) -> str | None:
        ok = username == USERNAME and secrets.compare_digest(password, PASSWORD)
        return USERNAME if ok else None


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


@dataclass
class RefreshCredential(TokenMixin):  # type: ignore[misc]
    token: str
    user: str

    def check_client(self, client: Client) -> bool:
        return client.client_id == CLIENT_ID

    def get_scope(self) -> str:
        return ""

    def get_expires_in(self) -> int:
        return 0

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return False


def _refresh_grant(provider: OAuthProvider) -> type:
    class RefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
        INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

        def authenticate_refresh_token(self, refresh_token: str) -> RefreshCredential | None:
            if refresh_token in provider.refresh_tokens:
                return RefreshCredential(refresh_token, USERNAME)
            return None

        def authenticate_user(self, credential: RefreshCredential) -> str:
            return credential.user

        def revoke_old_credential(self, credential: RefreshCredential) -> None:
            provider.refresh_tokens.discard(credential.token)

    return RefreshGrant


@contextmanager
def _insecure_transport() -> Iterator[None]:
    # The endpoint is plain HTTP on loopback; Authlib refuses that unless told.
    old = os.environ.get("AUTHLIB_INSECURE_TRANSPORT")
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("AUTHLIB_INSECURE_TRANSPORT", None)
        else:
            os.environ["AUTHLIB_INSECURE_TRANSPORT"] = old


async def serve_oauth(host: str = "127.0.0.1") -> AsyncIterator[OAuthProvider]:
    provider = OAuthProvider()
    server = _Server(provider)
    server.register_grant(_ClientCredentialsGrant)
    server.register_grant(_PasswordGrant)
    server.register_grant(_refresh_grant(provider))
    server.register_token_generator(
        "default",
        BearerTokenGenerator(
            access_token_generator=lambda *a, **k: "at-" + secrets.token_urlsafe(24),
            refresh_token_generator=lambda *a, **k: provider.new_refresh_token(),
            expires_generator=lambda client, grant_type: provider.expires_in,
        ),
    )

    async def token(request: web.Request) -> web.Response:
        form: MultiDict[str] = MultiDict(
            (k, v) for k, v in (await request.post()).items() if isinstance(v, str)
        )
        provider.token_calls += 1
        provider.token_bodies.append("&".join(f"{k}={v}" for k, v in form.items()))
        provider.token_auth_headers.append(request.headers.get("Authorization"))
        await asyncio.sleep(0)  # let concurrent callers pile up, as a slow IdP would
        with _insecure_transport():
            response: web.Response = server.create_token_response(_Request(request, form))
        return response

    async def data(request: web.Request) -> web.Response:
        provider.api_calls += 1
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ")
        issued = provider.access.get(presented)
        if issued is None or time.monotonic() >= issued.expires_at:
            provider.api_unauthorized += 1
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response({"ok": True, "grant": issued.grant_type, "path": request.path})

    token_app = web.Application()
    token_app.router.add_post("/oauth/token", token)
    api_app = web.Application()
    api_app.router.add_route("*", "/{tail:.*}", data)
    runners = [web.AppRunner(token_app), web.AppRunner(api_app)]
    ports = []
    for runner in runners:
        await runner.setup()
        site = web.TCPSite(runner, host, 0)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    provider.token_port, provider.api_port = ports
    try:
        yield provider
    finally:
        for runner in runners:
            await runner.cleanup()
