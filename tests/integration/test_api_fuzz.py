"""Schemathesis against a live relay's own /v1/openapi.json, with the admin token.

For every operation in the document the relay serves, schemathesis generates
requests (schema-valid ones, then schema-violating ones) and each answer is
checked:

- no 5xx;
- the answer conforms to the document (status code, content type, body
  schema), and a request whose body violates the schema is refused;
- every 4xx the relay itself produces is ``application/problem+json`` with a
  ``type``; a ``validation_error`` lists its problems, each naming its field;
- no secret registered during the run (admin token, agent tokens, every
  connection secret the fuzzer sent) is in any answer, nor in the relay's
  log (the autouse ``no_secret_leaks`` check).

The requests never leave this machine: the only connection that can be
tested or proxied points at a local recorder through a real agent whose
allowlist holds that one port, unsaved connections sent to the test endpoint
are pointed there too, and the relay's cloud mode is fenced off (any attempt
is recorded and fails the test).

Examples per operation: ``POSITIVE_EXAMPLES`` (25) schema-valid plus
``NEGATIVE_EXAMPLES`` (25) schema-violating, the latter only for operations
that take parameters or a body: 24 operations today, ~1,000 requests, ~16 s
of fuzzing on 2 cores (~21 s for the file). Schemathesis runs in a worker
thread (it sends with requests, which blocks) while the relay serves from
the test's event loop, so the relay's own log lines reach the leak check.

Bugs it found have their own regression tests at the end of this file. A
new one gets a strict-xfail test there, and the fuzzer is steered around it
(in ``_strategy``'s rewrite) until it is fixed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from yarl import URL

from server.relay import Relay
from tests.conftest import AgentFactory
from tests.support.capture import RESPONSES, APIClient, remember_secret
from tests.support.recorder import Recorder, serve_recorder

POSITIVE_EXAMPLES = 25
NEGATIVE_EXAMPLES = 25
# Answers that carry a token on purpose (shown once): left out of the leak
# check for that token only.
_SHOWS_TOKEN = {
    ("POST", "/v1/agents"),
    ("POST", "/v1/agents/{agent_id}/rotate-token"),
    ("POST", "/v1/admin/rotate-token"),
}
_ADMIN_ROTATE = ("POST", "/v1/admin/rotate-token")


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    async for running in serve_recorder():
        yield running


@dataclass
class Seeds:
    """Objects that exist before fuzzing, so path parameters can hit them.

    The *target* connection is the only one that is ever tested or proxied
    (it points at the recorder through the target agent); the *victim*
    agent and connection are only read, patched, rotated and deleted.
    """

    target_agent: str
    target_connection: str
    victim_agent: str
    victim_connection: str
    recorder_base: str


@dataclass
class Findings:
    """Everything that went wrong, by operation (reported all at once)."""

    admin_token: str
    failures: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    tokens_shown: set[str] = field(default_factory=set)
    secrets: set[str] = field(default_factory=set)
    cloud_attempts: list[str] = field(default_factory=list)


# -- rewriting generated requests ---------------------------------------------


def _marker() -> str:
    return "fzsec" + secrets.token_hex(8)


def _mark_secrets(body: Any, findings: Findings) -> None:
    """Prefix every secret the fuzzer sends with a unique marker to look for.

    The rest of the value (control characters included) is kept, so the
    relay's validation still sees what the fuzzer made.
    """
    if not isinstance(body, dict) or not isinstance(body.get("http"), dict):
        return
    http = body["http"]
    auth = http.get("auth")
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        marker = _marker()
        auth["token"] = marker + auth["token"]
        findings.secrets.add(marker)
    encrypted = http.get("encrypted")
    if isinstance(encrypted, dict):
        for key, value in list(encrypted.items()):
            if isinstance(value, str):
                marker = _marker()
                encrypted[key] = marker + value
                findings.secrets.add(marker)


def _fence(body: Any, seeds: Seeds) -> None:
    """An unsaved connection sent to the test endpoint goes to the recorder only."""
    if not isinstance(body, dict):
        return
    body["mode"] = "on_premise"
    body["agent_id"] = seeds.target_agent
    if isinstance(body.get("http"), dict):
        body["http"]["base_uri"] = seeds.recorder_base


def _strategy(
    operation: Any, mode: GenerationMode, seeds: Seeds, findings: Findings
) -> st.SearchStrategy[Any]:
    method = operation.method.upper()
    path = operation.path
    # Path parameters: random ones (404s) or the seeded objects this operation may touch.
    fixed: list[dict[str, str]] = []
    if "{agent_id}" in path:
        fixed.append({"agent_id": seeds.victim_agent})
    elif "{id}" in path:
        if path.endswith(("/test", "/proxy/{tail}")):
            fixed.append({"id": seeds.target_connection})
        else:
            fixed.append({"id": seeds.victim_connection})
    options = [operation.as_strategy(generation_mode=mode)]
    options += [operation.as_strategy(generation_mode=mode, path_parameters=p) for p in fixed]

    def rewrite(case: Any) -> Any:
        if path == "/v1/connections/test":
            _fence(case.body, seeds)
        if method in ("POST", "PATCH"):
            _mark_secrets(case.body, findings)
        return case

    return st.one_of(options).map(rewrite)


# -- checking answers ------------------------------------------------------------


def _header(response: schemathesis.Response, name: str) -> str | None:
    values = response.headers.get(name.lower())
    return values[0] if values else None


def _check_problem(case: Any, response: schemathesis.Response) -> None:
    status = response.status_code
    if status < 400 or _header(response, "Sluice-Connection") is not None:
        return  # success, or the API's own answer relayed through the proxy route
    content_type = _header(response, "Content-Type") or ""
    assert content_type.startswith("application/problem+json"), (
        f"{status} answered with Content-Type {content_type!r}: {response.text[:200]}"
    )
    if case.method.upper() == "HEAD":
        return  # no body to read
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("type"), str), body
    assert body["type"], body
    assert body.get("status") == status, body
    if body["type"] == "validation_error":
        errors = body.get("errors")
        assert isinstance(errors, list), body
        assert errors, body
        for error in errors:
            assert isinstance(error.get("field"), str), body
            assert isinstance(error.get("message"), str), body
            assert error["message"], body
            if isinstance(case.body, dict) and "" not in case.body:
                assert error["field"], f"a validation error names no field: {body}"


def _check_secrets(operation: Any, response: schemathesis.Response, findings: Findings) -> None:
    key = (operation.method.upper(), operation.path)
    shows_token = key in _SHOWS_TOKEN
    token = None
    if shows_token and response.status_code in (200, 201):
        token = response.json().get("token")
        if isinstance(token, str):
            findings.tokens_shown.add(token)
            remember_secret(token)
            if key == _ADMIN_ROTATE:
                findings.admin_token = token  # the old one may stop at once
    text = response.text + json.dumps(dict(response.headers))
    for secret in findings.secrets | findings.tokens_shown:
        if secret != token:
            assert secret not in text, f"secret {secret[:8]}… in an answer: {text[:300]}"
    if not shows_token:
        RESPONSES.append(text)  # the autouse check looks again, for every secret


def _rejection(case: Any) -> list[Any]:
    """negative_data_rejection, where the only schema violation is in the body.

    A server may ignore unknown query parameters, and the fuzzer cannot know
    that the Authorization header is always added; the test endpoint's body
    is rewritten (see _fence), which may make it valid again.
    """
    meta = case.meta
    if meta is None or case.operation.path == "/v1/connections/test":
        return []
    negative = {loc for loc, info in meta.components.items() if info.mode.is_negative}
    return [negative_data_rejection] if negative == {ParameterLocation.BODY} else []


def _fuzz(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    base: str,
    seeds: Seeds,
    findings: Findings,
) -> None:
    """Run one operation's examples (in a worker thread: requests is blocking)."""
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    session = requests.Session()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=_strategy(operation, mode, seeds, findings))
    def run(case: Any) -> None:
        headers = {"Authorization": f"Bearer {findings.admin_token}"}
        response = case.call(base_url=base, session=session, headers=headers, timeout=20)
        findings.requests += 1
        findings.statuses[response.status_code] = findings.statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=checks + _rejection(case), headers=headers)
        _check_problem(case, response)
        _check_secrets(operation, response, findings)

    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is the latter
        label = f"{mode.value} {operation.method.upper()} {operation.path}"
        findings.failures[label] = f"{type(exc).__name__}: {exc}"[:3000]
    finally:
        session.close()


