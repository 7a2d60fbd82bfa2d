"""The starting receive window of a tunnel's answers, picked per connection.

A larger window costs the relay and agent less CPU per MiB on a short link
(fewer times the agent's credit runs out; sshconfig.SHORT_LINK_CHANNEL_WINDOW),
but on a long link it queues more of a download ahead of the small answers
beside it. So an agent whose link is short gets the larger start; every
other keeps sshconfig.CHANNEL_WINDOW, as before. The operator's
``stream_window`` setting, when given, is every stream's start instead.

The link is short only if two round trips say so, each wrong in a known
direction:

- the agent's login: from its first authentication request (``none``, which
  asyncssh and OpenSSH clients send first) to its password, one round trip
  plus both ends' work, so never shorter than the link's;
- the relay's kernel (``TCP_INFO``; ``send_scheduler.kernel_rtt``): never
  longer than the link's, but only as far as the next TCP hop: a TCP proxy
  (or bench/delay_line.py) in front of the relay looks near.
"""

from __future__ import annotations

from typing import Any

from sluice import send_scheduler, sshconfig
from sluice.window_tuning import short_link


def is_short_link(login_rtt: float | None, sock: Any) -> bool:
    """Whether a tunnel whose login took *login_rtt* seconds (None or 0: not
    timed) and whose SSH socket is *sock* runs over a short link: both the
    login and the kernel's smoothed round trip below ``SHORT_LINK_RTT``
    (``sluice.window_tuning.short_link``)."""
    return short_link(login_rtt, send_scheduler.kernel_rtt(sock), sshconfig.SHORT_LINK_RTT)


def answer_window(configured: int | None, login_rtt: float | None, sock: Any) -> int:
    """The starting receive window of each answer stream of one tunnel:
    *configured* (the ``stream_window`` setting) if set; otherwise
    ``SHORT_LINK_CHANNEL_WINDOW`` on a short link (``is_short_link``) and
    ``CHANNEL_WINDOW`` on any other."""
    if configured is not None:
        return configured
    if is_short_link(login_rtt, sock):
        return sshconfig.SHORT_LINK_CHANNEL_WINDOW
    return sshconfig.CHANNEL_WINDOW
