"""Deploy tests: the images, units and compose file, run the way operators run them.

Marked `deploy`; skipped with the reason where podman or runc is missing or
the user is not root. The base image is built once per machine (cached by
its label); the project's images and wheel once per session.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.deploy import images
from tests.deploy.podman import skip_reason

_REASON = skip_reason()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if _REASON is not None and here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=_REASON))


@pytest.fixture(scope="session")
def base_image() -> str:
    return images.base_image()


@pytest.fixture(scope="session")
def server_image(base_image: str) -> str:
    return images.project_image("server")


@pytest.fixture(scope="session")
def agent_image(base_image: str) -> str:
    return images.project_image("agent")


@pytest.fixture(scope="session")
def systemd_image(base_image: str) -> str:
    return images.systemd_image()


@pytest.fixture(scope="session")
def postgres_image(base_image: str) -> str:
    return images.postgres_image()


@pytest.fixture(scope="session")
def wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    images.wheel(out)
    return out


def api_get(base: str, path: str, admin_token: str) -> dict[str, object]:
    """GET a relay API path with the admin token (on loopback)."""
    request = urllib.request.Request(
        base + path, headers={"Authorization": f"Bearer {admin_token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        body = json.loads(resp.read())
    assert isinstance(body, dict)
    return body


def wait_agent_online(base: str, agent_id: str, admin_token: str, timeout: float) -> None:
    """Poll the relay's API until it reports the agent online."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = api_get(base, f"/v1/agents/{agent_id}", admin_token)
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        else:
            if isinstance(last, dict) and last.get("status") == "online":
                return
        time.sleep(0.2)
    raise AssertionError(f"agent {agent_id} not online after {timeout:g} s: {last}")
