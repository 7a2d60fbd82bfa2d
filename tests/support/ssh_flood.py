"""Idle TCP connections to an SSH port, held open: a pre-auth flood, as its own process.

Usage: python -m tests.support.ssh_flood PORT COUNT SOURCE_ADDRESS
Prints 'OPEN <n>' once it has made its attempts (n succeeded), then holds
them until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys


async def main(port: int, count: int, source: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    writers = []
    for _ in range(count):
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5
            )
        except (OSError, TimeoutError):
            continue
        writers.append(writer)
    print(f"OPEN {len(writers)}", flush=True)
    await stop.wait()
    for writer in writers:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
