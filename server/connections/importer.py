"""Import an integrator.io HTTP connection (its JSON export) as a Sluice connection.

``from_integrator`` maps the export's fields (integrator.io's public schema:
``http.baseURI``, ``http.auth.basic``, ``http.auth.token.refresh*``,
``http.auth.oauth``, ``http.clientCertificates``…) onto a connection document
and lists every field it could not carry over, with the reason: nothing is
dropped silently. An auth type Sluice cannot perform (WSSE, JWT, OAuth 1.0a,
the OAuth authorization-code flow) makes the import fail with
``UnsupportedExport`` naming it. Handlebars paths that moved are rewritten so
imported templates keep working.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl

from server.connections.model import RESERVED_HEADERS

_KEY_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
MASKED: Final = "******"  # how integrator.io shows a secret in an export

# integrator.io template paths → Sluice's (the rest, e.g. encrypted.*, are the same).
_PATHS: Final = [
    ("connection.http.auth.token.refreshToken", "connection.http.encrypted.refresh_token"),
    ("connection.http.auth.token.token", "connection.http.auth.token"),
    ("connection.http.auth.basic.username", "connection.http.auth.username"),
    ("connection.http.auth.basic.password", "connection.http.auth.password"),
    ("connection.http.baseURI", "connection.http.base_uri"),
    ("connection.http.mediaType", "connection.http.media_type"),
]
_MEDIA_TYPES: Final = {"json", "xml", "urlencoded", "plaintext", "csv"}
_UNSUPPORTED_AUTH: Final = {
    "wsse": "WS-Security UsernameToken",
    "jwt": "legacy JWT",
    "jwtbearer": "JWT bearer",
    "oauth1": "OAuth 1.0a",
    "specific": "API-specific",
}
SUPPORTED_AUTH: Final = "basic, digest, token, oauth (client credentials, password), cookie, custom"

# Top-level fields that are integrator.io's own bookkeeping.
_BOOKKEEPING: Final = {
    "_id": "integrator.io's id; Sluice gives the connection its own",
    "_userId": "integrator.io account data",
    "_integrationId": "integrator.io account data",
    "_connectorId": "integrator.io account data",
    "createdAt": "set by Sluice when the connection is created",
    "lastModified": "set by Sluice when the connection changes",
    "offline": "Sluice tests connections on request (POST /v1/connections/{id}/test)",
    "sandbox": "Sluice has no sandbox environments",
    "debugDate": "integrator.io debug logging has no equivalent",
    "debugUntil": "integrator.io debug logging has no equivalent",
}
_LATER: Final = "not supported by Sluice yet"


class UnsupportedExport(ValueError):
    """The export cannot become a working connection; ``problems`` name the fields."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__(f"{len(problems)} unsupported field(s)")
        self.problems = problems


@dataclass
class Imported:
    document: dict[str, Any]
    unmapped: list[dict[str, str]] = field(default_factory=list)

    def skip(self, path: str, reason: str) -> None:
        self.unmapped.append({"field": path, "reason": reason})


def rewrite_template(text: str) -> str:
    """Point integrator.io handlebars paths at where Sluice keeps the value."""
    for old, new in _PATHS:
        text = re.sub(re.escape(old) + r"(?![A-Za-z0-9_])", new, text)
    return text


def from_integrator(export: Any, agent_id: str | None) -> Imported:
    """The Sluice connection document for an integrator.io HTTP connection export."""
    try:
        return _from_integrator(export, agent_id)
    except (AttributeError, TypeError, ValueError) as exc:
        if isinstance(exc, UnsupportedExport):
            raise
        # A field of the wrong JSON type (a list where an object belongs…).
        raise UnsupportedExport(
            [
                {
                    "field": "",
                    "message": "the export does not have the shape of an integrator.io HTTP "
                    "connection (a field holds the wrong JSON type)",
                }
            ]
        ) from None


