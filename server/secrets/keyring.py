"""The relay's master keys: the current one, older ones kept for reading, rotation."""

from __future__ import annotations

import os
from pathlib import Path

from server.secrets.crypto import KEY_FILE_NAME, MasterKey, SecretBox, load_or_create_master_key
from server.settings import ServerSettings


def key_file(settings: ServerSettings) -> Path | None:
    """Where the current key lives, or None when it comes from the master_key setting."""
    if settings.master_key is not None:
        return None
    return settings.master_key_file or settings.data_dir / KEY_FILE_NAME


def _older_keys(path: Path | None) -> list[MasterKey]:
    if path is None or not path.parent.is_dir():
        return []
    keys = []
    for candidate in sorted(path.parent.glob(path.name + ".*")):
        if candidate.suffix == ".tmp":
            continue
        keys.append(MasterKey.from_text(candidate.read_text().strip(), setting=str(candidate)))
    return keys


def load_secret_box(settings: ServerSettings) -> SecretBox:
    """The current key (generated on first start) plus every kept older key."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    current = load_or_create_master_key(
        settings.data_dir,
        settings.master_key.get_secret_value() if settings.master_key else None,
        settings.master_key_file,
    )
    older = [k for k in _older_keys(key_file(settings)) if k != current]
    return SecretBox(current, older)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class RotationPlan:
    """Rotate without a window where stored values and key files disagree.

    1. ``begin()`` writes the new key beside the current one (``.next``);
    2. the caller re-encrypts every value under ``box`` (new current key);
    3. ``commit()`` keeps the old key as ``.previous-<id>`` and installs the new one.

    A crash at any step leaves every needed key on disk: load_secret_box
    reads the ``.next`` and ``.previous-*`` files as older keys.
    """

    def __init__(self, settings: ServerSettings) -> None:
        path = key_file(settings)
        if path is None:
            raise ValueError(
                "master_key is given as a setting; rotation needs a key file "
                "(unset SLUICE_SERVER_MASTER_KEY and use master_key_file or the data dir)"
            )
        self.path = path
        self.old_box = load_secret_box(settings)
        self.new_key = MasterKey.generate()
        old_keys = [MasterKey.from_text(self.path.read_text().strip(), setting="master_key_file")]
        old_keys += _older_keys(self.path)
        self.old_key_id = old_keys[0].key_id
        self.box = SecretBox(self.new_key, [k for k in old_keys if k != self.new_key])

    def begin(self) -> None:
        _write_private(self.path.with_name(self.path.name + ".next"), self.new_key.to_text())

    def commit(self) -> None:
        previous = self.path.with_name(f"{self.path.name}.previous-{self.old_key_id}")
        os.replace(self.path, previous)
        os.replace(self.path.with_name(self.path.name + ".next"), self.path)
