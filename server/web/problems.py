"""RFC 9457 problem details: every error the API returns, with a stable type."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

PROBLEM_JSON = "application/problem+json"


def problem(
    status: int, type_: str, title: str, detail: str | None = None, **extra: Any
) -> web.Response:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=PROBLEM_JSON,
    )


def validation_problem(errors: list[dict[str, str]]) -> web.Response:
    fields = ", ".join(e["field"] or "(document)" for e in errors[:10])
    return problem(
        422,
        "validation_error",
        "The document is not valid",
        f"invalid field(s): {fields}",
        errors=errors,
    )
