"""docs/docker-compose.cluster.example.yml and its nginx config hang together."""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration.test_packaging import load_yaml

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_cluster_compose_example_makes_three_relays_one_cluster_behind_nginx() -> None:
    compose = load_yaml(DOCS / "docker-compose.cluster.example.yml")
    services = compose["services"]
    relays = sorted(name for name in services if name.startswith("relay"))
    assert relays == ["relay1", "relay2", "relay3"]
    envs = [services[name]["environment"] for name in relays]
    # One database and one master key make them one cluster.
    assert len({env["SLUICE_SERVER_DATABASE_URL"] for env in envs}) == 1
    assert envs[0]["SLUICE_SERVER_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert len({env["SLUICE_SERVER_MASTER_KEY"] for env in envs}) == 1
    for name, env in zip(relays, envs, strict=True):
        assert env["SLUICE_SERVER_ADVERTISE_SSH"] == f"{name}:2222"
        assert env["SLUICE_SERVER_ADVERTISE_CLUSTER"] == f"{name}:8081"
        assert env["SLUICE_SERVER_CLUSTER_LISTEN"].endswith(":8081")
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The agent dials one relay and may reach the API; the API is internal only.
    agent = services["agent"]["environment"]
    assert agent["SLUICE_AGENT_RELAY"] == "relay1:2222"
    assert compose["networks"]["internal"]["internal"] is True
    assert services["api"]["networks"] == ["internal"]
    # nginx sends callers to every relay's API and retries on the next one.
    mount = services["lb"]["volumes"][0].split(":")[0]
    conf = (DOCS / mount).resolve().read_text()
    assert sorted(re.findall(r"server (relay\d):8080", conf)) == relays
    assert re.search(r"proxy_next_upstream error timeout http_502 http_503;", conf)