# -- the test ----------------------------------------------------------------------


def _fence_cloud(relay: Relay, findings: Findings) -> None:
    """Cloud mode must not be reachable from the fuzzer: record and refuse."""
    from server.proxy.cloud_http import DestinationForbidden

    def refuse(url: URL) -> None:
        findings.cloud_attempts.append(str(url.host))
        raise DestinationForbidden("fenced off by test_api_fuzz")

    relay.cloud_http.check = refuse  # type: ignore[method-assign]


async def _seed(relay: Relay, recorder: Recorder, start_agent: AgentFactory) -> Seeds:
    _, token = await start_agent([f"127.0.0.1:{recorder.port}"])
    victim, victim_token = await relay.store.create_agent("victim")
    remember_secret(str(victim_token))
    async with aiohttp.ClientSession() as http:
        client = APIClient(http, relay.http_base, relay.admin_token)

        async def create(doc: dict[str, Any]) -> str:
            answer = await client.call("POST", "/v1/connections", json_body=doc)
            assert answer.status == 201, answer.text
            return str(answer.body["id"])

        target_token, victim_secret = _marker(), _marker()
        remember_secret(target_token, victim_secret)
        target = await create(
            {
                "name": "fuzz target",
                "mode": "on_premise",
                "agent_id": token.agent_id,
                "http": {
                    "base_uri": recorder.base + "/api",
                    "auth": {"token": target_token},
                    "ping": {
                        "relative_uri": "/health",
                        "success_path": "ok",
                        "success_values": ["true"],
                    },
                },
            }
        )
        victim_conn = await create(
            {
                "name": "fuzz victim",
                "mode": "on_premise",
                "agent_id": victim.id,
                "http": {
                    "base_uri": "https://victim.invalid/api",
                    "encrypted": {"password": victim_secret},
                },
            }
        )
    return Seeds(token.agent_id, target, victim.id, victim_conn, recorder.base)


