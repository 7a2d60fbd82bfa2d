"""What the tuned SSH path runs per packet (issue 22): on a real asyncssh
pair tuned as relay and agent run it (``tune_asyncssh``, the send scheduler,
send coalescing), a small channel write each way makes no call from
Sluice's code into
``typing.cast`` (a Python function call kept only for the type checker) nor
into ``contextlib`` (a context manager where a ``try`` does): at c=1 there
were 12 such calls per request in each process."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import FrameType

import asyncssh
import pytest

import sluice
from tests.support.ssh_pair import echo, tuned_pair

ROUNDS = 20
SLUICE = str(Path(sluice.__file__).parent)  # asyncssh's own casts are not ours


@pytest.fixture
async def ssh() -> AsyncIterator[asyncssh.SSHClientConnection]:
    """A tuned client connection to a tuned echo server, as the agent's."""
    # Keepalives on at both ends, as the relay and the agent run them.
    async with tuned_pair(echo, client={"keepalive_interval": 30}, keepalive_interval=30) as conn:
        yield conn


async def _round_trips(
    ssh: asyncssh.SSHClientConnection, profile: Callable[[FrameType, str, object], None], warm: int
) -> None:
    """*warm* round trips (the padding pool filled, windows settled), then
    ROUNDS more of a small packet each way with *profile* set."""
    writer, reader, _ = await ssh.open_session(encoding=None)
    async with asyncio.timeout(20):
        for _ in range(warm):
            writer.write(b"warm")
            assert await reader.readexactly(4) == b"warm"
        sys.setprofile(profile)
        try:
            for i in range(ROUNDS):
                data = b"request %03d" % i
                writer.write(data)
                assert await reader.readexactly(len(data)) == data
        finally:
            sys.setprofile(None)
        writer.write_eof()


async def test_a_packet_each_way_calls_no_cast_and_no_context_manager(
    ssh: asyncssh.SSHClientConnection,
) -> None:
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            name = frame.f_code.co_filename.rsplit("/", 1)[-1]
            caller = frame.f_back
            if (
                name in ("typing.py", "contextlib.py")
                and caller is not None
                and SLUICE in caller.f_code.co_filename
            ):
                where = caller.f_code.co_filename.rsplit("/", 1)[-1]
                calls[f"{name}:{frame.f_code.co_name} from {where}"] += 1

    await _round_trips(ssh, profile, warm=1)
    assert calls == Counter(), f"per round trip: {calls}"


async def test_a_small_packet_each_way_makes_no_view_to_release(
    ssh: asyncssh.SSHClientConnection,
) -> None:
    """A channel write sent whole is joined into its packet as it is: no
    memoryview made over it and released (two calls a packet; issue 27b)."""
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if (
            event == "c_call"
            and getattr(arg, "__qualname__", "") == "memoryview.release"
            and SLUICE in frame.f_code.co_filename
        ):
            calls[f"{frame.f_code.co_name}: memoryview.release"] += 1

    await _round_trips(ssh, profile, warm=3)
    assert calls == Counter(), f"in {ROUNDS} round trips: {calls}"


# asyncssh's per-packet helpers the tuned path does without (issue 22): the
# keepalive timer made again per read, SSHChannel.write's debug call and cast,
# _accept_data/_deliver_data and their cast, the IV counter's method.
ASYNCSSH_PER_PACKET = {
    ("connection.py", "_reset_keepalive_timer"),
    ("connection.py", "_cancel_keepalive_timer"),
    ("connection.py", "_set_keepalive_timer"),
    ("channel.py", "_accept_data"),
    ("channel.py", "_deliver_data"),
    ("logging.py", "debug2"),
    ("cipher.py", "_update_iv"),
}


async def test_a_packet_each_way_makes_no_timer_no_getrandom_and_no_asyncssh_helper(
    ssh: asyncssh.SSHClientConnection,
) -> None:
    """Per round trip (a small packet each way, both ends tuned): no timer
    handle made (``call_later``), no ``os.urandom`` for padding (one
    ``getrandom`` system call each), and none of asyncssh's helpers above."""
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            code = frame.f_code
            key = (code.co_filename.rsplit("/", 1)[-1], code.co_name)
            if key in ASYNCSSH_PER_PACKET or (
                # asyncssh's channel and connection, not the test's stream sessions
                key[1] in ("call_later", "cast")
                and frame.f_back is not None
                and frame.f_back.f_code.co_filename.endswith(
                    ("asyncssh/channel.py", "asyncssh/connection.py")
                )
            ):
                calls[":".join(key)] += 1
        elif event == "c_call" and getattr(arg, "__name__", "") in ("urandom", "call_later"):
            calls[f"C {arg.__name__}"] += 1  # type: ignore[attr-defined]

    await _round_trips(ssh, profile, warm=3)
    # (A padding pool refill, one urandom per some 5,000 packets, may fall in.)
    calls["C urandom"] = max(0, calls["C urandom"] - 1)
    assert +calls == Counter(), f"in {ROUNDS} round trips: {calls}"


