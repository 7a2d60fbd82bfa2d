"""The IGNORE-packet tweak: gone under AEAD ciphers, kept under others."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

from sluice.ssh_tuning import skip_aead_ignore_packets


class _Counting(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False

    def session_requested(self) -> bool:
        return True


async def _packets_sent(cipher: str, tmp_path: Path) -> int:
    """Run 20 small echo round trips; return how many packets the client sent."""
    skip_aead_ignore_packets()
    key = asyncssh.generate_private_key("ssh-ed25519")

    async def handle(process: asyncssh.SSHServerProcess[str]) -> None:
        async for line in process.stdin:
            process.stdout.write(line)
        process.exit(0)

    server = await asyncssh.create_server(
        _Counting, "127.0.0.1", 0, server_host_keys=[key], process_factory=handle,
        encryption_algs=[cipher],
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, username="u", client_keys=None,
            agent_path=None, config=None, encryption_algs=[cipher],
        ) as conn, conn.create_process("echo") as proc:
            before = conn._send_seq
            for i in range(20):
                proc.stdin.write(f"{i}\n")
                assert (await asyncio.wait_for(proc.stdout.readline(), 5)) == f"{i}\n"
            sent = conn._send_seq - before
            proc.stdin.write_eof()
    finally:
        server.close()
        await server.wait_closed()
    return int(sent)


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
async def test_one_packet_per_write_under_aead(cipher: str, tmp_path: Path) -> None:
    assert await _packets_sent(cipher, tmp_path) == 20


async def test_ignore_packets_kept_under_ctr(tmp_path: Path) -> None:
    assert await _packets_sent("aes128-ctr", tmp_path) == 40  # an IGNORE before each