def _from_integrator(export: Any, agent_id: str | None) -> Imported:
    if not isinstance(export, dict):
        raise UnsupportedExport([{"field": "", "message": "expected the export's JSON object"}])
    problems: list[dict[str, str]] = []
    if export.get("type") != "http":
        problems.append(
            {
                "field": "type",
                "message": f"is {export.get('type')!r}; only integrator.io HTTP connections "
                "('type': 'http') can be imported",
            }
        )
    http = export.get("http")
    if not isinstance(http, dict):
        problems.append({"field": "http", "message": "required: the HTTP connection settings"})
        raise UnsupportedExport(problems)
    if export.get("_agentId") and not agent_id:
        problems.append(
            {
                "field": "agent_id",
                "message": "the export runs through an integrator.io agent (_agentId); name the "
                "Sluice agent to use with ?agent_id=agt_…",
            }
        )
    out = Imported(
        {
            "name": str(export.get("name") or "Imported from integrator.io"),
            "mode": "on_premise" if agent_id else "cloud",
            "agent_id": agent_id,
            "http": {},
        }
    )
    if export.get("_agentId"):
        out.skip("_agentId", f"integrator.io agent; this connection uses Sluice agent {agent_id}")
    for key in export:
        if key in ("type", "http", "name", "_agentId"):
            continue
        out.skip(key, _BOOKKEEPING.get(key, "no equivalent in a Sluice connection"))
    _http(http, out, problems)
    if problems:
        raise UnsupportedExport(problems)
    return out


def _http(http: dict[str, Any], out: Imported, problems: list[dict[str, str]]) -> None:
    target: dict[str, Any] = out.document["http"]
    handled = {"baseURI", "mediaType", "headers", "auth", "encrypted", "unencrypted", "ping"}
    handled |= {"clientCertificates", "disableStrictSSL", "concurrencyLevel", "rateLimit"}
    handled |= {"retryHeader"}
    target["base_uri"] = http.get("baseURI")
    media = str(http.get("mediaType") or "json").lower()
    if media in _MEDIA_TYPES:
        target["media_type"] = media
    else:
        target["media_type"] = "json"
        out.skip("http.mediaType", f"'{media}' is not a Sluice media type; json is used")
    headers = []
    for i, header in enumerate(http.get("headers") or []):
        name, value = header.get("name"), header.get("value")
        if not isinstance(name, str) or not isinstance(value, str):
            out.skip(f"http.headers[{i}]", "needs a name and a value")
        elif name.lower() in RESERVED_HEADERS:
            out.skip(f"http.headers[{i}]", f"'{name}' is set by the relay itself")
        else:
            headers.append({"name": name, "value": rewrite_template(value)})
    target["headers"] = headers
    for kind in ("encrypted", "unencrypted"):
        values = http.get(kind)
        if values is None:
            continue
        if not isinstance(values, dict):
            out.skip(f"http.{kind}", "masked in the export; set the values again")
            continue
        kept = {}
        for key, value in values.items():
            if not _KEY_RE.match(key) or not isinstance(value, str):
                out.skip(f"http.{kind}.{key}", "keys are letters, digits, '_' or '-'; text values")
            elif value == MASKED:
                out.skip(f"http.{kind}.{key}", "masked in the export; set the value again")
            else:
                kept[key] = value
        target[kind] = kept
    tls: dict[str, Any] = {}
    if http.get("disableStrictSSL"):
        tls["verify"] = False
    _certificates(http.get("clientCertificates"), tls, out)
    if tls:
        target["tls"] = tls
    if isinstance(http.get("ping"), dict):
        _ping(http["ping"], target, out)
    _traffic(http, target, out)
    auth = http.get("auth")
    if isinstance(auth, dict):
        _auth(auth, target, out, problems)
    for key in http:
        if key not in handled:
            reason = {
                "targetConcurrencyLevel": _LATER,
                "successMediaType": "Sluice passes API answers through unparsed",
                "errorMediaType": "Sluice passes API answers through unparsed",
                "encryptedFields": "integrator.io form layout",
                "unencryptedFields": "integrator.io form layout",
                "formType": "integrator.io form layout",
                "_iClientId": "integrator.io iClient; client id and secret go in the connection",
            }.get(key, "no equivalent in a Sluice connection")
            out.skip(f"http.{key}", reason)


def _certificates(certs: Any, tls: dict[str, Any], out: Imported) -> None:
    if not isinstance(certs, dict):
        return
    if certs.get("ca"):
        tls["ca_bundle_pem"] = certs["ca"]
    mapping = {
        "cert": "cert_pem",
        "key": "key_pem",
        "pfx": "pfx_base64",
        "passphrase": "passphrase",
    }
    client = {}
    for old, new in mapping.items():
        value = certs.get(old)
        if value == MASKED:
            out.skip(f"http.clientCertificates.{old}", "masked in the export; set it again")
        elif value:
            client[new] = value
    if client:
        tls["client_certificate"] = client
    for key in certs:
        if key not in mapping and key != "ca":
            out.skip(f"http.clientCertificates.{key}", "no equivalent in a Sluice connection")


