"""What the API shows of a connection's health: status, last check, last error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from server.storage.health import HealthRecord

Status = Literal["online", "offline", "unknown"]


def agent_offline_reason(agent_id: str) -> str:
    return f"agent_offline: agent {agent_id} is not connected; start it or check its log"


def health_view(
    mode: str,
    agent_id: str | None,
    record: HealthRecord | None,
    agent_online: Callable[[str], bool] | None,
) -> dict[str, Any]:
    """``status``, ``last_checked_at``, ``last_error`` for the API.

    An on-premise connection whose agent is not connected is offline at
    once, whatever its last check said: nothing can reach its API.
    """
    view: dict[str, Any] = {
        "status": record.status if record is not None else "unknown",
        "last_checked_at": record.last_checked_at.isoformat() if record is not None else None,
        "last_error": record.last_error if record is not None else None,
    }
    if mode == "on_premise" and agent_id and agent_online and not agent_online(agent_id):
        view["status"] = "offline"
        view["last_error"] = agent_offline_reason(agent_id)
    return view


def is_up(
    mode: str,
    agent_id: str | None,
    record: HealthRecord | None,
    agent_online: Callable[[str], bool] | None,
) -> bool:
    status: str = health_view(mode, agent_id, record, agent_online)["status"]
    return status == "online"
