"""host:port addresses as settings give them ("relay.example:2222", "[::1]:2222")."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

# Pending connections a listener holds before the loop accepts them (the
# kernel caps it at net.core.somaxconn). The libraries' defaults (100, 128)
# overflowed when 256 callers or hundreds of reconnecting agents arrived at
# once: the kernel dropped the excess SYNs and those clients waited a 1 s
# retransmission (measured: 40-120 drops per burst of 256 connects).
LISTEN_BACKLOG: Final = 4096


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, default_port: int | None = None) -> HostPort:
        """Parse 'host:port', '[v6]:port' or, with a default port, a bare host."""
        value = text.strip()
        if not value:
            raise ValueError("empty address; expected host:port")
        if value.startswith("["):
            end = value.find("]")
            if end < 0:
                raise ValueError(f"{value!r}: missing ']' after an IPv6 address")
            host, rest = value[1:end], value[end + 1 :]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None
            if rest and not rest.startswith(":"):
                raise ValueError(f"{value!r}: expected ':port' after ']'")
            port_text = rest[1:] if rest else ""
        elif value.count(":") == 1:
            host, port_text = value.split(":")
        elif ":" in value:
            raise ValueError(f"{value!r}: write IPv6 addresses in brackets, like [::1]:2222")
        else:
            host, port_text = value, ""
        if not host:
            raise ValueError(f"{value!r}: missing host")
        if any(c.isspace() or ord(c) < 32 for c in host):
            raise ValueError(f"{value!r}: host contains whitespace or control characters")
        if not port_text:
            if default_port is None:
                raise ValueError(f"{value!r}: missing ':port'")
            return cls(host.lower(), default_port)
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{value!r}: port must be a number from 1 to 65535")
        return cls(host.lower(), int(port_text))
