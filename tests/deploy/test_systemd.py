"""The systemd units as shipped, under systemd 252 as PID 1, installed as docs/DEPLOY.md says.

A privileged podman container boots Debian 12's systemd (without
libnss-systemd, as a minimal Debian or a cloud image). The wheel goes into
/opt/sluice, the units into /etc/systemd/system unchanged; both services
start as shipped (Type=notify, watchdog, sandboxing, DynamicUser= for the
agent). Drop-ins, which DEPLOY.md uses for settings, only move the listening
ports to free loopback ports (the container shares the host's network).

The token: in such a container systemd 252 leaves /run/credentials/<unit>
root-only, so the agent's DynamicUser cannot read what LoadCredential= put
there (an environment limit; on a host the credential works). The shipped
unit keeps LoadCredential=; the test hands the token over in a root-only
(0600) drop-in instead, which the agent reads before the credential.
"""

from __future__ import annotations

import re
import shlex
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.conftest import api_get, wait_agent_online
from tests.deploy.images import REPO
from tests.deploy.podman import RUN_FLAGS, podman, remove_container
from tests.support.capture import remember_secret
from tests.support.ports import free_port

pytestmark = pytest.mark.deploy

BOOT_TIMEOUT = 60.0  # seconds for systemd to reach "running"
INSTALL_TIMEOUT = 600.0  # pip install of the wheel's dependencies from the index
UNIT_TIMEOUT = 120.0  # systemctl start/stop of one unit


@dataclass
class Machine:
    """A container booted with systemd as PID 1."""

    name: str

    def sh(
        self,
        script: str,
        *,
        timeout: float = UNIT_TIMEOUT,
        check: bool = True,
        stdin: str | None = None,
    ) -> str:
        """Run *script*; a secret goes in on *stdin*, not in the script (errors show that)."""
        args = ["exec", *(["-i"] if stdin is not None else []), self.name, "sh", "-ec", script]
        return podman(*args, timeout=timeout, check=check, input=stdin).stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self) -> str:
        return self.sh("journalctl --no-pager -o cat", timeout=60)


@pytest.fixture
def machine(systemd_image: str, wheel_dir: Path) -> Iterator[Machine]:
    name = f"sluice-deploy-systemd-{uuid.uuid4().hex[:8]}"
    try:
        podman(
            "run", "--detach", "--name", name, *RUN_FLAGS,
            "--privileged", "--systemd=always",
            "-v", f"{wheel_dir}:/dist:ro",
            "-v", f"{REPO / 'systemd'}:/src/systemd:ro",
            "-v", f"{REPO / 'constraints.txt'}:/src/constraints.txt:ro",
            systemd_image,
            timeout=BOOT_TIMEOUT,
        )  # fmt: skip
        box = Machine(name)
        deadline = time.monotonic() + BOOT_TIMEOUT
        state = ""
        while state not in ("running", "degraded"):
            if time.monotonic() > deadline:
                raise AssertionError(f"systemd did not boot: {state!r}")
            time.sleep(0.2)
            state = box.sh("systemctl is-system-running || true", timeout=30).strip()
        yield box
    finally:
        remove_container(name)


