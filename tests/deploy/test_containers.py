"""The relay and agent images, built from the Dockerfiles as they are, run as docs/DEPLOY.md says.

Host networking with free loopback ports, so nothing leaves the machine; the
agent's token comes as a secret file, mounted read-only where Docker mounts
secrets.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.conftest import wait_agent_online
from tests.deploy.podman import RUN_FLAGS, podman, remove_container
from tests.support.capture import remember_secret
from tests.support.ports import free_port

pytestmark = pytest.mark.deploy

START_TIMEOUT = 60.0  # seconds for a container's program to come up
STOP_TIMEOUT = 45  # docker run --stop-timeout, as DEPLOY.md says


def _main_uid(container: str) -> int:
    """The real UID of the container's main process, as the host sees it."""
    pid = podman("inspect", "--format", "{{.State.Pid}}", container, timeout=30).stdout.strip()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def _stop(container: str) -> int:
    """`podman stop` (SIGTERM, then the grace) and the program's exit status."""
    podman("stop", "--time", str(STOP_TIMEOUT), container, timeout=STOP_TIMEOUT + 30)
    code = podman("inspect", "--format", "{{.State.ExitCode}}", container, timeout=30)
    return int(code.stdout.strip())


def _logs(container: str) -> str:
    done = podman("logs", container, timeout=60)
    return done.stdout + done.stderr


@dataclass
class RelayContainer:
    name: str
    api: str
    ssh: str
    admin_token: str
    fingerprint: str

    def exec(self, *args: str) -> str:
        return podman("exec", self.name, *args, timeout=60).stdout

    def create_agent(self, name: str) -> tuple[str, str]:
        out = self.exec("sluice-server", "agents", "create", name)
        agent_id = re.search(r"agent_id: (\S+)", out)
        token = re.search(r"token: (\S+)", out)
        assert agent_id, out
        assert token, out
        remember_secret(token.group(1))
        return agent_id.group(1), token.group(1)


@pytest.fixture
def relay_container(server_image: str) -> Iterator[RelayContainer]:
    name = f"sluice-deploy-relay-{uuid.uuid4().hex[:8]}"
    api_port, ssh_port = free_port(), free_port()
    try:
        podman(
            "run", "--detach", "--name", name, *RUN_FLAGS,
            "--stop-timeout", str(STOP_TIMEOUT),
            "-e", f"SLUICE_SERVER_HTTP_LISTEN=127.0.0.1:{api_port}",
            "-e", f"SLUICE_SERVER_SSH_LISTEN=127.0.0.1:{ssh_port}",
            server_image,
            timeout=START_TIMEOUT,
        )  # fmt: skip
        # The admin token is generated on first start, into the data volume.
        _wait_for_file(name, "/var/lib/sluice-server/admin_token")
        admin_token = podman(
            "exec", name, "cat", "/var/lib/sluice-server/admin_token", timeout=30
        ).stdout.strip()
        remember_secret(admin_token)
        fingerprint = podman(
            "exec", name, "sluice-server", "fingerprint", timeout=60
        ).stdout.strip()
        yield RelayContainer(
            name=name,
            api=f"http://127.0.0.1:{api_port}",
            ssh=f"127.0.0.1:{ssh_port}",
            admin_token=admin_token,
            fingerprint=fingerprint,
        )
    finally:
        remove_container(name)


def _wait_for_file(container: str, path: str) -> None:
    import time

    deadline = time.monotonic() + START_TIMEOUT
    while podman("exec", container, "test", "-s", path, timeout=30, check=False).returncode:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared in {container}:\n{_logs(container)}")
        time.sleep(0.2)


def _token_file(tmp_path: Path, token: str, uid: int) -> Path:
    """The token as DEPLOY.md has it: 0400, owned by the image's user."""
    path = tmp_path / f"agent-token-{uid}"
    path.write_text(token)
    os.chown(path, uid, -1)
    path.chmod(0o400)
    return path


def _run_agent(
    relay: RelayContainer, agent_image: str, token_file: Path, *extra: str
) -> tuple[str, int]:
    name = f"sluice-deploy-agent-{uuid.uuid4().hex[:8]}"
    health_port = free_port()
    podman(
        "run", "--detach", "--name", name, *RUN_FLAGS, *extra,
        "--stop-timeout", str(STOP_TIMEOUT),
        "-e", f"SLUICE_AGENT_RELAY={relay.ssh}",
        "-e", f"SLUICE_AGENT_RELAY_FINGERPRINT={relay.fingerprint}",
        "-e", "SLUICE_AGENT_ALLOW=127.0.0.1:1",
        "-e", f"SLUICE_AGENT_HEALTH_LISTEN=127.0.0.1:{health_port}",
        "-v", f"{token_file}:/run/secrets/sluice_agent_token:ro",
        agent_image,
        timeout=START_TIMEOUT,
    )  # fmt: skip
    return name, health_port


@pytest.mark.timeout(900)
def test_relay_and_agent_containers(
    relay_container: RelayContainer, agent_image: str, tmp_path: Path
) -> None:
    relay = relay_container
    agent_id, token = relay.create_agent("container")
    agent, _ = _run_agent(relay, agent_image, _token_file(tmp_path, token, 10001))
    try:
        wait_agent_online(relay.api, agent_id, relay.admin_token, START_TIMEOUT)
        assert _main_uid(relay.name) == 10001
        assert _main_uid(agent) == 10001
        # The images' HEALTHCHECK commands (kept by --format docker).
        for name in (relay.name, agent):
            check = podman("healthcheck", "run", name, timeout=60, check=False)
            assert check.returncode == 0, (name, check.stdout, check.stderr)
        assert _stop(agent) == 0
        assert _stop(relay.name) == 0
        agent_logs, relay_logs = _logs(agent), _logs(relay.name)
    finally:
        remove_container(agent)
    assert '"event": "tunnel_up"' in agent_logs
    assert '"event": "agent_stopped"' in agent_logs
    assert '"event": "relay_stopped"' in relay_logs
    # First start under a non-terminal stdout: where the token is, not what it is.
    assert "/var/lib/sluice-server/admin_token" in relay_logs
    for secret in (relay.admin_token, token, token.rsplit("_", 1)[1]):
        assert secret not in agent_logs
        assert secret not in relay_logs


@pytest.mark.timeout(900)
def test_agent_container_as_an_arbitrary_uid(
    relay_container: RelayContainer, agent_image: str, tmp_path: Path
) -> None:
    """`--user 4242:4242`, a UID with no passwd entry (Kubernetes runAsUser)."""
    relay = relay_container
    agent_id, token = relay.create_agent("arbitrary-uid")
    token_file = _token_file(tmp_path, token, 4242)
    # --passwd=false: podman would otherwise add a passwd entry for the UID,
    # which Docker and Kubernetes do not.
    agent, _ = _run_agent(relay, agent_image, token_file, "--user", "4242:4242", "--passwd=false")
    try:
        wait_agent_online(relay.api, agent_id, relay.admin_token, START_TIMEOUT)
        assert _main_uid(agent) == 4242
        passwd = podman("exec", agent, "getent", "passwd", "4242", timeout=30, check=False)
        assert passwd.returncode != 0  # no passwd entry, no home
        assert _stop(agent) == 0
        logs = _logs(agent)
    finally:
        remove_container(agent)
    assert token not in logs
