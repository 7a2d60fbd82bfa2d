"""The OpenAPI 3.1 description of the relay API, built from the pydantic models."""

from __future__ import annotations

import functools
from typing import Any

from server.connections.model import Connection

_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "description": "Stable cause, e.g. agent_offline"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

_REPLICA = {
    "type": "object",
    "properties": {
        "peer": {"type": "string"},
        "agent_version": {"type": "string"},
        "connected_since": {"type": "string", "format": "date-time"},
        "streams_in_flight": {
            "type": ["integer", "null"],
            "description": "Null for a replica held by another relay of the cluster.",
        },
        "draining": {"type": "boolean"},
        "relay": {
            "type": "string",
            "description": "The advertised SSH address of the relay that holds this tunnel.",
        },
    },
}

_AGENT = {
    "type": "object",
    "required": ["id", "name", "status", "replicas"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "status": {"type": "string", "enum": ["online", "offline"]},
        "created_at": {"type": "string", "format": "date-time"},
        "token_rotated_at": {"type": ["string", "null"], "format": "date-time"},
        "last_seen_at": {"type": ["string", "null"], "format": "date-time"},
        "connected_since": {"type": ["string", "null"], "format": "date-time"},
        "peer": {"type": ["string", "null"]},
        "agent_version": {"type": ["string", "null"]},
        "replicas": {"type": "array", "items": {"$ref": "#/components/schemas/Replica"}},
        "token": {"type": "string", "description": "Only in the create/rotate answers."},
    },
}

_TEST_RESULT = {
    "type": "object",
    "required": ["ok", "status", "elapsed_ms", "message"],
    "properties": {
        "ok": {"type": "boolean"},
        "status": {"type": ["integer", "null"]},
        "elapsed_ms": {"type": "number"},
        "message": {"type": "string"},
    },
}


_GRACE = {
    "type": "object",
    "properties": {"grace_seconds": {"type": "number", "minimum": 0, "maximum": 2592000}},
}

_AUDIT_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "at": {"type": "string", "format": "date-time"},
        "actor": {"type": "string"},
        "action": {"type": "string"},
        "target": {"type": ["string", "null"]},
        "source": {"type": ["string", "null"]},
        "details": {"type": "object"},
    },
}

_CONNECTION_VIEW = {
    "type": "object",
    "description": "A connection as the API shows it: its settings (secrets only as "
    "token_set / {set: true}), plus these fields, which a PATCH ignores.",
    "properties": {
        "id": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "last_test": {"type": ["object", "null"]},
        "status": {
            "type": "string",
            "enum": ["online", "offline", "unknown"],
            "description": "From the latest check (scheduled by http.health, or a Test); "
            "offline at once when an on-premise connection's agent is not connected.",
        },
        "last_checked_at": {"type": ["string", "null"], "format": "date-time"},
        "last_error": {"type": ["string", "null"]},
    },
}

_DEBUG_WINDOW = {
    "type": "object",
    "properties": {
        "connection_id": {"type": "string"},
        "started_at": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"},
        "active": {"type": "boolean"},
    },
}

_DEBUG_ENTRY = {
    "type": "object",
    "description": "One request and its answer; secrets masked as ***.",
    "properties": {
        "id": {"type": "integer"},
        "at": {"type": "string", "format": "date-time"},
        "request": {
            "type": "object",
            "properties": {
                "method": {"type": "string"},
                "relative": {"type": "string"},
                "url": {"type": "string"},
                "headers": {"type": "array", "items": {"type": "array"}},
                "body": {"type": "string", "description": "The first 8 KiB, as text."},
                "body_bytes": {"type": "integer"},
            },
        },
        "answer": {
            "type": ["object", "null"],
            "properties": {
                "status": {"type": "integer"},
                "headers": {"type": "array", "items": {"type": "array"}},
                "body": {"type": "string", "description": "The first 8 KiB, as text."},
                "body_bytes": {"type": "integer"},
            },
        },
        "error": {"type": ["string", "null"]},
        "elapsed_ms": {"type": "number"},
        "retries": {"type": "integer"},
        "sends": {"type": "integer"},
    },
}

_DEBUG_LOG = {
    "type": "object",
    "properties": {
        "window": {"oneOf": [_DEBUG_WINDOW, {"type": "null"}]},
        "active": {"type": "boolean"},
        "entries": {"type": "array", "items": {"$ref": "#/components/schemas/DebugEntry"}},
        "next_before": {"type": ["integer", "null"]},
    },
}


MALFORMED_REQUEST: dict[str, Any] = {
    "description": "The request is not valid HTTP (plain text from the HTTP server)",
}
UNKNOWN_EXPECTATION: dict[str, Any] = {
    "description": "An Expect header other than 100-continue (plain text from the HTTP server)",
}


