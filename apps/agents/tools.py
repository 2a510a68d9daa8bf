"""The tools agents may call. Each takes keyword arguments and returns something JSON-serialisable."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apps.core.selectors import workers_alive_count
from apps.events.selectors import events_summary
from apps.swarm.models import Agent
from apps.swarm.selectors import task_counts


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    func: Callable[..., Any]


def swarm_status() -> dict[str, Any]:
    return {
        "tasks": task_counts(),
        "agents_online": Agent.objects.exclude(status=Agent.Status.OFFLINE).count(),
        "workers_alive": workers_alive_count(),
    }


def recent_activity(minutes: int = 60) -> dict[str, Any]:
    minutes = max(1, min(int(minutes), 60 * 24 * 7))
    return {"minutes": minutes, "counts": events_summary(minutes=minutes)}


TOOLS = {
    tool.name: tool
    for tool in [
        Tool("swarm_status", "Tasks by status, agents online and live workers.", swarm_status),
        Tool("recent_activity", "How many events of each type in the last N minutes (minutes=60).", recent_activity),
    ]
}
