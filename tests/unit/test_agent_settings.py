"""Agent settings: every source, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.settings import AgentSettings
from sluice.addresses import HostPort
from sluice.config import SettingsError, load_settings
from sluice.tokens import new_agent_id, new_token

FP = "SHA256:" + "b" * 43


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SLUICE_AGENT_") or key == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(key)


def test_env_with_one_relay_and_comma_separated_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_AGENT_RELAY", "relay.example:2200")
    monkeypatch.setenv("SLUICE_AGENT_RELAY_FINGERPRINT", FP)
    monkeypatch.setenv("SLUICE_AGENT_ALLOW", "api.internal:443, 10.0.0.0/8:80-90")
    s = load_settings(AgentSettings)
    assert s.relay == [HostPort("relay.example", 2200)]
    assert s.allow == ["api.internal:443", "10.0.0.0/8:80-90"]
    assert len(s.allowlist()) == 2


def test_relay_list_default_port_and_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_AGENT_RELAY", "a.example, [::1]:2300")
    monkeypatch.setenv("SLUICE_AGENT_RELAY_FINGERPRINT", FP)
    s = load_settings(AgentSettings)
    assert s.relay == [HostPort("a.example", 2222), HostPort("::1", 2300)]


def test_toml_file_below_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'relay = ["r1:1", "r2:2"]\nrelay_fingerprint = "{FP}"\n'
        'allow = ["db:5432"]\nconnect_timeout = 3.5\n'
    )
    monkeypatch.setenv("SLUICE_AGENT_CONNECT_TIMEOUT", "7")
    s = load_settings(AgentSettings, cfg)
    assert [str(r) for r in s.relay] == ["r1:1", "r2:2"]
    assert s.connect_timeout == 7  # env wins over the file
    assert s.allow == ["db:5432"]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SLUICE_AGENT_RELAY": "r:99999"}, "relay (SLUICE_AGENT_RELAY)"),
        ({"SLUICE_AGENT_ALLOW": "db"}, "allow (SLUICE_AGENT_ALLOW)"),
        ({"SLUICE_AGENT_CONNECT_TIMEOUT": "-1"}, "connect_timeout"),
        ({"SLUICE_AGENT_LOG_FORMAT": "xml"}, "log_format"),
        ({"SLUICE_AGENT_RELAY_FINGERPRINT": "md5:abc"}, "relay_fingerprint"),
        ({"SLUICE_AGENT_BOGUS": "1"}, None),  # unknown env vars are ignored
    ],
)
def test_invalid_settings_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str | None
) -> None:
    monkeypatch.setenv("SLUICE_AGENT_RELAY", "r:1")
    monkeypatch.setenv("SLUICE_AGENT_RELAY_FINGERPRINT", FP)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if needle is None:
        load_settings(AgentSettings)
        return
    with pytest.raises(SettingsError) as err:
        load_settings(AgentSettings)
    assert needle in str(err.value)


def test_missing_fingerprint_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_AGENT_RELAY", "r:1")
    with pytest.raises(SettingsError, match="sluice-server fingerprint"):
        load_settings(AgentSettings)


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'relay = "r:1"\nrelay_fingerprint = "{FP}"\nalow = ["x:1"]\n')
    with pytest.raises(SettingsError, match="alow"):
        load_settings(AgentSettings, cfg)


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        load_settings(AgentSettings, tmp_path / "nope.toml")


def test_token_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = new_token(new_agent_id())
    base: dict[str, Any] = {"relay": "r:1", "relay_fingerprint": FP}
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "token").write_text(str(token) + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_settings(AgentSettings, **base).load_token() == token

    other = new_token(new_agent_id())
    token_file = tmp_path / "token"
    token_file.write_text(str(other))
    s = load_settings(AgentSettings, token_file=token_file, **base)
    assert s.load_token() == other


def test_bad_token_error_never_echoes_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "hunter2-this-is-not-a-token"
    s = load_settings(AgentSettings, relay="r:1", relay_fingerprint=FP, token=secret)
    with pytest.raises(ValueError, match="token") as err:
        s.load_token()
    assert secret not in str(err.value)
    assert secret not in repr(s)


def test_no_token_anywhere_says_where_to_put_one() -> None:
    s = load_settings(AgentSettings, relay="r:1", relay_fingerprint=FP)
    with pytest.raises(ValueError, match="SLUICE_AGENT_TOKEN"):
        s.load_token()


def test_skipping_the_host_key_check_with_a_pinned_key_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A set relay_fingerprint must not be silently overridden."""
    monkeypatch.setenv("SLUICE_AGENT_RELAY", "relay.example")
    monkeypatch.setenv("SLUICE_AGENT_RELAY_FINGERPRINT", FP)
    monkeypatch.setenv("SLUICE_AGENT_INSECURE_SKIP_HOST_KEY_CHECK", "true")
    with pytest.raises(SettingsError) as info:
        load_settings(AgentSettings)
    message = str(info.value)
    assert "insecure_skip_host_key_check" in message
    assert "relay_fingerprint" in message
