"""The relay's own failures, each with a stable problem type.

They subclass aiohttp's ClientConnectionError so code that already catches
aiohttp client errors keeps working, and carry the ``type`` the API puts in
its problem+json answers so callers can tell the relay's failures from the
API's own.
"""

from __future__ import annotations

from typing import ClassVar

import aiohttp


class RelayError(aiohttp.ClientConnectionError):
    """Root of every failure the relay reports on a request it forwards."""

    type: ClassVar[str] = "relay_error"
    status: ClassVar[int] = 502
    title: ClassVar[str] = "The relay could not complete the request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class AgentOffline(RelayError):
    type = "agent_offline"
    status = 503
    title = "The connection's agent is not connected"


class DestinationDenied(RelayError):
    type = "destination_denied"
    status = 403
    title = "The agent's allowlist does not permit this destination"


class UpstreamConnectFailed(RelayError):
    type = "upstream_connect_failed"
    status = 502
    title = "The API could not be reached"


class UpstreamTimeout(RelayError):
    type = "upstream_timeout"
    status = 504
    title = "The API did not answer in time"


class InvalidTarget(RelayError):
    type = "invalid_target"
    status = 400
    title = "The connection's host cannot be reached through an agent"


class AgentBusy(RelayError):
    type = "agent_busy"
    status = 503
    title = "The agent has as many streams open as it allows"


class RateLimited(RelayError):
    type = "rate_limited"
    status = 429
    title = "Too many new streams per second for this agent"


class BodyTooLarge(RelayError):
    type = "body_too_large"
    status = 413
    title = "The request body is larger than the relay allows"


class TunnelLost(RelayError):
    type = "tunnel_lost"
    status = 502
    title = "The agent's tunnel went away during the request"


class TunnelProtocolError(RelayError):
    type = "tunnel_protocol_error"
    status = 502
    title = "The agent answered something the relay does not understand"


def is_tunnel_lost(exc: BaseException) -> bool:
    """Whether *exc* (from aiohttp, on a tunnel stream) means the tunnel died.

    aiohttp turns a connection lost mid-body into ClientPayloadError, keeping
    the original only in its message, so both the chain and the text count.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TunnelLost) or "TunnelLost(" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
