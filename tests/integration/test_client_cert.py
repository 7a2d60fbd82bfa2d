"""Client certificates against nginx with ``ssl_verify_client on`` and a CA
made in the test (trustme): PEM and PFX, cloud and through the tunnel."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.conftest import AgentFactory
from tests.support.capture import APIClient, remember_secret
from tests.support.daemons import Daemon, nginx_command, run_daemon

PASSPHRASE = "pp-" + "Cl1ent" * 4


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def mtls_nginx(tmp_path: Path, client_ca: trustme.CA) -> AsyncIterator[Daemon]:
    workdir = tmp_path / "nginx"
    (workdir / "www" / "api").mkdir(parents=True)
    (workdir / "www" / "api" / "items.json").write_text('{"items": [1, 2, 3]}')
    server_cert = client_ca.issue_cert("127.0.0.1", "localhost")
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(workdir / "server.pem"))
    client_ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    block = """
        ssl_certificate {dir}/server.pem;
        ssl_certificate_key {dir}/server.pem;
        ssl_client_certificate {dir}/ca.pem;
        ssl_verify_client on;
        root {dir}/www;
    """
    async with run_daemon(workdir, nginx_command(workdir, block)) as daemon:
        yield daemon


def pem_identity(ca: trustme.CA) -> dict[str, str]:
    leaf = ca.issue_cert("sluice-client@example.com")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE.encode()),
    ).decode()
    remember_secret(encrypted, leaf.private_key_pem.bytes().decode(), PASSPHRASE)
    return {
        "cert_pem": leaf.cert_chain_pems[0].bytes().decode(),
        "key_pem": encrypted,
        "passphrase": PASSPHRASE,
    }


def pfx_identity(ca: trustme.CA) -> dict[str, str]:
    leaf = ca.issue_cert("sluice-client@example.com")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    pfx = pkcs12.serialize_key_and_certificates(
        b"client",
        key,  # type: ignore[arg-type]
        cert,
        None,
        serialization.BestAvailableEncryption(PASSPHRASE.encode()),
    )
    encoded = base64.b64encode(pfx).decode()
    remember_secret(encoded, leaf.private_key_pem.bytes().decode(), PASSPHRASE)
    return {"pfx_base64": encoded, "passphrase": PASSPHRASE}


def cert_doc(
    daemon: Daemon, ca: trustme.CA, identity: dict[str, str] | None, agent_id: str | None
) -> dict[str, Any]:
    tls: dict[str, Any] = {"ca_bundle_pem": ca.cert_pem.bytes().decode()}
    if identity is not None:
        tls["client_certificate"] = identity
    return {
        "name": "mTLS API",
        "mode": "on_premise" if agent_id else "cloud",
        "agent_id": agent_id,
        "http": {
            "base_uri": f"{daemon.base('https')}/api",
            "auth": {"type": "none"},
            "tls": tls,
            "ping": {"relative_uri": "/items.json"},
        },
    }


async def _check(client: APIClient, daemon: Daemon, ca: trustme.CA, agent_id: str | None) -> None:
    for identity in (pem_identity(ca), pfx_identity(ca)):
        created = await client.call(
            "POST", "/v1/connections", json_body=cert_doc(daemon, ca, identity, agent_id)
        )
        assert created.status == 201, created.text
        shown = created.body["http"]["tls"]["client_certificate"]
        assert shown["passphrase_set"] is True
        assert "key_pem" not in shown
        assert "pfx_base64" not in shown
        answer = await client.call("GET", f"/v1/connections/{created.body['id']}/proxy/items.json")
        assert answer.status == 200, answer.text
        assert answer.body == {"items": [1, 2, 3]}
    without = await client.call(
        "POST", "/v1/connections", json_body=cert_doc(daemon, ca, None, agent_id)
    )
    answer = await client.call("GET", f"/v1/connections/{without.body['id']}/proxy/items.json")
    assert answer.status == 400  # nginx: "No required SSL certificate was sent"
    assert "No required SSL certificate" in answer.text


async def test_client_certificate_cloud(
    open_client: APIClient, mtls_nginx: Daemon, client_ca: trustme.CA
) -> None:
    await _check(open_client, mtls_nginx, client_ca, None)


async def test_client_certificate_through_the_tunnel(
    client: APIClient, mtls_nginx: Daemon, client_ca: trustme.CA, start_agent: AgentFactory
) -> None:
    _, agent = await start_agent([f"127.0.0.1:{mtls_nginx.port}"])
    await _check(client, mtls_nginx, client_ca, agent.agent_id)


async def test_bad_certificate_or_key_is_a_422_naming_the_field(
    client: APIClient, mtls_nginx: Daemon, client_ca: trustme.CA
) -> None:
    identity = pem_identity(client_ca)
    other = pem_identity(client_ca)
    base = "http.tls.client_certificate."
    cases = [
        ({**identity, "key_pem": other["key_pem"]}, base + "key_pem"),
        ({**identity, "cert_pem": "not a cert"}, base + "cert_pem"),
        (
            {**identity, "passphrase": "wrong-" + PASSPHRASE},
            "http.tls.client_certificate.passphrase",
        ),
        ({"pfx_base64": "bm90IGEgcGZ4"}, base + "pfx_base64"),
    ]
    remember_secret("wrong-" + PASSPHRASE)
    for bad, field in cases:
        answer = await client.call(
            "POST", "/v1/connections", json_body=cert_doc(mtls_nginx, client_ca, bad, None)
        )
        assert answer.status == 422, answer.text
        fields = {p["field"] for p in answer.body["errors"]}
        assert field in fields, answer.text