def _traffic(http: dict[str, Any], target: dict[str, Any], out: Imported) -> None:
    """concurrencyLevel, rateLimit and retryHeader (docs/TRAFFIC.md)."""
    level = http.get("concurrencyLevel")
    if isinstance(level, int) and not isinstance(level, bool) and 1 <= level <= 100:
        target["concurrency_level"] = level
    elif level is not None:
        out.skip("http.concurrencyLevel", "a whole number from 1 to 100")
    limit = http.get("rateLimit")
    if not isinstance(limit, dict) and http.get("retryHeader") is None:
        return
    rule: dict[str, Any] = {}
    if isinstance(limit, dict):
        if isinstance(limit.get("failStatusCode"), int):
            rule["fail_status"] = limit["failStatusCode"]
        values = [str(v) for v in limit.get("failValues") or []]
        if limit.get("failPath") and values:
            rule["fail_path"] = limit["failPath"]
            rule["fail_values"] = values
        elif limit.get("failPath"):
            out.skip("http.rateLimit.failPath", "needs failValues: what at the path means limited")
        for key in limit:
            if key not in ("failStatusCode", "failPath", "failValues"):
                out.skip(
                    f"http.rateLimit.{key}",
                    "Sluice waits what the API's retry header says, else backs off",
                )
    if isinstance(http.get("retryHeader"), str):
        rule["retry_header"] = http["retryHeader"]
    target["rate_limit"] = rule


_PING_FIELDS: Final = {
    "relativeURI": "relative_uri",
    "method": "method",
    "body": "body",
    "successPath": "success_path",
    "successValues": "success_values",
    "failPath": "fail_path",
    "failValues": "fail_values",
    "errorPath": "error_path",
}


def _ping(ping: dict[str, Any], target: dict[str, Any], out: Imported) -> None:
    if ping.get("relativeURI"):
        target["ping"] = {
            "relative_uri": rewrite_template(ping["relativeURI"]),
            "method": str(ping.get("method") or "GET").upper(),
            "success_path": ping.get("successPath"),
            "success_values": ping.get("successValues") or [],
        }
        if ping.get("body"):
            target["ping"]["body"] = rewrite_template(ping["body"])
        for old in ("failPath", "errorPath"):
            if ping.get(old):
                target["ping"][_PING_FIELDS[old]] = ping[old]
        if ping.get("failPath"):
            target["ping"]["fail_values"] = [str(v) for v in ping.get("failValues") or []]
    for key in ping:
        if key not in _PING_FIELDS:
            out.skip(f"http.ping.{key}", "no equivalent in a Sluice ping")


def _auth(
    auth: dict[str, Any],
    target: dict[str, Any],
    out: Imported,
    problems: list[dict[str, str]],
) -> None:
    kind = str(auth.get("type") or "custom").lower()
    used = {"type", kind}
    if kind in _UNSUPPORTED_AUTH:
        problems.append(
            {
                "field": "http.auth.type",
                "message": f"'{kind}' ({_UNSUPPORTED_AUTH[kind]}) is not supported; "
                f"supported: {SUPPORTED_AUTH}",
            }
        )
        return
    if kind == "custom":
        target["auth"] = {"type": "none"}
    elif kind in ("basic", "digest"):
        basic = auth.get("basic") or {}
        used = {"type", "basic"}
        target["auth"] = _secret_fields(
            {"type": kind, "username": basic.get("username")},
            {"password": basic.get("password")},
            "http.auth.basic",
            out,
        )
    elif kind == "token":
        _token(auth, target, out, problems)
        used |= {"failStatusCode", "failures"}
    elif kind == "oauth":
        _oauth(auth.get("oauth") or {}, target, out, problems)
    elif kind == "cookie":
        cookie = auth.get("cookie") or {}
        target["auth"] = {
            "type": "cookie",
            "uri": rewrite_template(str(cookie.get("uri") or "")),
            "method": str(cookie.get("method") or "POST").upper(),
            "body": rewrite_template(cookie["body"]) if cookie.get("body") else None,
            "success_status": int(cookie.get("successStatusCode") or 200),
        }
        for key in cookie:
            if key not in ("uri", "method", "body", "successStatusCode"):
                out.skip(f"http.auth.cookie.{key}", "no equivalent in Sluice's cookie auth")
    else:
        problems.append(
            {
                "field": "http.auth.type",
                "message": f"'{kind}' is unknown; supported: {SUPPORTED_AUTH}",
            }
        )
        return
    for key in auth:
        if key not in used:
            out.skip(f"http.auth.{key}", f"not used by {kind} auth in Sluice")


