"""SSH parameters both ends agree on: algorithm preferences, channel sizes."""

from __future__ import annotations

from typing import Final

import asyncssh

# aes128-gcm is what OpenSSH picks on hardware with AES-NI and, measured on our
# 2-core loopback, costs about half the CPU per small request of asyncssh's
# default chacha20-poly1305. The others stay as fallbacks.
ENCRYPTION_ALGS: Final = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)

# GCM carries its own MAC; these only matter for the -ctr fallbacks.
MAC_ALGS: Final = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
)

COMPRESSION_ALGS: Final = ("none",)

# The listener an agent registers; the relay opens its channels towards it.
TUNNEL_LISTEN_HOST: Final = "sluice"
TUNNEL_LISTEN_PORT: Final = 1
# asyncssh's client records a remote listener only after the relay's reply
# has been handled, so a channel the relay opens at once may meet "No such
# listener". The agent therefore says it is ready by asking for a connection
# to this reserved name; the relay refuses it, and only then sends streams.
TUNNEL_READY_HOST: Final = "sluice-ready"
# A channel the agent opens to this reserved name carries back, as JSON, the
# relays of the cluster ({"relay": "<the one answering>", "relays": [...]})
# and closes. A relay of an older version refuses it: the agent then keeps
# its one tunnel.
CLUSTER_RELAYS_HOST: Final = "sluice-relays"

# Per-channel receive window (the relay's: answers) and packet size. All
# streams of an agent share one SSH connection, so a bulk stream can queue up
# to a window of data ahead of a small answer: while small answers run beside
# it, its window shrinks (server/tunnel/window_share.py), and the senders'
# queues are kept short (sluice/send_scheduler.py). Alone, it keeps four
# packets' worth: asyncssh tops a window up once less than half is left, so
# the agent still holds a packet's credit when the top-up goes out and never
# waits for it between two packets. With a window of one packet (256 KiB),
# each packet waited for the top-up of the one before (relay: read, decrypt,
# adjust; agent: wake, encrypt, write, one after the other): the 64 MiB
# download ran at 0.55-0.65x OpenSSH with both processes well below a core
# each (issue 22). Packets as large as 256 KiB cost a quarter of the
# per-packet work (parse, decrypt, hand-off) of 32 KiB ones. Each side
# announces its own maximum when a channel opens (RFC 4254 5.1), so an older
# peer that asks for 32 KiB packets still gets them. The A/B measurements
# behind both sizes: docs/BENCHMARKS.md, "Tuning history".
# A short link (loopback, a host next door: SHORT_LINK_RTT) starts its
# answers at SHORT_LINK_CHANNEL_WINDOW instead, unless the operator set
# stream_window (server/tunnel/link_window.py): on branch issue-27a 2 MiB
# cut the relay's and agent's CPU per MiB of a loopback download (1.81-1.88
# -> 1.72-1.73 ms/MiB, lower in every interleaved round; the agent's credit
# ran out less often), while at 50 ms the GETs beside a download looked
# slower in 4 pairs (p50 82 -> 90 ms, medians): more window queues ahead of
# them (docs/BENCHMARKS.md, "Tuning history"). So a long link keeps 1 MiB.
# Tried and dropped on branch issue-28b: 4 MiB on a short link (13
# interleaved pairs): the agent's CPU per MiB of a download without sendfile
# 12% higher (higher in 11 of 13), its MB/s 4% lower.
CHANNEL_WINDOW: Final = 1024 * 1024
SHORT_LINK_CHANNEL_WINDOW: Final = 2 * 1024 * 1024
# The round trip below which a tunnel's link counts as short, by both the
# agent's login (an application round trip, never shorter than the link's)
# and the relay's kernel (never longer, but only to the next TCP hop). 5 ms,
# not 2: the login's round trip includes both ends' work, which a busy
# machine stretches past 2 ms even on loopback; the long links measured
# (10-100 ms) keep 1 MiB either way.
SHORT_LINK_RTT: Final = 0.005
CHANNEL_MAX_PKTSIZE: Final = 256 * 1024
# Bounds of the relay's stream_window setting: below 64 KiB a stream moves
# too little per round trip to be of use; above 16 MiB a stalled caller
# holds that much in the relay per stream.
MIN_CHANNEL_WINDOW: Final = 64 * 1024
MAX_CHANNEL_WINDOW: Final = 16 * 1024 * 1024
# The agent's receive window (request bodies, relay -> agent). No small
# answers share that direction, so it is sized for throughput. It bounds what
# one stream can buffer in the agent when its API stops reading. A 2 MiB
# start on a short link, as answers get (branch issue-28b), halved an
# upload's top-ups but let the agent's peak RSS grow by 14-30 MB over a
# 50 MiB echo (test_large_bodies_are_streamed_with_flat_agent_memory, 1 MB
# before): reverted at the merge. The cause (issue 28h): the stream's first
# round made loopback look long to the window tuner, which granted 32-66 MiB
# at once (fixed: WindowBudget.sampled); its wire test of fewer top-ups had
# passed only through that growth (32 per 32 MiB without it).
AGENT_RECEIVE_WINDOW: Final = 1024 * 1024

# Keys are exchanged again after this many bytes in either direction: 2^32
# blocks of a 128-bit block cipher (64 GiB), the limit RFC 4344 3.2 sets for
# AES and what OpenSSH's RekeyLimit default comes to with AES (1 GiB is its
# figure for 64-bit blocks only). Every stream of an agent stops for a key
# exchange, for two round trips: with asyncssh's 1 GiB, a GET beside a 1 GiB
# download on a 100 ms link took 3 round trips whenever the tunnel crossed
# another GiB (the relay received nothing for ~200 ms; issue 22). Keys are
# also exchanged hourly (asyncssh's rekey_seconds).
REKEY_BYTES: Final = 1 << 36
MIN_REKEY_BYTES: Final = 64 * 1024

# The most an agent's streams may hold in flight beyond their starting
# windows, in each direction, as their windows grow on a long link
# (sluice/window_tuning.py). 0 keeps every window at its start. A stream
# moves at most its window per round trip: 32 MiB (plus the 1 MiB start)
# capped a download at 100 ms near 335 MB/s, and bench.long_link measured
# 275 MB/s there against 447 MB/s with 64 MiB (the relay's and agent's CPU
# the limit then; 128 MiB no faster). 64 MiB lets a stream carry 670 MB/s
# at 100 ms, past half of what the link carries directly (issue 22). It is
# what a stalled agent's streams may hold in the relay (and a stalled API's
# in the agent) beyond their starting windows, if they grew before stalling.
MAX_INFLIGHT: Final = 64 * 1024 * 1024

AGENT_USERNAME: Final = "sluice-agent"


def fingerprint(key: asyncssh.SSHKey) -> str:
    """The ``SHA256:…`` fingerprint of a public key, as ssh-keygen -l prints it."""
    return key.get_fingerprint("sha256")


def normalise_fingerprint(value: str) -> str:
    """Accept ``SHA256:abc`` or bare ``abc`` (base64, unpadded) and return ``SHA256:abc``."""
    text = value.strip()
    if text.upper().startswith("SHA256:"):
        text = text[7:]
    text = text.rstrip("=")
    if not text or len(text) != 43:
        raise ValueError("must be a SHA256 fingerprint like 'SHA256:<43 base64 characters>'")
    return "SHA256:" + text
