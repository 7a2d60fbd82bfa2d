"""HTTP Digest (RFC 7616): answer the API's challenge with MD5 or SHA-256
(and their -sess forms), qop=auth.

The first request goes without credentials; the 401's challenge is kept and
reused for later requests with a counting ``nc`` until the API says the
nonce is stale. A 401 to an answer on a fresh nonce means the credentials
are wrong: it is passed on, not retried.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from server.connections.model import DigestAuth
from server.proxy.auth.base import Grant, Handle, States

_HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
    "SHA-512-256": lambda data: hashlib.new("sha512_256", data).hexdigest(),
}
_PARAM_RE = re.compile(r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*,?')


@dataclass
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: str | None = None
    opaque: str | None = None
    stale: bool = False
    nc: int = 0


def parse_challenges(values: list[str]) -> list[Challenge]:
    """The Digest challenges among WWW-Authenticate values, strongest first."""
    found: list[Challenge] = []
    for value in values:
        # Several challenges may share one header: split at each scheme name.
        for part in re.split(r"(?:^|,)\s*(?=[A-Za-z][A-Za-z0-9-]*\s+[A-Za-z0-9-]+\s*=)", value):
            scheme, _, rest = part.strip().partition(" ")
            if scheme.lower() != "digest":
                continue
            params = {m.group(1).lower(): _unquote(m.group(2)) for m in _PARAM_RE.finditer(rest)}
            if "nonce" not in params:
                continue
            algorithm = params.get("algorithm", "MD5").upper()
            base = algorithm.removesuffix("-SESS")
            if base not in _HASHES:
                continue
            qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
            if qops and "auth" not in qops:
                continue  # only auth-int offered: we send no body hash
            found.append(
                Challenge(
                    realm=params.get("realm", ""),
                    nonce=params["nonce"],
                    algorithm=algorithm,
                    qop="auth" if qops else None,
                    opaque=params.get("opaque"),
                    stale=params.get("stale", "").lower() == "true",
                )
            )
    order = ["SHA-512-256", "SHA-256", "MD5"]
    return sorted(found, key=lambda c: order.index(c.algorithm.removesuffix("-SESS")))


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def answer(
    challenge: Challenge,
    username: str,
    password: str,
    method: str,
    uri: str,
    *,
    cnonce: str | None = None,
) -> str:
    """The Authorization header value for one request; counts ``nc`` up."""
    h = _HASHES[challenge.algorithm.removesuffix("-SESS")]
    challenge.nc += 1
    nc = f"{challenge.nc:08x}"
    cnonce = cnonce or secrets.token_hex(16)
    ha1 = h(f"{username}:{challenge.realm}:{password}".encode())
    if challenge.algorithm.endswith("-SESS"):
        ha1 = h(f"{ha1}:{challenge.nonce}:{cnonce}".encode())
    ha2 = h(f"{method}:{uri}".encode())
    if challenge.qop:
        response = h(f"{ha1}:{challenge.nonce}:{nc}:{cnonce}:{challenge.qop}:{ha2}".encode())
    else:
        response = h(f"{ha1}:{challenge.nonce}:{ha2}".encode())
    parts = [
        f"username={_quoted(username)}",
        f"realm={_quoted(challenge.realm)}",
        f"nonce={_quoted(challenge.nonce)}",
        f"uri={_quoted(uri)}",
        f"algorithm={challenge.algorithm}",
        f"response={_quoted(response)}",
    ]
    if challenge.opaque is not None:
        parts.append(f"opaque={_quoted(challenge.opaque)}")
    if challenge.qop:
        parts += [f"qop={challenge.qop}", f"nc={nc}", f"cnonce={_quoted(cnonce)}"]
    return "Digest " + ", ".join(parts)


@dataclass
class _Latest:
    challenge: Challenge | None = None


class Digest:
    def __init__(self) -> None:
        self._latest = States(_Latest)

    def may_retry(self, handle: Handle) -> bool:
        return True

    def grant_now(self, handle: Handle, target: str) -> Grant | None:
        return None  # a session, challenge or token may have to be fetched first

    async def authorize(self, handle: Handle, method: str, target: str) -> Grant:
        auth = handle.connection.http.auth
        assert isinstance(auth, DigestAuth)
        challenge = self._latest.get(handle).challenge
        if challenge is None:
            return Grant(target)  # the API's 401 brings the challenge
        value = answer(challenge, auth.username, auth.password or "", method, target)
        return Grant(target, [("Authorization", value)], used=challenge.nonce)

    def wants_retry(
        self, handle: Handle, grant: Grant, status: int, headers: CIMultiDictProxy[str]
    ) -> bool:
        if status != 401:
            return False
        challenges = parse_challenges(headers.getall("WWW-Authenticate", []))
        if not challenges:
            return False
        latest = self._latest.get(handle)
        if latest.challenge is None or latest.challenge.nonce != challenges[0].nonce:
            # Later requests answer the newest challenge, retried or not.
            latest.challenge = challenges[0]
        # No answer sent yet, or the API asks again with a stale nonce.
        return grant.used is None or challenges[0].stale

    async def on_unauthorized(
        self, handle: Handle, grant: Grant, headers: CIMultiDictProxy[str]
    ) -> None:
        return None  # wants_retry kept the new challenge

    def forget(self, conn_id: str) -> None:
        self._latest.forget(conn_id)
