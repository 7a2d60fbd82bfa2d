"""A hostile "internal API" as its own process, for the relay's abuse tests.

Prints 'READY <port>' once listening; stops on SIGTERM. Paths:
- ``/bomb``: ``200`` then header lines without end (up to ``BOMB_LIMIT``),
  until the peer goes away; prints 'BOMB <bytes sent>' when it stops.
- ``/long-header``: ``200`` with one 20,000-byte header, echoing the query
  (a URL-parameter token) in it, as a careless API might.
- anything else: ``200 {"ok": true}``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

BOMB_LIMIT = 2 * 1024**3
_LINES = b"".join(b"X-Bomb-%05d: %s\r\n" % (i, b"b" * 100) for i in range(500))


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sent = 0
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1]
        if target.startswith(b"/bomb"):
            writer.write(b"HTTP/1.1 200 OK\r\n")
            while sent < BOMB_LIMIT:
                writer.write(_LINES)
                sent += len(_LINES)
                await writer.drain()
        elif target.startswith(b"/long-header"):
            filler = b"x" * 20_000
            writer.write(
                b"HTTP/1.1 200 OK\r\nX-Echo: " + target + filler + b"\r\n"
                b'Content-Length: 12\r\n\r\n{"ok": true}'
            )
            await writer.drain()
        else:
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{"ok": true}')
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        if sent:
            print(f"BOMB {sent}", flush=True)
        writer.close()


async def main(host: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(_serve, host, 0)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    asyncio.run(main(parser.parse_args().host))
