"""Relay settings: environment (SLUICE_SERVER_*) and an optional TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from server.secrets.admin_token import MIN_CHARS as MIN_ADMIN_TOKEN_CHARS
from sluice import sshconfig
from sluice.addresses import HostPort
from sluice.config import address, split_list


class ServerSettings(BaseSettings):
    """Everything the relay needs; built once in the CLI and passed in."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_SERVER_", extra="forbid", frozen=True)

    data_dir: Path = Field(default=Path(".sluice"), description="SQLite db, keys, admin token.")
    ssh_listen: Annotated[HostPort, NoDecode] = Field(
        default=HostPort("0.0.0.0", 2222), description="Where agents connect (SSH)."
    )
    http_listen: Annotated[HostPort, NoDecode] = Field(
        default=HostPort("127.0.0.1", 8080), description="The JSON API."
    )
    advertise_ssh: Annotated[HostPort | None, NoDecode] = Field(
        default=None,
        description="The address agents dial for this relay (host:port). Default: "
        "ssh_listen unless it is a wildcard, else this host's name and the SSH port.",
    )
    cluster_listen: Annotated[HostPort | None, NoDecode] = Field(
        default=None,
        description="Where other relays forward requests to this one (host:port). "
        "Default: http_listen's host, a port of the system's choosing.",
    )
    advertise_cluster: Annotated[HostPort | None, NoDecode] = Field(
        default=None,
        description="The address other relays reach cluster_listen at. Default: "
        "cluster_listen unless it is a wildcard, else this host's name.",
    )
    reuse_port: bool = Field(
        default=False,
        description="Share http_listen's port with other processes (SO_REUSEPORT): "
        "set by 'run --workers N' for its workers.",
    )
    heartbeat_interval: float = Field(default=2.0, gt=0, le=5)
    cluster_query_timeout: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="How long a relay waits for the other relays' traffic series "
        "(the console's charts); one that has not answered by then is named as missing.",
    )
    relay_dead_after: float = Field(
        default=8.0, gt=0, le=60, description="A relay silent this long is gone."
    )
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
    database_url: str | None = Field(default=None, description="Default: SQLite in data_dir.")
    database_timeout: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description=(
            "Seconds a PostgreSQL statement or connection attempt may take: a stalled "
            "database gives errors, not hangs."
        ),
    )
    master_key: SecretStr | None = None
    master_key_file: Path | None = None
    allow_private_destinations: bool = False
    keepalive_interval: float = Field(default=10.0, gt=0)
    keepalive_count: int = Field(default=3, ge=1)
    login_timeout: float = Field(default=30.0, gt=0)
    max_inflight_per_agent: int = Field(
        default=sshconfig.MAX_INFLIGHT,
        ge=0,
        description=(
            "Bytes an agent's streams may hold in flight beyond their starting windows, as "
            "windows grow on a long link; 0 = fixed windows."
        ),
    )
    stream_window: int | None = Field(
        default=None,
        ge=sshconfig.MIN_CHANNEL_WINDOW,
        le=sshconfig.MAX_CHANNEL_WINDOW,
        description=(
            "Starting receive window of each stream's answers, in bytes: what one stream can "
            "hold in the relay when its caller stops reading (windows grow beyond it only on "
            "a long link, within max_inflight_per_agent). Unset: 1 MiB, or 2 MiB for an agent "
            "whose link is short (round trip below 2 ms). Smaller saves memory with many "
            "stalled callers; below four packets (1 MiB) a loopback download slows."
        ),
    )
    ssh_rekey_bytes: int = Field(
        default=sshconfig.REKEY_BYTES,
        ge=sshconfig.MIN_REKEY_BYTES,
        description="Exchange SSH keys again after this many bytes (each direction).",
    )
    auth_failures_per_address: int = Field(default=10, ge=1)
    auth_ban_seconds: float = Field(default=60.0, gt=0)
    auth_failures_per_network: int = Field(
        default=50,
        ge=1,
        description="Failed logins from one IPv4 /24 or IPv6 /64 before it is banned.",
    )
    auth_network_exempt: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=list,
        description="Networks (CIDR) never banned as a whole: your own NAT.",
    )
    max_preauth_ssh: int = Field(
        default=256,
        ge=1,
        description="SSH connections still logging in, in all (more are cut at once).",
    )
    max_preauth_ssh_per_address: int = Field(
        default=32, ge=1, description="SSH connections still logging in, per source address."
    )
    connect_timeout: float = Field(default=10.0, gt=0)
    drain_timeout: float = Field(default=30.0, ge=0)
    max_header_bytes: int = Field(
        default=8190,
        ge=1024,
        le=65536,
        description="Longest request line or header the API accepts.",
    )
    max_headers: int = Field(default=100, ge=10, le=1000)
    max_head_bytes: int = Field(
        default=64 * 1024,
        ge=8192,
        le=1024 * 1024,
        description="Largest request head (request line and all headers) on the proxy port.",
    )
    max_body_bytes: int = Field(
        default=0, ge=0, description="Largest proxied request body; 0 = no limit."
    )
    max_streams_per_agent: int = Field(default=1024, ge=1)
    max_new_streams_per_second: float = Field(default=1000.0, gt=0)
    http_idle_timeout: float = Field(default=75.0, gt=0)
    change_poll_interval: float = Field(
        default=1.0,
        gt=0,
        le=5,
        description="How often the relay reads changes other processes made "
        "(on PostgreSQL a fallback: notifications act at once).",
    )
    health_min_interval_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Shortest http.health.interval_seconds a connection may ask for "
        "(lower it only for tests).",
    )
    debug_log_entries: int = Field(
        default=1000, ge=10, le=100_000, description="Debug-log entries kept per connection."
    )
    debug_log_retention_seconds: float = Field(
        default=86400.0,
        ge=0,
        description="How long a debug log is kept after its window ends.",
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    @field_validator("auth_network_exempt", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        return split_list(value)

    @field_validator("ssh_listen", "http_listen", mode="before")
    @classmethod
    def _parse_address(cls, value: object) -> object:
        return address(value)

    @field_validator("admin_token")
    @classmethod
    def _admin_token_length(cls, value: SecretStr | None) -> SecretStr | None:
        # A blank or short token would let a blank or guessable bearer in.
        if value is not None and len(value.get_secret_value().strip()) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"must be at least {MIN_ADMIN_TOKEN_CHARS} characters (not counting "
                "surrounding whitespace); leave it unset to have the relay generate one"
            )
        return value

    @field_validator("advertise_ssh", "cluster_listen", "advertise_cluster", mode="before")
    @classmethod
    def _parse_optional_address(cls, value: object) -> object:
        return address(value) if value not in ("", None) else None

    @property
    def host_key_path(self) -> Path:
        return self.data_dir / "ssh_host_ed25519_key"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return sqlite_url((self.data_dir / "sluice.db").resolve())


def sqlite_url(path: Path) -> str:
    """The database URL of the SQLite file at *path*."""
    return f"sqlite+aiosqlite:///{path}"
