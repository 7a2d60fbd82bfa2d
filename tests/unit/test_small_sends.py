"""A small write on an idle channel (``sluice.ssh_send._send_small``, issue
22): framed and sent in one call, not through the send scheduler's turn, the
flush, its packet and the outbox. What reaches the peer must be what the
whole path sends: every byte, in order, across key exchanges, for any
bytes-like data ``SSHChannel.write`` takes."""

from __future__ import annotations

import array
import asyncio
import sys
from collections import Counter
from types import FrameType

from sluice import send_coalescing
from tests.support.ssh_pair import echo, tuned_pair

WRITES = 400
REKEY = 20_000  # bytes: keys renewed several times each way over the writes


async def test_small_writes_echo_intact_across_key_exchanges() -> None:
    async with tuned_pair(echo, client={"rekey_bytes": REKEY}, rekey_bytes=REKEY) as conn:
        writer, reader, _ = await conn.open_session(encoding=None)
        sent = bytearray()
        kexinits = Counter[str]()

        def profile(frame: FrameType, event: str, arg: object) -> None:
            if event == "call" and frame.f_code.co_name == "_send_kexinit":
                kexinits["sent"] += 1

        async with asyncio.timeout(30):
            sys.setprofile(profile)
            try:
                for i in range(WRITES):
                    piece = b"%05d:" % i + bytes([i % 251]) * (i % 700)
                    writer.write(piece)
                    sent += piece
                    if i % 7 == 0:
                        await asyncio.sleep(0)  # some turns hold several packets
                got = await reader.readexactly(len(sent))
            finally:
                sys.setprofile(None)
            writer.write_eof()
    assert got == bytes(sent)
    assert kexinits["sent"] >= 4  # (both ends, more than once each)


async def test_views_that_are_not_plain_bytes_take_the_whole_path_intact() -> None:
    """A view of 4-byte items (``len`` counts items, not bytes) and a view
    that is not contiguous arrive as ``bytearray(view)`` would make them."""
    items = memoryview(array.array("I", range(100)))
    strided = memoryview(bytes(range(200)))[::3]
    async with tuned_pair(echo) as conn:
        writer, reader, _ = await conn.open_session(encoding=None)
        async with asyncio.timeout(20):
            writer.write(b"warm")
            assert await reader.readexactly(4) == b"warm"
            for view in (items, strided):
                writer.write(view)
                assert await reader.readexactly(view.nbytes) == bytes(bytearray(view))
            writer.write_eof()


async def test_a_small_write_makes_no_flush_and_no_outbox_call() -> None:
    """The packet is framed in ``write``'s one call and joins the outbox
    inline: none of the whole path's calls (the scheduler's and
    ``ssh_send``'s ``_flush_send_buf``, ``_send_data_fast``, ``Outbox.add``)."""
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            name = frame.f_code.co_name
            if name in ("_flush_send_buf", "_send_data_fast", "add"):
                calls[f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{name}"] += 1

    async with tuned_pair(echo) as conn:
        outbox = send_coalescing.outbox(conn)
        assert outbox is not None
        writer, reader, _ = await conn.open_session(encoding=None)
        async with asyncio.timeout(20):
            writer.write(b"warm")
            assert await reader.readexactly(4) == b"warm"
            channel = writer.channel
            sys.setprofile(profile)
            try:
                channel.write(b"small request")
                held = len(outbox.parts)
            finally:
                sys.setprofile(None)
            assert held == 2  # its length field and its sealed packet, held for the turn's end
            assert await reader.readexactly(13) == b"small request"
            writer.write_eof()
    assert calls == Counter(), calls
