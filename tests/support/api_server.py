"""Run the test API as its own process (for network namespaces).

Prints 'READY <port>' on stdout once listening; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from tests.support.api import serve_api


async def main(host: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async for api in serve_api(host):
        print(f"READY {api.port}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    asyncio.run(main(parser.parse_args().host))
    sys.exit(0)