def _can_be_invalid(operation: Any) -> bool:
    """Whether there is anything (parameters, body) a request could get wrong."""
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))


def _operations(document: dict[str, Any]) -> list[Any]:
    schema = schemathesis.openapi.from_dict(document)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the relay's OpenAPI document is invalid: {result}"
        operations.append(result.ok())
    # Deleting goes last, so the seeded objects live through the other operations.
    return sorted(operations, key=lambda op: op.method.upper() == "DELETE")


@pytest.mark.timeout(120)
async def test_openapi_operations_hold_up_under_fuzzing(
    relay: Relay, recorder: Recorder, start_agent: AgentFactory
) -> None:
    findings = Findings(admin_token=relay.admin_token)
    _fence_cloud(relay, findings)
    seeds = await _seed(relay, recorder, start_agent)
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            relay.http_base + "/v1/openapi.json",
            headers={"Authorization": f"Bearer {relay.admin_token}"},
        ) as resp,
    ):
        assert resp.status == 200
        document = await resp.json()
    operations = _operations(document)
    assert len(operations) >= 20, [op.label for op in operations]
    loop = asyncio.get_running_loop()
    began = loop.time()
    for mode, examples in (
        (GenerationMode.POSITIVE, POSITIVE_EXAMPLES),
        (GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES),
    ):
        for operation in operations:
            if mode is GenerationMode.NEGATIVE and not _can_be_invalid(operation):
                continue
            await asyncio.to_thread(
                _fuzz,
                operation,
                mode,
                examples,
                relay.http_base,
                seeds,
                findings,
            )
    elapsed = loop.time() - began
    print(
        f"\nfuzzed {len(operations)} operations: {findings.requests} requests in "
        f"{elapsed:.1f} s; statuses {dict(sorted(findings.statuses.items()))}; "
        f"recorder saw {len(recorder.requests)} requests"
    )
    for secret in findings.secrets:
        remember_secret(secret)
    assert not findings.cloud_attempts, findings.cloud_attempts
    # The proxy and test routes really reached the API (not only 404s).
    assert recorder.requests, "no fuzzed request ever reached the test API"
    report = "\n\n".join(f"{label}:\n{text}" for label, text in findings.failures.items())
    assert not findings.failures, f"{len(findings.failures)} operation(s) failed:\n{report}"


# -- what the fuzzer found (fixed; kept as regression tests) --------------------------


async def test_audit_paging_beyond_64_bits_is_refused(client: APIClient) -> None:
    for before in (2**63, -(2**63) - 1, 10**30):
        answer = await client.call("GET", f"/v1/audit?before={before}")
        assert answer.status == 422, (before, answer.status, answer.text)
        assert [e["field"] for e in answer.body["errors"]] == ["before"]


async def test_audit_bad_before_is_reported_on_before(client: APIClient) -> None:
    answer = await client.call("GET", "/v1/audit?before=abc")
    assert answer.status == 422
    assert [e["field"] for e in answer.body["errors"]] == ["before"]


async def test_an_unknown_expectation_gets_a_documented_417(client: APIClient) -> None:
    answer = await client.call(
        "DELETE", "/v1/agents/agt_nosuchagent0000", headers={"Expect": "{7_v"}
    )
    assert answer.status == 417, (answer.status, answer.text)
    spec = (await client.call("GET", "/v1/openapi.json")).body
    for operations in spec["paths"].values():
        for operation in operations.values():
            assert "417" in operation["responses"]
