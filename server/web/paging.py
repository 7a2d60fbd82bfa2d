"""``?limit=&before=`` on the API's paged lists (audit trail, debug log)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from server.web.problems import validation_problem


def page_query(
    query: Mapping[str, str], *, default: int, maximum: int, item: str
) -> tuple[int, int | None] | web.Response:
    """The page size and the id to page back from, or a validation problem
    naming each bad parameter. *item* names what the ids count ("an event")."""
    problems = []
    limit, before = default, None
    try:
        limit = min(max(int(query.get("limit", str(default))), 1), maximum)
    except ValueError:
        problems.append({"field": "limit", "message": f"an integer from 1 to {maximum}"})
    if "before" in query:
        try:
            before = int(query["before"])
        except ValueError:
            before = -1
        if not 0 <= before < 2**63:
            problems.append({"field": "before", "message": f"{item} id (a positive integer)"})
    if problems:
        return validation_problem(problems)
    return limit, before
