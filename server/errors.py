"""The relay's own failures, each with a stable problem type.

They are a family of their own, each carrying the ``type`` the API puts in
its problem+json answers so callers can tell the relay's failures from the
API's own. aiohttp's client errors are mapped to them where the proxy calls
aiohttp (``server.proxy.exchange.relay_errors``), and they are mapped to
problem documents at the edge (``server.web.api.error_problem``).
"""

from __future__ import annotations

from typing import ClassVar


class RelayError(Exception):
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


class UpstreamHeadTooLarge(RelayError):
    type = "upstream_head_too_large"
    status = 502
    title = "The API's answer head is larger than the relay accepts"


class UpstreamBadAnswer(RelayError):
    type = "upstream_bad_answer"
    status = 502
    title = "The API's answer is not valid HTTP/1.1"


def relay_error_in(exc: BaseException) -> RelayError | None:
    """The relay's own error behind *exc*: *exc* itself or one in its chain.

    aiohttp wraps what a transport reports: a tunnel lost mid-body becomes
    ClientPayloadError, which keeps the original only in its message.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RelayError):
            return seen
        if "TunnelLost(" in str(seen):
            return TunnelLost("the agent's tunnel went away during the answer")
        seen = seen.__cause__ or seen.__context__
    return None
