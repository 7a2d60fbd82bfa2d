"""Connection documents as the API and the store handle them.

``validation_problems`` turns a ValidationError into the API's
``[{"field", "message"}]`` list. Secrets are the fields in ``AUTH_SECRETS``
and ``CERT_SECRETS`` and every ``http.encrypted`` value:
``iter_secrets``/``set_secret``/``map_secrets`` let the store seal and open
them; ``public_view`` is the only shape the API returns; ``merge_patch`` is
PATCH (RFC 7396 merge patch, secrets kept unless named).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any, Final

from pydantic import ValidationError

from server.connections.model import AUTH_TYPES, Connection

# Write-only fields of http.auth (any type) and of http.tls.client_certificate.
AUTH_SECRETS: Final = ("token", "password", "client_secret", "refresh_token")
CERT_SECRETS: Final = ("key_pem", "pfx_base64", "passphrase")
CERT_PATH: Final = "http.tls.client_certificate"
SECRET_PATHS: Final = (
    *(f"http.auth.{name}" for name in AUTH_SECRETS),
    *(f"{CERT_PATH}.{name}" for name in CERT_SECRETS),
    "http.encrypted.*",
)
# What public_view puts where a secret was; merge_patch drops them again, so
# a client may send back what it read. A secret field X shows as X_set.
SECRET_SET_MARKER: Final = "set"  # noqa: S105 - a field name, not a password
SET_SUFFIX: Final = "_set"
TOKEN_SET_FIELD: Final = "token_set"  # noqa: S105 - a field name, not a password


# -- errors --------------------------------------------------------------------
def validation_problems(exc: ValidationError) -> list[dict[str, str]]:
    """``[{"field": "http.headers[0].name", "message": …}]``, never echoing input."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = error["loc"]
        # The auth union names the chosen type in the location; the field
        # itself is http.auth.<name> whichever type it belongs to.
        if loc[:2] == ("http", "auth") and len(loc) > 2 and loc[2] in AUTH_TYPES:
            loc = loc[:2] + loc[3:]
        field = _dotted(loc)
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            field += ".type"
            message = "must be one of " + ", ".join(AUTH_TYPES)
        elif error["type"] == "extra_forbidden":
            message = "unknown field; check its spelling against the connection reference"
        else:
            message = error["msg"].removeprefix("Value error, ")
        problems.append({"field": field, "message": message})
    return problems


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


# -- secrets -------------------------------------------------------------------
def iter_secrets(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Every (path, value) secret in a connection document (a ``model_dump``).

    Paths are ``http.auth.<secret>``, ``http.tls.client_certificate.<secret>``
    and ``http.encrypted.<key>``; keys hold no dots. Missing or non-string
    values are skipped.
    """
    http = doc.get("http")
    if not isinstance(http, dict):
        return
    auth = http.get("auth")
    if isinstance(auth, dict):
        for name in AUTH_SECRETS:
            if isinstance(auth.get(name), str):
                yield f"http.auth.{name}", auth[name]
    cert = _client_certificate(http)
    if cert is not None:
        for name in CERT_SECRETS:
            if isinstance(cert.get(name), str):
                yield f"{CERT_PATH}.{name}", cert[name]
    encrypted = http.get("encrypted")
    if isinstance(encrypted, dict):
        for key, value in encrypted.items():
            if isinstance(value, str):
                yield f"http.encrypted.{key}", value


def set_secret(doc: dict[str, Any], path: str, value: str) -> None:
    """Replace the secret at *path* (as given by ``iter_secrets``) in place."""
    head, _, name = path.rpartition(".")
    if head == "http.auth" and name in AUTH_SECRETS:
        doc["http"]["auth"][name] = value
    elif head == CERT_PATH and name in CERT_SECRETS:
        doc["http"]["tls"]["client_certificate"][name] = value
    elif path.startswith("http.encrypted."):
        doc["http"]["encrypted"][path.removeprefix("http.encrypted.")] = value
    else:
        raise KeyError(f"{path} is not a secret field")


def map_secrets(doc: dict[str, Any], transform: Callable[[str, str], str]) -> dict[str, Any]:
    """A deep copy of *doc* with each secret replaced by ``transform(path, value)``."""
    result = copy.deepcopy(doc)
    for path, value in list(iter_secrets(result)):
        set_secret(result, path, transform(path, value))
    return result


def _client_certificate(http: dict[str, Any]) -> dict[str, Any] | None:
    tls = http.get("tls")
    cert = tls.get("client_certificate") if isinstance(tls, dict) else None
    return cert if isinstance(cert, dict) else None


def secret_context(connection_id: str, path: str) -> str:
    """The associated data a secret is sealed with (see server.secrets.crypto)."""
    return f"connection:{connection_id}:{path}"


# -- what the API shows and accepts ----------------------------------------------
def public_view(connection: Connection) -> dict[str, Any]:
    """The connection as the API returns it: no secret, only whether each is set.

    Each secret field of ``http.auth`` and ``http.tls.client_certificate``
    (``token``, ``password``, ``key_pem``…) becomes ``<name>_set: bool``;
    each ``http.encrypted`` value becomes ``{"set": true}`` (keys stay listed
    so templates can be checked against them).
    """
    view = connection.model_dump(mode="json")
    http = view["http"]
    auth = http.get("auth")
    if auth is not None:
        for name in AUTH_SECRETS:
            if name in auth:
                auth[name + SET_SUFFIX] = bool(auth.pop(name))
    cert = _client_certificate(http)
    if cert is not None:
        for name in CERT_SECRETS:
            cert[name + SET_SUFFIX] = bool(cert.pop(name, None))
    http["encrypted"] = {
        key: {SECRET_SET_MARKER: bool(value)} for key, value in http["encrypted"].items()
    }
    return view


def merge_patch(stored: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Apply a PATCH body to a stored (decrypted) connection document.

    RFC 7396: objects merge key by key, ``null`` deletes, anything else
    (arrays too) replaces. Secrets are kept unless the patch names them: an
    omitted ``auth.token`` or ``encrypted`` key keeps its value, and the
    placeholders ``public_view`` shows (``token_set``, ``{"set": true}``)
    are ignored, so a client can send back what it read. A patch that changes
    ``http.auth.type`` replaces the whole auth object. *stored* is not
    modified.
    """
    patch = _strip_view_markers(patch)
    stored_auth = (stored.get("http") or {}).get("auth")
    patch_auth = (
        (patch.get("http") or {}).get("auth") if isinstance(patch.get("http"), dict) else None
    )
    if (
        isinstance(stored_auth, dict)
        and isinstance(patch_auth, dict)
        and patch_auth.get("type", stored_auth.get("type")) != stored_auth.get("type")
    ):
        # Another auth type shares no fields (nor secrets) with the old one.
        stored = {**stored, "http": {**stored["http"], "auth": None}}
    merged: dict[str, Any] = _merge(stored, patch)
    return merged


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _strip_view_markers(patch: dict[str, Any]) -> dict[str, Any]:
    patch = copy.deepcopy(patch)
    http = patch.get("http")
    if not isinstance(http, dict):
        return patch
    auth = http.get("auth")
    if isinstance(auth, dict):
        for name in AUTH_SECRETS:
            auth.pop(name + SET_SUFFIX, None)
    cert = _client_certificate(http)
    if cert is not None:
        for name in CERT_SECRETS:
            cert.pop(name + SET_SUFFIX, None)
    encrypted = http.get("encrypted")
    if isinstance(encrypted, dict):
        for key, value in list(encrypted.items()):
            if isinstance(value, dict) and set(value) <= {SECRET_SET_MARKER}:
                del encrypted[key]
    return patch