async def test_a_packet_steps_its_nonce_without_int_conversions(
    ssh: asyncssh.SSHClientConnection,
) -> None:
    """The tuned paths step each packet's AES-GCM invocation counter with
    one ``Struct.unpack`` and one ``Struct.pack`` (``ssh_gcm._IV``), not
    asyncssh's slices, ``int.from_bytes``, ``int.to_bytes`` and join (about
    330 against 190 ns, four times a request in each process; issue 22,
    branch issue-33b). Sending and receiving both: no int conversion at all
    from Sluice's code per round trip."""
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if (
            event == "c_call"
            and getattr(arg, "__qualname__", "") in ("int.from_bytes", "int.to_bytes")
            and SLUICE in frame.f_code.co_filename
        ):
            calls[f"{frame.f_code.co_name}: {arg.__qualname__}"] += 1  # type: ignore[attr-defined]

    await _round_trips(ssh, profile, warm=3)
    assert calls == Counter(), f"in {ROUNDS} round trips: {calls}"


# Sluice's own Python calls per round trip, both ends (send: write, the
# scheduler's turn, the flush and its packet, the outbox; receive: the read,
# its packets; the client reads through ssh_reads): more is per-packet
# work the tuned path had done without. 26 while a lone channel's small
# flush went through the scheduler's round robin (_sched, follow_rate,
# pump, flush_quantum per flush; issue 26h); 19 while a small write on an
# idle channel went through the scheduler's turn, the flush, its packet and
# the outbox (``_send_small`` since: write and one call, each way; issue 22,
# branch issue-33b).
SLUICE_CALLS_PER_ROUND = 14


async def test_sluice_calls_per_round_trip_stay_within_budget(
    ssh: asyncssh.SSHClientConnection,
) -> None:
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(SLUICE):
            calls[frame.f_code.co_name] += 1

    await _round_trips(ssh, profile, warm=3)
    assert calls.total() <= SLUICE_CALLS_PER_ROUND * ROUNDS, f"in {ROUNDS} round trips: {calls}"


# More than the default window (2 MiB) each way: the echo's reads and the
# test's writes go on only as window adjusts come back.
BULK = 6 * 1024 * 1024


async def test_window_adjusts_of_a_bulk_transfer_skip_asyncssh_parser(
    ssh: asyncssh.SSHClientConnection,
) -> None:
    """A bulk stream's window top-ups (one per half window, each way) are
    taken on the tuned receive path, as its data is: none goes through
    asyncssh's packet parser (``_recv_packet``: a second decrypt call with a
    join of the packet, the packet object, the dispatch and its logging).
    Nor are they sent through ``_accept_data``/``_deliver_data`` (two calls
    and a debug log per top-up): the receive path sends them itself."""
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            code = frame.f_code
            if code.co_name in ("_recv_packet", "_process_window_adjust", "_deliver_data"):
                calls[code.co_name] += 1

    writer, reader, _ = await ssh.open_session(encoding=None)
    data = bytes(range(256)) * (BULK // 256)
    async with asyncio.timeout(30):
        writer.write(b"warm")
        assert await reader.readexactly(4) == b"warm"
        sys.setprofile(profile)
        try:
            writer.write(data)
            echoed = await reader.readexactly(BULK)
        finally:
            sys.setprofile(None)
        writer.write_eof()
    assert echoed == data
    assert +calls == Counter(), f"in a {BULK}-byte echo: {calls}"


async def test_window_adjusts_are_logged_at_asyncssh_debug_level_2(
    ssh: asyncssh.SSHClientConnection, caplog: pytest.LogCaptureFixture
) -> None:
    """With asyncssh's debug level at 2, its log of each window adjust sent
    and received is kept: the tuned receive path leaves those packets to
    asyncssh (``_process_window_adjust``, ``_deliver_data``)."""
    writer, reader, _ = await ssh.open_session(encoding=None)
    data = bytes(range(256)) * (BULK // 256)
    asyncssh.set_debug_level(2)
    try:
        with caplog.at_level(logging.DEBUG, logger="asyncssh"):
            async with asyncio.timeout(30):
                writer.write(data)
                assert await reader.readexactly(BULK) == data
    finally:
        asyncssh.set_debug_level(1)
        writer.write_eof()
    messages = [r.getMessage() for r in caplog.records]
    # Each way: the echo's and the test's channels, more than a window each.
    assert sum("Received window adjust" in m for m in messages) >= 4
    assert sum("Sending window adjust" in m for m in messages) >= 4