@pytest.mark.timeout(1200)
def test_units_as_shipped_under_systemd(machine: Machine) -> None:
    api_port, ssh_port, health_port = free_port(), free_port(), free_port()
    # "Install the programs", as DEPLOY.md says.
    machine.sh(
        "python3 -m venv /opt/sluice && /opt/sluice/bin/pip install -q"
        " -c /src/constraints.txt /dist/sluice-*.whl"
        " && /opt/sluice/bin/sluice-agent --version",
        timeout=INSTALL_TIMEOUT,
    )
    # The relay: its system user, the unit, a drop-in with the listen addresses.
    machine.sh(
        f"""
        useradd --system --home-dir /var/lib/sluice-server --no-create-home \\
                --shell /usr/sbin/nologin sluice-server
        install -m 0644 /src/systemd/sluice-server.service /etc/systemd/system/
        mkdir -p /etc/systemd/system/sluice-server.service.d
        printf '[Service]\\nEnvironment=SLUICE_SERVER_HTTP_LISTEN=127.0.0.1:{api_port}\\n%s\\n' \\
            'Environment=SLUICE_SERVER_SSH_LISTEN=127.0.0.1:{ssh_port}' \\
            > /etc/systemd/system/sluice-server.service.d/listen.conf
        systemctl daemon-reload
        systemctl enable --now sluice-server.service
        """
    )
    admin_token = machine.sh("cat /var/lib/sluice-server/admin_token").strip()
    remember_secret(admin_token)
    run = (
        "runuser -u sluice-server -- env SLUICE_SERVER_DATA_DIR=/var/lib/sluice-server "
        "/opt/sluice/bin/sluice-server"
    )
    fingerprint = machine.sh(f"{run} fingerprint").strip()
    created = machine.sh(f"{run} agents create warehouse-1")
    found = re.search(r"agent_id: (\S+)\ntoken: (\S+)", created)
    assert found, created
    agent_id, token = found.groups()
    remember_secret(token)

    # The agent: settings from the example file, the token, the unit.
    settings = {
        "relay": f'["127.0.0.1:{ssh_port}"]',
        "relay_fingerprint": f'"{fingerprint}"',
    }
    edits = "; ".join(f"s|^{k} = .*|{k} = {v}|" for k, v in settings.items())
    machine.sh(
        f"""
        install -d -m 0755 /etc/sluice
        install -m 0644 /src/systemd/agent.toml.example /etc/sluice/agent.toml
        sed -i {shlex.quote(edits + '; s|"inventory.internal:8443",|"127.0.0.1:1",|')} \\
            /etc/sluice/agent.toml
        ( umask 077; cat > /etc/sluice/agent.token )
        install -m 0644 /src/systemd/sluice-agent.service /etc/systemd/system/
        mkdir -p /etc/systemd/system/sluice-agent.service.d
        printf '[Service]\\nEnvironment=SLUICE_AGENT_HEALTH_LISTEN=127.0.0.1:{health_port}\\n' \\
            > /etc/systemd/system/sluice-agent.service.d/listen.conf
        # See the module docstring: LoadCredential='s copy is root-only here.
        ( umask 077; printf '[Service]\\nEnvironment=SLUICE_AGENT_TOKEN=%s\\n' \\
            "$(cat /etc/sluice/agent.token)" \\
            > /etc/systemd/system/sluice-agent.service.d/token.conf )
        systemctl daemon-reload
        SLUICE_AGENT_TOKEN_FILE=/etc/sluice/agent.token \\
            /opt/sluice/bin/sluice-agent --config /etc/sluice/agent.toml check
        systemctl enable --now sluice-agent.service
        """,
        stdin=token,
    )
    # Type=notify: `systemctl start` returned once the tunnel was up.
    base = f"http://127.0.0.1:{api_port}"
    wait_agent_online(base, agent_id, admin_token, UNIT_TIMEOUT)
    assert api_get(base, "/v1/relay", admin_token)["ssh_fingerprint"] == fingerprint

    agent = machine.show("sluice-agent", "StatusText", "ActiveState", "MainPID")
    relay = machine.show("sluice-server", "StatusText", "ActiveState", "MainPID")
    assert agent["ActiveState"] == "active", agent
    assert agent["StatusText"] == f"tunnel up to 127.0.0.1:{ssh_port}"
    # The units as shipped, the agent's LoadCredential= included.
    for unit in ("sluice-agent.service", "sluice-server.service"):
        machine.sh(f"cmp /src/systemd/{unit} /etc/systemd/system/{unit}")
    assert "LoadCredential=token:/etc/sluice/agent.token" in machine.sh(
        "systemctl cat sluice-agent.service"
    )
    assert relay["ActiveState"] == "active", relay
    assert relay["StatusText"] == f"SSH 127.0.0.1:{ssh_port}, API 127.0.0.1:{api_port}"
    # DynamicUser=: an unprivileged UID without a passwd entry (no libnss-systemd).
    agent_uid = machine.sh(f"stat -c %u /proc/{agent['MainPID']}").strip()
    assert agent_uid != "0"
    assert machine.sh(f"getent passwd {agent_uid} || echo none").strip() == "none"
    relay_user = machine.sh(f"stat -c %U /proc/{relay['MainPID']}").strip()
    assert relay_user == "sluice-server"

    machine.sh("systemctl stop sluice-agent.service sluice-server.service")
    for unit in ("sluice-agent", "sluice-server"):
        after = machine.show(unit, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
        assert after == {
            "ActiveState": "inactive",
            "Result": "success",
            "ExecMainStatus": "0",
            "NRestarts": "0",
        }, (unit, after)

    journal = machine.journal()
    assert '"event": "tunnel_up"' in journal
    assert '"event": "admin_token_generated"' in journal
    for secret in (admin_token, token, token.rsplit("_", 1)[1]):
        assert secret not in journal
