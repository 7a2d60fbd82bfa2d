"""How often the tunnel's SSH keys are exchanged again, by volume.

Every stream of an agent stops for a key exchange, for two round trips of the
link (issue 22: at asyncssh's 1 GiB, a keep-alive GET beside a 1 GiB download
on a 100 ms link took 3 round trips whenever the tunnel crossed another GiB).
The relay and the agent wait as long as the ciphers they prefer allow: 2^32
blocks of a 128-bit block cipher (RFC 4344 3.2), as OpenSSH does with AES.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.settings import AgentSettings
from sluice import sshconfig
from sluice.config import load_settings
from tests.conftest import relay_settings

AES_BLOCK = 16
RFC4344_AES_LIMIT = (1 << 32) * AES_BLOCK  # 64 GiB


def test_preferred_ciphers_are_128_bit_block_ciphers() -> None:
    # The limit below holds for AES; a cipher preferred before it would need its own.
    assert sshconfig.ENCRYPTION_ALGS[0].startswith("aes")


def test_relay_rekeys_at_the_aes_block_limit(tmp_path: Path) -> None:
    assert relay_settings(tmp_path).ssh_rekey_bytes == RFC4344_AES_LIMIT


def test_agent_rekeys_at_the_aes_block_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SLUICE_AGENT_") or key == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(key)
    monkeypatch.setenv("SLUICE_AGENT_RELAY", "relay.example:2200")
    monkeypatch.setenv("SLUICE_AGENT_RELAY_FINGERPRINT", "SHA256:" + "b" * 43)
    monkeypatch.setenv("SLUICE_AGENT_ALLOW", "api.internal:443")
    assert load_settings(AgentSettings).rekey_bytes == RFC4344_AES_LIMIT
