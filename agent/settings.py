"""Agent settings: environment (SLUICE_AGENT_*), an optional TOML file, a token file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent.allowlist import Allowlist
from agent.outbound_proxy import ProxyConfig
from sluice import sshconfig
from sluice.addresses import HostPort
from sluice.config import address, addresses, split_list
from sluice.sshconfig import normalise_fingerprint
from sluice.tokens import AgentToken

DEFAULT_CONFIG_FILE = Path("/etc/sluice/agent.toml")
DEFAULT_RELAY_PORT = 2222
DEFAULT_HEALTH_LISTEN = HostPort("127.0.0.1", 9464)


class AgentSettings(BaseSettings):
    """Everything the agent needs; built once in the CLI and passed in."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICE_AGENT_", extra="forbid", frozen=True, populate_by_name=True
    )

    relay: Annotated[list[HostPort], NoDecode] = Field(
        description="Relay SSH address(es), host:port; the agent fails over in order."
    )
    token: SecretStr | None = Field(default=None, description="Access token (slc_…).")
    token_file: Path | None = Field(default=None, description="File holding the token.")
    relay_fingerprint: str | None = Field(
        default=None, description="The relay's host key fingerprint, SHA256:…"
    )
    insecure_skip_host_key_check: bool = Field(
        default=False, description="Accept any relay host key. For tests only."
    )
    allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Destinations the relay may open (host:ports)."
    )
    proxy: SecretStr | None = Field(
        default=None,
        description=(
            "HTTP proxy to the relay, http://user:password@host:port; empty = direct, "
            "ignoring HTTPS_PROXY/ALL_PROXY. Unset: those variables and NO_PROXY apply."
        ),
    )
    max_relays: int = Field(
        default=4,
        ge=1,
        le=16,
        description="Tunnels to keep, one per relay of the cluster (learnt from the "
        "relay dialled); 1: only the relay dialled.",
    )
    discovery_interval: float = Field(
        default=3.0, gt=0, le=60, description="How often the cluster's relays are asked for."
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds per connect.")
    keepalive_interval: float = Field(default=10.0, gt=0)
    keepalive_count: int = Field(default=3, ge=1)
    login_timeout: float = Field(default=30.0, gt=0)
    max_inflight: int = Field(
        default=sshconfig.MAX_INFLIGHT,
        ge=0,
        description=(
            "Bytes the agent's streams may hold in flight beyond their starting windows, as "
            "windows grow on a long link; 0 = fixed windows."
        ),
    )
    rekey_bytes: int = Field(
        default=sshconfig.REKEY_BYTES,
        ge=sshconfig.MIN_REKEY_BYTES,
        description="Exchange SSH keys again after this many bytes (each direction).",
    )
    backoff_initial: float = Field(default=1.0, gt=0)
    backoff_multiplier: float = Field(default=2.0, ge=1)
    backoff_max: float = Field(default=60.0, gt=0)
    stable_after: float = Field(default=30.0, ge=0)
    drain_timeout: float = Field(default=30.0, ge=0)
    max_streams: int = Field(default=1024, ge=1, description="Streams open at once.")
    max_new_streams_per_second: float = Field(default=1000.0, gt=0)
    stream_idle_timeout: float = Field(
        default=900.0, gt=0, description="Close a stream with no traffic for this long."
    )
    health_listen: Annotated[HostPort | None, NoDecode] = Field(
        default=DEFAULT_HEALTH_LISTEN,
        description="Where /healthz, /readyz and /metrics listen (host:port), or 'off'.",
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    @field_validator("relay", mode="before")
    @classmethod
    def _parse_relay(cls, value: Any) -> Any:
        return addresses(value, default_port=DEFAULT_RELAY_PORT)

    @field_validator("health_listen", mode="before")
    @classmethod
    def _parse_health_listen(cls, value: Any) -> Any:
        return address(value, off=True)

    @field_validator("allow", mode="before")
    @classmethod
    def _parse_allow(cls, value: Any) -> Any:
        value = split_list(value)
        if isinstance(value, list):
            value = [str(v).strip() for v in value]
            Allowlist.parse(value)  # raises ValueError naming the bad rule
        return value

    @field_validator("proxy")
    @classmethod
    def _check_proxy(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip():
            ProxyConfig.parse(value.get_secret_value())  # message hides user and password
        return value

    def proxy_setting(self) -> str | None:
        return None if self.proxy is None else self.proxy.get_secret_value()

    @field_validator("relay_fingerprint")
    @classmethod
    def _check_fingerprint(cls, value: str | None) -> str | None:
        return normalise_fingerprint(value) if value else None

    @model_validator(mode="after")
    def _check(self) -> AgentSettings:
        if self.relay_fingerprint is not None and self.insecure_skip_host_key_check:
            raise ValueError(
                "insecure_skip_host_key_check and relay_fingerprint are both set: the first "
                "would accept any relay key and ignore the second; unset "
                "insecure_skip_host_key_check (SLUICE_AGENT_INSECURE_SKIP_HOST_KEY_CHECK)"
            )
        if self.relay_fingerprint is None and not self.insecure_skip_host_key_check:
            raise ValueError(
                "relay_fingerprint is required: run 'sluice-server fingerprint' on the relay "
                "and set SLUICE_AGENT_RELAY_FINGERPRINT"
            )
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must be at least backoff_initial")
        return self

    def load_token(self) -> AgentToken:
        """The access token from, in order: token, token_file, $CREDENTIALS_DIRECTORY/token."""
        if self.token is not None:
            raw, source = self.token.get_secret_value(), "token"
        else:
            path = self.token_file
            if path is None and os.environ.get("CREDENTIALS_DIRECTORY"):
                path = Path(os.environ["CREDENTIALS_DIRECTORY"]) / "token"
            if path is None:
                raise ValueError(
                    "token: no access token; set SLUICE_AGENT_TOKEN, token_file, "
                    "or a systemd credential named 'token'"
                )
            source = f"token_file ({path})"
            try:
                raw = path.read_text()
            except OSError as exc:
                raise ValueError(f"{source}: cannot read: {exc.strerror}") from None
        try:
            return AgentToken.parse(raw)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    def allowlist(self) -> Allowlist:
        return Allowlist.parse(self.allow)
