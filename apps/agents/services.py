import time
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from apps.agents.tools import TOOLS
from apps.events.models import EventType
from apps.events.services import log_event


class ToolNotFound(LookupError):
    pass


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    value: Any
    error: str
    duration_ms: float


def tool_run(
    *, name: str, arguments: dict[str, Any], source: str, agent_id: object = None, task_id: object = None
) -> ToolResult:
    """Run a tool for an agent, between a tool.called and a tool.completed event.

    A tool that raises is reported as a failed result (the agent sees the error), not re-raised.
    """
    tool = TOOLS.get(name)
    if tool is None:
        raise ToolNotFound(f"No tool named {name!r}. Tools: {', '.join(sorted(TOOLS))}.")
    with transaction.atomic():
        log_event(
            EventType.TOOL_CALLED,
            source=source,
            agent_id=agent_id,
            task_id=task_id,
            data={"tool": name, "arguments": arguments},
        )
    started = time.monotonic()
    try:
        value, error = tool.func(**arguments), ""
    except Exception as exc:  # the tool's failure is the agent's information, and it is logged below
        value, error = None, f"{type(exc).__name__}: {exc}"
    duration_ms = round((time.monotonic() - started) * 1000, 2)
    with transaction.atomic():
        log_event(
            EventType.TOOL_COMPLETED,
            source=source,
            agent_id=agent_id,
            task_id=task_id,
            data={"tool": name, "ok": not error, "error": error, "duration_ms": duration_ms},
        )
    return ToolResult(ok=not error, value=value, error=error, duration_ms=duration_ms)
