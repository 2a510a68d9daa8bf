from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError

from apps.core.api_contract import ID_MAX, errors
from apps.core.auth import require_staff
from apps.events import registry
from apps.events.selectors import EventFilter, agent_lookup, events_page, events_since, events_summary

router = Router(tags=["events"])


class EventOut(Schema):
    id: int
    event_type: str
    source: str
    task_id: str
    agent_id: str
    agent_name: str | None = Field(None, description="The agent's name, when agent_id is an agent's.")
    timestamp: datetime
    data: dict[str, Any]
    summary: str = Field(..., description="What happened, in one line of plain text (the pages' wording).")


class EventsOut(Schema):
    events: list[EventOut]
    next_before_id: int | None = Field(None, description="Pass as before_id for the next, older page.")


class EventsQuery(Schema):
    event_type: str = Field(
        "",
        max_length=64,
        description="A type (`payment.settled`) or a family (`payment.*`).",
        # The registry's types and families, so the contract says which values are accepted (any other is a 422).
        json_schema_extra={
            "enum": ["", *sorted(registry.KINDS), *(f"{f}{registry.FAMILY_WILDCARD}" for f in registry.FAMILIES)]
        },
    )
    task_id: str = Field("", max_length=64)
    agent_id: str = Field("", max_length=64, description="An agent's id, or its name in any case.")
    since_id: int | None = Field(None, ge=0, le=ID_MAX, description="Events after this id, oldest first (for polling).")
    before_id: int | None = Field(None, ge=1, le=ID_MAX, description="Events before this id, newest first (paging).")
    limit: int = Field(50, ge=1, le=500)


class SummaryOut(Schema):
    minutes: int
    total: int
    counts: dict[str, int]


@router.get("", response={200: EventsOut, **errors()}, summary="List events")
def list_events(request: HttpRequest, q: Query[EventsQuery]) -> dict[str, Any]:
    require_staff(request)
    event_type = q.event_type
    if event_type and not registry.is_listed(event_type):
        raise HttpError(422, f"Unknown event type {event_type!r}: use a type or a family such as 'payment.*'.")
    filters = EventFilter(event_type=event_type, task_id=q.task_id, agent_id=agent_lookup(q.agent_id).agent_id)
    if q.since_id is not None:
        return {"events": events_since(filters=filters, since_id=q.since_id, limit=q.limit), "next_before_id": None}
    page = events_page(filters=filters, before_id=q.before_id, limit=q.limit)
    return {"events": page.events, "next_before_id": page.next_before_id}


@router.get("/summary", response={200: SummaryOut, **errors()}, summary="Event counts per type over the last N minutes")
def summary(request: HttpRequest, minutes: int = Query(60, ge=1, le=60 * 24 * 31)) -> dict[str, Any]:
    require_staff(request)
    counts = events_summary(minutes=minutes)
    return {"minutes": minutes, "total": sum(counts.values()), "counts": counts}
