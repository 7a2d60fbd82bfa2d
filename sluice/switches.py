"""On/off switches read from the environment (SLUICE_SSH_TUNING and the like)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

OFF: Final = frozenset({"off", "0", "false", "no"})
ON: Final = frozenset({"", "on", "1", "true", "yes"})


def switched_on(environ: Mapping[str, str], name: str) -> bool:
    """Whether the switch *name* in *environ* is on (unset: on). Raises
    ValueError naming it for anything but on/off (or 1/0, true/false, yes/no)."""
    value = environ.get(name, "").strip().lower()
    if value in OFF:
        return False
    if value in ON:
        return True
    raise ValueError(f"{name}={value!r}: must be 'on' or 'off'")
