"""Connection documents as the API and the store handle them.

``validation_problems`` turns a ValidationError into the API's
``[{"field", "message"}]`` list. Secrets are ``http.auth.token`` and every
``http.encrypted`` value: ``iter_secrets``/``set_secret``/``map_secrets`` let
the store seal and open them; ``public_view`` is the only shape the API
returns; ``merge_patch`` is PATCH (RFC 7396 merge patch, secrets kept unless
named).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any, Final

from pydantic import ValidationError

from server.connections.model import Connection

SECRET_PATHS: Final = ("http.auth.token", "http.encrypted.*")
# What public_view puts where a secret was; merge_patch drops them again, so
# a client may send back what it read.
SECRET_SET_MARKER: Final = "set"  # noqa: S105 - a field name, not a password
TOKEN_SET_FIELD: Final = "token_set"  # noqa: S105 - a field name, not a password


# -- errors --------------------------------------------------------------------
def validation_problems(exc: ValidationError) -> list[dict[str, str]]:
    """``[{"field": "http.headers[0].name", "message": …}]``, never echoing input."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        field = _dotted(error["loc"])
        if error["type"] == "extra_forbidden":
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

    Paths are ``http.auth.token`` and ``http.encrypted.<key>``; keys hold no
    dots. Missing or non-string values are skipped.
    """
    http = doc.get("http")
    if not isinstance(http, dict):
        return
    auth = http.get("auth")
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        yield "http.auth.token", auth["token"]
    encrypted = http.get("encrypted")
    if isinstance(encrypted, dict):
        for key, value in encrypted.items():
            if isinstance(value, str):
                yield f"http.encrypted.{key}", value


def set_secret(doc: dict[str, Any], path: str, value: str) -> None:
    """Replace the secret at *path* (as given by ``iter_secrets``) in place."""
    if path == "http.auth.token":
        doc["http"]["auth"]["token"] = value
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


def secret_context(connection_id: str, path: str) -> str:
    """The associated data a secret is sealed with (see server.secrets.crypto)."""
    return f"connection:{connection_id}:{path}"


# -- what the API shows and accepts ----------------------------------------------
def public_view(connection: Connection) -> dict[str, Any]:
    """The connection as the API returns it: no secret, only whether each is set.

    ``http.auth.token`` becomes ``http.auth.token_set: bool``; each
    ``http.encrypted`` value becomes ``{"set": true}`` (keys stay listed so
    templates can be checked against them).
    """
    view = connection.model_dump(mode="json")
    http = view["http"]
    if http.get("auth") is not None:
        token = http["auth"].pop("token", None)
        http["auth"][TOKEN_SET_FIELD] = bool(token)
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
    are ignored, so a client can send back what it read. *stored* is not
    modified.
    """
    merged: dict[str, Any] = _merge(stored, _strip_view_markers(patch))
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
        auth.pop(TOKEN_SET_FIELD, None)
    encrypted = http.get("encrypted")
    if isinstance(encrypted, dict):
        for key, value in list(encrypted.items()):
            if isinstance(value, dict) and set(value) <= {SECRET_SET_MARKER}:
                del encrypted[key]
    return patch
