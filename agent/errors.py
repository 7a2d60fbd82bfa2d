"""Why a tunnel could not be opened or kept, each saying what to fix."""

from __future__ import annotations


class TunnelError(Exception):
    """Root of the agent's tunnel failures."""

    # Failures a retry at full speed cannot fix (a person must change something).
    needs_operator = False


class RelayUnreachable(TunnelError):
    """The network path to the relay failed (refused, reset, timed out)."""


class TunnelDropped(TunnelError):
    """An established tunnel ended without the agent asking for it."""


class AuthRejected(TunnelError):
    needs_operator = True


class HostKeyMismatch(TunnelError):
    needs_operator = True


class ListenerRefused(TunnelError):
    """The relay would not accept the tunnel's listener."""

    needs_operator = True
