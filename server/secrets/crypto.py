"""Secrets at rest: AES-256-GCM under the relay's master key.

Each secret becomes a self-describing text token,
``v1.<key id>.<nonce>.<ciphertext>`` (nonce and ciphertext in unpadded
URL-safe base64), so a stored value says which key sealed it and rotation can
find the ones still under an old key. The caller names what the value is
(``context``, e.g. ``connection:<id>:http.auth.token``); it is bound in as
associated data, so a ciphertext copied into another field or another
connection fails to decrypt instead of silently meaning something else.

Nothing here ever puts a key, a plaintext or a ciphertext in an error message
or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
KEY_FILE_NAME: Final = "master.key"
_VERSION: Final = "v1"
_AAD_PREFIX: Final = b"sluice/secret/v1\x00"
_HEX_KEY_RE: Final = re.compile(r"^[0-9a-fA-F]{64}$")
_KEY_ID_RE: Final = re.compile(r"^[0-9a-f]{8}$")
_GENERATE_HINT: Final = (
    "generate one with: "
    "python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'"
)


class DecryptionError(Exception):
    """A stored secret could not be opened: wrong key, wrong context, or tampered.

    The message names the context and the key id, never the value.
    """


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MasterKey:
    """A 32-byte AES-256 key and its public id (8 hex chars of its SHA-256)."""

    __slots__ = ("_key", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a master key is {KEY_BYTES} bytes, not {len(key)}")
        self._key = bytes(key)
        self.key_id: str = hashlib.sha256(self._key).hexdigest()[:8]

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_text(cls, text: str, *, setting: str = "master_key") -> MasterKey:
        """Parse 64 hex characters or base64 (standard or URL-safe) of 32 bytes.

        *setting* names where the text came from, for the error message; the
        text itself is never repeated.
        """
        stripped = text.strip()
        if not stripped:
            raise ValueError(f"{setting}: the master key is empty; {_GENERATE_HINT}")
        if _HEX_KEY_RE.match(stripped):
            return cls(bytes.fromhex(stripped))
        normalised = stripped.replace("-", "+").replace("_", "/")
        normalised += "=" * (-len(normalised) % 4)
        try:
            raw = base64.b64decode(normalised, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                f"{setting}: not a valid master key: expected 64 hex characters or "
                f"base64 of {KEY_BYTES} bytes; {_GENERATE_HINT}"
            ) from None
        if len(raw) != KEY_BYTES:
            raise ValueError(
                f"{setting}: not a valid master key: the base64 decodes to {len(raw)} bytes, "
                f"expected {KEY_BYTES}; {_GENERATE_HINT}"
            )
        return cls(raw)

    def to_text(self) -> str:
        """The key as standard base64, the form written to a key file."""
        return base64.b64encode(self._key).decode("ascii")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MasterKey):
            return NotImplemented
        return secrets.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __repr__(self) -> str:
        return f"<MasterKey id={self.key_id}>"


def load_or_create_master_key(data_dir: Path, key: str | None, key_file: Path | None) -> MasterKey:
    """Called once at start-up: the ``master_key`` setting, else ``master_key_file``,
    else ``<data_dir>/master.key``, which is generated (mode 0600) if missing.
    """
    if key is not None:
        return MasterKey.from_text(key, setting="master_key")
    if key_file is not None:
        return _read_key_file(key_file, setting=f"master_key_file ({key_file})")
    path = data_dir / KEY_FILE_NAME
    if path.exists():
        return _read_key_file(path, setting=f"master key file {path}")
    return _create_key_file(path)


def _read_key_file(path: Path, *, setting: str) -> MasterKey:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ValueError(f"{setting}: the file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{setting}: cannot read the key: {type(exc).__name__}") from None
    return MasterKey.from_text(text, setting=setting)


def _create_key_file(path: Path) -> MasterKey:
    # Written to a private temporary file, then hard-linked into place: the key
    # file never exists half-written, and if another process created one first
    # the link fails and that key is used, so two keys never race.
    path.parent.mkdir(parents=True, exist_ok=True)
    key = MasterKey.generate()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(key.to_text() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_key_file(path, setting=f"master key file {path}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return key


class SecretBox:
    """Seals and opens secrets under the current key; opens older keys' tokens too.

    Pass the keys being rotated away from as *older*; ``needs_rotation`` tells
    which stored tokens still depend on them.
    """

    def __init__(self, current: MasterKey, older: Iterable[MasterKey] = ()) -> None:
        self._current = current
        by_id: dict[str, MasterKey] = {current.key_id: current}
        for key in older:
            known = by_id.setdefault(key.key_id, key)
            if known != key:
                raise ValueError(f"two different master keys share the id {key.key_id}")
        self._keys = {key_id: AESGCM(key._key) for key_id, key in by_id.items()}

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def encrypt(self, plaintext: str, *, context: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._keys[self._current.key_id].encrypt(
            nonce, plaintext.encode("utf-8"), _aad(context)
        )
        return f"{_VERSION}.{self._current.key_id}.{_b64encode(nonce)}.{_b64encode(sealed)}"

    def decrypt(self, token: str, *, context: str) -> str:
        key_id, nonce, sealed = _parse(token, context)
        aead = self._keys.get(key_id)
        if aead is None:
            raise DecryptionError(
                f"the secret for {context} was sealed with master key {key_id}, which is not "
                f"configured (current key: {self._current.key_id}); "
                "configure that key as a previous key to read it"
            )
        try:
            plaintext = aead.decrypt(nonce, sealed, _aad(context))
        except InvalidTag:
            raise DecryptionError(
                f"the secret for {context} does not authenticate under master key {key_id}: "
                "it was altered, or it belongs to another field"
            ) from None
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError(f"the secret for {context} is not UTF-8 text") from None

    def needs_rotation(self, token: str) -> bool:
        """True when *token* is not sealed under the current key (malformed: DecryptionError)."""
        key_id, _, _ = _parse(token, "a stored value")
        return key_id != self._current.key_id

    def rotate(self, token: str, *, context: str) -> str:
        """Re-seal *token* under the current key (unchanged if already there)."""
        if not self.needs_rotation(token):
            return token
        return self.encrypt(self.decrypt(token, context=context), context=context)

    def derive(self, label: str) -> bytes:
        """A 32-byte key for *label* derived from the current master key (HKDF):
        every process that holds the master key derives the same one."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label.encode())
        return hkdf.derive(self._current._key)

    @property
    def current_key_id(self) -> str:
        return self._current.key_id

    def __repr__(self) -> str:
        return f"<SecretBox current={self._current.key_id} keys={list(self._keys)}>"


def _aad(context: str) -> bytes:
    return _AAD_PREFIX + context.encode("utf-8")


def _parse(token: str, context: str) -> tuple[str, bytes, bytes]:
    parts = token.split(".")
    malformed = DecryptionError(
        f"the secret for {context} is not a sealed value (expected '{_VERSION}.<key id>.…')"
    )
    if len(parts) != 4 or parts[0] != _VERSION or not _KEY_ID_RE.match(parts[1]):
        raise malformed
    try:
        nonce = _b64decode(parts[2])
        sealed = _b64decode(parts[3])
    except (binascii.Error, ValueError):
        raise malformed from None
    if len(nonce) != NONCE_BYTES or len(sealed) < 16:
        raise malformed
    return parts[1], nonce, sealed
