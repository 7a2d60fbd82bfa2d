"""The agent depends on no home directory, user name or file under ~/.ssh.

Under systemd's DynamicUser= without libnss-systemd, or a container run with
an arbitrary UID (Kubernetes runAsUser), the process has no passwd entry and
often no $HOME or $USER. asyncssh looks both up on every connection, and
reads ~/.ssh files wherever a home exists, unless told not to.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.relay import Relay
from tests.conftest import AgentFactory
from tests.support.agent import AGENT_BIN
from tests.support.capture import remember_secret
from tests.support.waiting import wait_until

STRANGER = "4242"  # a UID and GID with no passwd or group entry
AS_STRANGER = ["setpriv", "--reuid", STRANGER, "--regid", STRANGER, "--clear-groups"]


def _why_no_stranger() -> str | None:
    """Why the agent cannot be run under the unknown UID here, if it cannot:
    no root or setpriv; or, on the Pythons `make test-other-pythons` runs
    (SLUICE_TEST_OTHER_PYTHON set), this interpreter out of that UID's reach
    (a directory on its path it may not search, as pyenv's under /root, mode
    0700). Only the bare interpreter is started for that, so a fault of the
    agent's still fails the tests; on the venv's own Python nothing is
    probed, and an interpreter the UID cannot start fails them too."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return "needs root and setpriv (util-linux) to run the agent under an unknown UID"
    if not os.environ.get("SLUICE_TEST_OTHER_PYTHON"):
        return None
    probe = subprocess.run(
        [*AS_STRANGER, sys.executable, "-c", ""],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        said = probe.stderr.decode(errors="replace").strip()
        return f"UID {STRANGER} cannot start {sys.executable} here ({said})"
    return None


_NO_STRANGER = _why_no_stranger()
needs_setpriv = pytest.mark.skipif(_NO_STRANGER is not None, reason=_NO_STRANGER or "")


def _agent_env(relay: Relay, token: str) -> dict[str, str]:
    host, port = relay.ssh_address
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "SLUICE_AGENT_RELAY": f"{host}:{port}",
        "SLUICE_AGENT_TOKEN": token,
        "SLUICE_AGENT_RELAY_FINGERPRINT": relay.fingerprint,
        "SLUICE_AGENT_ALLOW": "127.0.0.1:1",
        "SLUICE_AGENT_LOG_FORMAT": "json",
        "SLUICE_AGENT_HEALTH_LISTEN": "off",
        "SLUICE_AGENT_BACKOFF_INITIAL": "0.1",
        "SLUICE_AGENT_BACKOFF_MAX": "1",
    }


async def _run_until_online(
    relay: Relay, agent_id: str, argv: list[str], env: dict[str, str], log_path: Path
) -> None:
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
    try:
        await wait_until(
            lambda: relay.registry.is_online(agent_id) or proc.returncode is not None,
            timeout=20,
            what="the agent online",
        )
        if proc.returncode is not None:
            raise AssertionError(
                f"agent exited ({proc.returncode}) instead of coming online:\n"
                + log_path.read_text()
            )
    finally:
        if proc.returncode is None:
            proc.terminate()
            async with asyncio.timeout(15):
                await proc.wait()
    assert proc.returncode == 0, log_path.read_text()


@needs_setpriv
async def test_agent_comes_online_without_home_user_or_passwd_entry(
    relay: Relay, tmp_path: Path
) -> None:
    _, token = await relay.store.create_agent("homeless")
    remember_secret(str(token), token.secret)
    argv = [*AS_STRANGER, str(AGENT_BIN), "run"]
    # No HOME, USER or LOGNAME: the environment of `env -i` plus the settings.
    env = _agent_env(relay, str(token))
    await _run_until_online(relay, token.agent_id, argv, env, tmp_path / "agent-stranger.log")


@needs_setpriv
async def test_agent_looks_at_nothing_under_home_ssh(relay: Relay, tmp_path: Path) -> None:
    """A $HOME the agent's user may not even look into changes nothing.

    asyncssh by default stats ~/.ssh/crt and reads ~/.ssh/config, known_hosts,
    ca-bundle.crt and keys; a ~/.ssh it cannot search fails the connection.
    """
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    home.chmod(0o700)  # root's: the agent's UID gets EACCES below it
    _, token = await relay.store.create_agent("home-not-searchable")
    remember_secret(str(token), token.secret)
    env = {**_agent_env(relay, str(token)), "HOME": str(home), "USER": "someone"}
    await _run_until_online(
        relay,
        token.agent_id,
        [*AS_STRANGER, str(AGENT_BIN), "run"],
        env,
        tmp_path / "agent-home.log",
    )


async def test_agent_warns_while_the_host_key_check_is_off(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    proc, _ = await start_agent(
        ["127.0.0.1:1"], insecure_skip_host_key_check="true", relay_fingerprint=""
    )
    await proc.stop()
    events = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    warnings = [e for e in events if e["event"] == "host_key_check_off"]
    assert warnings, proc.log()
    assert warnings[0]["level"] == "warning"
    assert "insecure_skip_host_key_check" in warnings[0]["detail"]