def _secret_fields(
    fields: dict[str, Any], secrets: dict[str, Any], prefix: str, out: Imported
) -> dict[str, Any]:
    for name, value in secrets.items():
        if value == MASKED:
            out.skip(f"{prefix}.{name}", "masked in the export; set it again")
        elif value:
            fields[name] = value
    return fields


def _token(
    auth: dict[str, Any], target: dict[str, Any], out: Imported, problems: list[dict[str, str]]
) -> None:
    token = auth.get("token") or {}
    location = str(token.get("location") or "header")
    if location not in ("header", "url"):
        problems.append(
            {
                "field": "http.auth.token.location",
                "message": f"'{location}' is not supported; Sluice sends a token in a header or "
                "URL parameter",
            }
        )
        return
    result: dict[str, Any] = _secret_fields(
        {
            "type": "token",
            "location": location,
            "header_name": token.get("headerName") or "Authorization",
            "scheme": token.get("scheme"),
            "param_name": token.get("paramName"),
        },
        {"token": token.get("token")},
        "http.auth.token",
        out,
    )
    if token.get("refreshToken") and token["refreshToken"] != MASKED:
        target.setdefault("encrypted", {})["refresh_token"] = token["refreshToken"]
    elif token.get("refreshToken") == MASKED:
        out.skip("http.auth.token.refreshToken", "masked in the export; set it again")
    if token.get("refreshMethod") or token.get("refreshRelativeURI"):
        codes = [auth["failStatusCode"]] if auth.get("failStatusCode") else []
        codes += [f["statusCode"] for f in auth.get("failures") or [] if f.get("statusCode")]
        refresh: dict[str, Any] = {
            "method": str(token.get("refreshMethod") or "POST").upper(),
            "relative_uri": rewrite_template(str(token.get("refreshRelativeURI") or "")),
            "headers": [
                {"name": h.get("name"), "value": rewrite_template(str(h.get("value") or ""))}
                for h in token.get("refreshHeaders") or []
            ],
            "body": rewrite_template(token["refreshBody"]) if token.get("refreshBody") else None,
            "media_type": str(token.get("refreshMediaType") or "urlencoded").lower(),
            "token_path": token.get("refreshTokenPath"),
        }
        if codes:
            refresh["fail_status_codes"] = sorted({int(c) for c in codes})
        result["refresh"] = refresh
    known = {"token", "location", "headerName", "scheme", "paramName", "refreshToken"}
    known |= {"refreshMethod", "refreshRelativeURI", "refreshHeaders", "refreshBody"}
    known |= {"refreshMediaType", "refreshTokenPath"}
    for key in token:
        if key not in known:
            out.skip(f"http.auth.token.{key}", "no equivalent in Sluice's token refresh")
    target["auth"] = result


def _oauth(
    oauth: dict[str, Any], target: dict[str, Any], out: Imported, problems: list[dict[str, str]]
) -> None:
    grant = str(oauth.get("grantType") or "authorizecode").lower()
    grants = {"clientcredentials": "client_credentials", "password": "password"}
    if grant not in grants:
        problems.append(
            {
                "field": "http.auth.oauth.grantType",
                "message": f"'{grant}' needs a browser consent step Sluice does not run; "
                "supported: clientcredentials, password",
            }
        )
        return
    scope = oauth.get("scope")
    if isinstance(scope, list):
        scope = str(oauth.get("scopeDelimiter") or " ").join(scope)
    location = str(oauth.get("clientCredentialsLocation") or "basicauthheader").lower()
    result: dict[str, Any] = _secret_fields(
        {
            "type": "oauth2",
            "grant_type": grants[grant],
            "token_uri": oauth.get("tokenURI"),
            "client_id": oauth.get("clientId"),
            "scope": scope or None,
            "client_credentials_location": "body" if location == "body" else "basic_header",
            "username": oauth.get("username"),
        },
        {"client_secret": oauth.get("clientSecret"), "password": oauth.get("password")},
        "http.auth.oauth",
        out,
    )
    if oauth.get("accessTokenBody"):
        extra = dict(parse_qsl(str(oauth["accessTokenBody"])))
        if "audience" in extra:
            result["audience"] = extra.pop("audience")
        if extra:
            result["extra_params"] = extra
    known = {"grantType", "tokenURI", "clientId", "clientSecret", "scope", "scopeDelimiter"}
    known |= {"clientCredentialsLocation", "username", "password", "accessTokenBody"}
    for key in oauth:
        if key == "accessTokenPath" and oauth[key] in ("access_token", ""):
            continue
        if key not in known:
            out.skip(f"http.auth.oauth.{key}", "no equivalent in Sluice's OAuth 2.0")
    target["auth"] = result
