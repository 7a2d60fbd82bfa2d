"""Lanes: more than one SSH connection from one agent process to one relay.

All the streams of one SSH connection share its TCP byte stream. On a long
link, what a download has on its way (in the relay's socket buffer, in the
network, in the agent's send queue: the window's worth beyond what the link
holds) is ahead of every small answer behind it, whatever the send
scheduler does at either end. On a long link (``sluice.window_tuning.short_link``
false) the agent opens more connections to the same relay, its lanes
(``SLUICE_AGENT_LANES``); the relay opens each new stream on the replica with
the fewest streams in flight, so a small request beside a download goes on a
lane that has none of that queue ahead of it (cloudflared keeps several
connections to its edge too). On a short link there is no such queue, and
none is opened.

Each lane logs in with an instance id of its own, ``<instance>x<lane>``: a
relay replaces a stale session of that lane alone when it reconnects, and
its lanes share one receive budget (``WindowBudget``, the per-agent cap on
what may be in flight). Instance ids are letters and digits, so a relay that
predates lanes takes each lane for a replica.
"""

from __future__ import annotations

from typing import Final

# Not a hex digit: the agent's instance ids are hex (secrets.token_hex).
SEPARATOR: Final = "x"


def lane_instance(instance: str, lane: int) -> str:
    """The instance id lane *lane* of the process *instance* logs in with (0: the first)."""
    if lane < 0:
        raise ValueError(f"lane {lane}: lanes are numbered from 0")
    return instance if lane == 0 else f"{instance}{SEPARATOR}{lane}"


def family(instance: str) -> str:
    """The process whose lane logged in as *instance* ('' for none)."""
    return instance.partition(SEPARATOR)[0]