def _problem_responses(*codes: int) -> dict[str, Any]:
    return {
        str(code): {
            "description": "Problem details",
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
        for code in codes
    }


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


@functools.cache
def openapi_document() -> dict[str, Any]:
    schemas = Connection.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schemas.pop("$defs", {})
    components = {
        "Connection": schemas,
        **defs,
        "Problem": _PROBLEM,
        "Agent": _AGENT,
        "Replica": _REPLICA,
        "TestResult": _TEST_RESULT,
        "AuditEvent": _AUDIT_EVENT,
        "ConnectionView": _CONNECTION_VIEW,
        "DebugEntry": _DEBUG_ENTRY,
    }
    conn_id, agent_id = _path_param("id"), _path_param("agent_id")
    conn_body = {"required": True, "content": {"application/json": {"schema": _ref("Connection")}}}
    any_json = {"type": "object"}
    proxy_op = {
        "summary": "Send a request through the connection; the API's answer is streamed back",
        "parameters": [
            conn_id,
            {"name": "tail", "in": "path", "required": True, "schema": {"type": "string"}},
        ],
        "responses": {
            "default": {
                "description": "The API's own answer, with Sluice-Connection and (for a "
                "connection with http.rate_limit) Sluice-Retries: how many times the relay "
                "sent the request again after a rate limit",
            },
            **_problem_responses(400, 401, 403, 404, 502, 503, 504),
        },
    }
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "Process alive",
                "security": [],
                "responses": {"200": _json(any_json)},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Listening for agents",
                "responses": {
                    "200": _json(any_json),
                    "503": _json(any_json, "Not ready"),
                    **_problem_responses(401),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "text/plain exposition"},
                    **_problem_responses(401),
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _json(any_json), **_problem_responses(401)},
            }
        },
        "/v1/relay": {
            "get": {
                "summary": "The relay's SSH host key fingerprint and version",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "ssh_fingerprint": {"type": "string"},
                                "version": {"type": "string"},
                            },
                        }
                    ),
                    **_problem_responses(401),
                },
            }
        },
        "/v1/cluster": {
            "get": {
                "summary": "The relays of the cluster (live ones) and which one answered",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["relay", "relays"],
                            "properties": {
                                "relay": {"type": "string"},
                                "relays": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "id": {"type": "string"},
                                            "ssh": {"type": "string"},
                                            "started_at": {"type": "string"},
                                            "heartbeat_at": {"type": "string"},
                                            "draining": {"type": "boolean"},
                                        },
                                    },
                                },
                            },
                        }
                    ),
                    **_problem_responses(401),
                },
            }
        },
        "/v1/agents": {
            "get": {
                "summary": "List agents with live status",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"agents": {"type": "array", "items": _ref("Agent")}},
                        }
                    ),
                    **_problem_responses(401),
                },
            },
            "post": {
                "summary": "Create an agent (its token is shown once)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string", "minLength": 1, "maxLength": 200}
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json(_ref("Agent"), "Created"),
                    **_problem_responses(400, 401, 422),
                },
            },
        },
        "/v1/agents/{agent_id}": {
            "get": {
                "parameters": [agent_id],
                "responses": {"200": _json(_ref("Agent")), **_problem_responses(401, 404)},
            },
            "delete": {
                "parameters": [agent_id],
                "responses": {
                    "204": {"description": "Deleted; live tunnels closed"},
                    **_problem_responses(401, 404, 409),
                },
            },
        },
        "/v1/agents/{agent_id}/rotate-token": {
            "post": {
                "parameters": [agent_id],
                "summary": "New token; the old one stops at once, or after grace_seconds",
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _GRACE}},
                },
                "responses": {"200": _json(any_json), **_problem_responses(400, 401, 404, 422)},
            }
        },
        "/v1/admin/rotate-token": {
            "post": {
                "summary": "New admin token; the old one works for grace_seconds more",
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _GRACE}},
                },
                "responses": {"200": _json(any_json), **_problem_responses(400, 401, 409, 422)},
            }
        },
        "/v1/audit": {
            "get": {
                "summary": "Audit trail, newest first (who, what, when, from where)",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer"},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "events": {"type": "array", "items": _ref("AuditEvent")}
                            },
                        }
                    ),
                    **_problem_responses(401, 422),
                },
            }
        },
        "/v1/connections": {
            "get": {
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"connections": {"type": "array", "items": any_json}},
                        }
                    ),
                    **_problem_responses(401),
                }
            },
            "post": {
                "requestBody": conn_body,
                "responses": {
                    "201": _json(any_json, "Created (secrets omitted)"),
                    **_problem_responses(400, 401, 422),
                },
            },
        },
        "/v1/connections/import": {
            "post": {
                "summary": "Create a connection from an integrator.io HTTP connection export",
                "description": "Answers the created connection and every field not carried "
                "over, with the reason. An unsupported auth type (wsse, jwt, oauth1, the "
                "authorization-code grant) is a 422 naming it.",
                "parameters": [
                    {
                        "name": "agent_id",
                        "in": "query",
                        "required": False,
                        "description": "The Sluice agent to use (on-premise); required when "
                        "the export has an _agentId",
                        "schema": {"type": "string", "pattern": "^agt_[a-z0-9]+$"},
                    },
                    {
                        "name": "dry_run",
                        "in": "query",
                        "required": False,
                        "description": "true: answer 200 with the preview, create nothing",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": any_json}},
                },
                "responses": {
                    "201": _json(
                        {
                            "type": "object",
                            "required": ["connection", "unmapped"],
                            "properties": {
                                "connection": any_json,
                                "unmapped": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["field", "reason"],
                                        "properties": {
                                            "field": {"type": "string"},
                                            "reason": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                        "Created (secrets omitted), with the fields not carried over",
                    ),
                    "200": _json(any_json, "The preview (dry_run=true): nothing created"),
                    **_problem_responses(400, 401, 422),
                },
            }
        },
        "/v1/connections/test": {
            "post": {
                "summary": "Test unsaved settings",
                "requestBody": conn_body,
                "responses": {
                    "200": _json(_ref("TestResult")),
                    **_problem_responses(400, 401, 422),
                },
            }
        },
        "/v1/connections/{id}": {
            "get": {
                "parameters": [conn_id],
                "responses": {"200": _json(_ref("ConnectionView")), **_problem_responses(401, 404)},
            },
            "patch": {
                "parameters": [conn_id],
                "summary": "Merge patch; omitted secrets are kept",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": any_json}},
                },
                "responses": {"200": _json(any_json), **_problem_responses(400, 401, 404, 422)},
            },
            "delete": {
                "parameters": [conn_id],
                "responses": {"204": {"description": "Deleted"}, **_problem_responses(401, 404)},
            },
        },
        "/v1/connections/{id}/test": {
            "post": {
                "parameters": [conn_id],
                "responses": {"200": _json(_ref("TestResult")), **_problem_responses(401, 404)},
            }
        },
        "/v1/connections/{id}/debug": {
            "post": {
                "summary": "Record the connection's requests and answers for N minutes",
                "parameters": [conn_id],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "minutes": {
                                        "type": "number",
                                        "exclusiveMinimum": 0,
                                        "maximum": 60,
                                        "default": 15,
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(_DEBUG_WINDOW),
                    **_problem_responses(400, 401, 404, 422),
                },
            },
            "delete": {
                "summary": "Stop recording now (the log is kept for the retention period)",
                "parameters": [conn_id],
                "responses": {"200": _json(_DEBUG_WINDOW), **_problem_responses(401, 404)},
            },
        },
        "/v1/connections/{id}/debug-log": {
            "get": {
                "summary": "The connection's debug log, newest first",
                "parameters": [
                    conn_id,
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                "responses": {"200": _json(_DEBUG_LOG), **_problem_responses(401, 404, 422)},
            }
        },
        "/v1/connections/{id}/traffic": {
            "get": {
                "summary": "The last hour, minute by minute, over every relay of a cluster",
                "description": "In a cluster the answering relay asks the other live relays "
                "(cluster_query_timeout) and sums their minutes; `relays` says which answered. "
                "`scope=relay`: this relay's own minutes with their kept latency samples.",
                "parameters": [
                    conn_id,
                    {
                        "name": "scope",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["cluster", "relay"]},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "minutes": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "minute": {"type": "string", "format": "date-time"},
                                            "requests": {"type": "integer"},
                                            "errors": {"type": "integer"},
                                            "p50_ms": {"type": ["number", "null"]},
                                            "p99_ms": {"type": ["number", "null"]},
                                        },
                                    },
                                },
                                "relays": {
                                    "type": "array",
                                    "description": "In a cluster: every live relay, and "
                                    "whether it answered in time (its minutes are counted).",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "id": {"type": "string"},
                                            "ssh": {"type": "string"},
                                            "answered": {"type": "boolean"},
                                        },
                                    },
                                },
                            },
                        }
                    ),
                    **_problem_responses(401, 404, 422),
                },
            }
        },
        "/v1/connections/{id}/proxy/{tail}": {
            method: proxy_op for method in ("get", "post", "put", "patch", "delete", "head")
        },
    }
    # Any request can be malformed at the HTTP level (a bad Content-Length, say);
    # aiohttp answers those with a plain-text 400 before any route runs, and an
    # expectation it cannot meet (RFC 9110 10.1.1) with a plain-text 417.
    for operations in paths.values():
        for operation in operations.values():
            operation["responses"].setdefault("400", MALFORMED_REQUEST)
            operation["responses"].setdefault("417", UNKNOWN_EXPECTATION)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sluice relay API", "version": "1"},
        "components": {
            "schemas": components,
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"admin": []}],
        "paths": paths,
    }
