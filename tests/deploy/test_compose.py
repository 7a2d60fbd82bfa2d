"""docs/docker-compose.example.yml, run with podman-compose the way its header says.

The relay, PostgreSQL and the agent on compose networks (podman bridges on
this host, names resolved by the dnsname CNI plugin); the relay's ports are
published on loopback only. postgres:15 is a stand-in built from Debian's
PostgreSQL (tests/deploy/postgres.Containerfile): no registry image can be
pulled here. The project's images are the session's, built from the
Dockerfiles, tagged as the names the file uses.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.conftest import api_get, wait_agent_online
from tests.deploy.images import REPO
from tests.deploy.podman import GLOBAL_FLAGS, RUN_FLAGS, machine_lock, podman, retag
from tests.support.capture import remember_secret
from tests.support.ports import free_port

pytestmark = pytest.mark.deploy

COMPOSE_FILE = REPO / "docs" / "docker-compose.example.yml"
COMPOSE_BIN = Path(sys.executable).parent / "podman-compose"
UP_TIMEOUT = 300.0  # seconds: PostgreSQL's first start, then the relay, then the agent
STOP_TIMEOUT = 120.0
# The limits of RUN_FLAGS, without its host network: compose makes its own.
LIMITS = [flag for flag in RUN_FLAGS if flag not in ("--network", "host")]


def _skip_reason() -> str | None:
    if not COMPOSE_BIN.exists():
        return "podman-compose is not installed (pip install '.[test]')"
    if shutil.which("dnsmasq") is None or not Path("/usr/lib/cni/dnsname").exists():
        return (
            "compose service names need the dnsname CNI plugin "
            "(apt-get install golang-github-containernetworking-plugin-dnsname; .ci/run does)"
        )
    return None


@dataclass
class Compose:
    project: str
    env: dict[str, str]

    def __call__(
        self, *args: str, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            str(COMPOSE_BIN),
            "--podman-args", " ".join(GLOBAL_FLAGS),
            "--podman-run-args", " ".join(LIMITS),
            "--in-pod", "false",
            "-p", self.project,
            "-f", str(COMPOSE_FILE),
            *args,
        ]  # fmt: skip
        done = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"exit {done.returncode}: {shlex.join(argv)}\n{done.stdout[-4000:]}\n"
                f"{done.stderr[-4000:]}"
            )
        return done

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"


@pytest.fixture
def compose(
    server_image: str, agent_image: str, postgres_image: str, tmp_path: Path
) -> Iterator[Compose]:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with machine_lock():
        retag(server_image, "localhost/sluice-server:latest")
        retag(agent_image, "localhost/sluice-agent:latest")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(
        {
            "SLUICE_DB_PASSWORD": secrets.token_hex(16),
            "SLUICE_SSH_PUBLISH": f"127.0.0.1:{free_port()}",
            "SLUICE_API_PUBLISH": f"127.0.0.1:{free_port()}",
            "SLUICE_AGENT_ALLOW": "127.0.0.1:1",
            "SLUICE_AGENT_TOKEN_PATH": str(tmp_path / "agent_token"),
        }
    )
    remember_secret(env["SLUICE_DB_PASSWORD"])
    run = Compose(project=f"sluicedeploy{uuid.uuid4().hex[:8]}", env=env)
    try:
        yield run
    finally:
        run("down", "--volumes", "--timeout", "0", timeout=STOP_TIMEOUT, check=False)


def _wait_healthy(container: str, timeout: float) -> None:
    """What `depends_on: condition: service_healthy` waits for; podman-compose
    ignores the condition with podman 4.3 (it says so), so the test waits."""
    deadline = time.monotonic() + timeout
    while True:
        check = podman("healthcheck", "run", container, timeout=60, check=False)
        if check.returncode == 0:
            return
        if time.monotonic() > deadline:
            logs = podman("logs", container, timeout=60, check=False)
            raise AssertionError(
                f"{container} not healthy after {timeout:g} s: {check.stdout}{check.stderr}\n"
                f"{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
            )
        time.sleep(0.5)


@pytest.mark.timeout(1200)
def test_compose_example_runs_relay_postgres_and_agent(compose: Compose, tmp_path: Path) -> None:
    compose("up", "-d", "--no-build", "db", timeout=UP_TIMEOUT)
    _wait_healthy(compose.container("db"), UP_TIMEOUT)
    compose("up", "-d", "--no-build", "relay", timeout=UP_TIMEOUT)
    _wait_healthy(compose.container("relay"), UP_TIMEOUT)
    fingerprint = compose("exec", "-T", "relay", "sluice-server", "fingerprint").stdout.strip()
    assert re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fingerprint), fingerprint
    created = compose("exec", "-T", "relay", "sluice-server", "agents", "create", "demo").stdout
    found = re.search(r"agent_id: (\S+)\ntoken: (\S+)", created)
    assert found, created
    agent_id, token = found.groups()
    remember_secret(token)
    token_path = Path(compose.env["SLUICE_AGENT_TOKEN_PATH"])
    token_path.write_text(token + "\n")
    os.chown(token_path, 10001, -1)
    token_path.chmod(0o400)
    compose.env["SLUICE_RELAY_FINGERPRINT"] = fingerprint
    compose("up", "-d", "--no-build", timeout=UP_TIMEOUT)

    admin_token = compose(
        "exec", "-T", "relay", "cat", "/var/lib/sluice-server/admin_token"
    ).stdout.strip()
    remember_secret(admin_token)
    api = "http://" + compose.env["SLUICE_API_PUBLISH"]
    wait_agent_online(api, agent_id, admin_token, UP_TIMEOUT)
    assert api_get(api, "/v1/relay", admin_token)["ssh_fingerprint"] == fingerprint
    # The relay keeps its agents in PostgreSQL, not in its data volume.
    stored = compose(
        "exec", "-T", "db", "psql", "-U", "sluice", "-d", "sluice", "-tAc", "SELECT id FROM agents"
    ).stdout.split()
    assert stored == [agent_id]
    for service in ("db", "relay", "agent"):
        name = compose.container(service)
        check = podman("healthcheck", "run", name, timeout=60, check=False)
        assert check.returncode == 0, (name, check.stdout, check.stderr)

    compose("stop", timeout=STOP_TIMEOUT)
    for service in ("relay", "agent"):
        code = podman(
            "inspect", "--format", "{{.State.ExitCode}}", compose.container(service), timeout=30
        )
        if code.stdout.strip() != "0":
            said = podman("logs", compose.container(service), timeout=60, check=False)
            raise AssertionError(
                f"{service} exited with {code.stdout.strip()} on stop:\n"
                f"{said.stdout[-4000:]}{said.stderr[-4000:]}"
            )
    logs = {
        service: (done := podman("logs", compose.container(service), timeout=60)).stdout
        + done.stderr
        for service in ("db", "relay", "agent")
    }
    assert '"event": "tunnel_up"' in logs["agent"]
    for secret in (token, admin_token, compose.env["SLUICE_DB_PASSWORD"]):
        for service, text in logs.items():
            assert secret not in text, f"a secret in {service}'s log"
