from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Max, Min, QuerySet
from django.utils import timezone

from apps.events.models import Event


@dataclass(frozen=True)
class EventFilter:
    event_type: str = ""
    task_id: str = ""
    agent_id: str = ""
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, qs: QuerySet[Event]) -> QuerySet[Event]:
        if self.event_type:
            qs = qs.filter(event_type=self.event_type)
        if self.task_id:
            qs = qs.filter(task_id=self.task_id)
        if self.agent_id:
            qs = qs.filter(agent_id=self.agent_id)
        if self.since:
            qs = qs.filter(timestamp__gte=self.since)
        if self.until:
            qs = qs.filter(timestamp__lt=self.until)
        return qs


@dataclass(frozen=True)
class EventPage:
    events: list[Event]
    # Pass as before_id to get the next (older) page; None on the last page.
    next_before_id: int | None


def events_page(*, filters: EventFilter, before_id: int | None = None, limit: int = 50) -> EventPage:
    """Newest first, keyset-paginated on id: the cost of a page does not grow with the size of the log."""
    qs = filters.apply(Event.objects.all())
    if before_id is not None:
        qs = qs.filter(id__lt=before_id)
    rows = list(qs.order_by("-id")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return EventPage(events=rows, next_before_id=rows[-1].id if more and rows else None)


def events_since(*, filters: EventFilter, since_id: int, limit: int = 100) -> list[Event]:
    """Events after since_id, oldest first: what a client that saw since_id has missed."""
    return list(filters.apply(Event.objects.filter(id__gt=since_id)).order_by("id")[:limit])


def events_for_task(task_id: object, *, limit: int = 200) -> list[Event]:
    return list(Event.objects.filter(task_id=str(task_id)).order_by("id")[:limit])


def events_for_agent(agent_id: object, *, limit: int = 200) -> list[Event]:
    return list(Event.objects.filter(agent_id=str(agent_id)).order_by("-id")[:limit])


def events_summary(*, minutes: int) -> dict[str, int]:
    since = timezone.now() - timedelta(minutes=minutes)
    rows = Event.objects.filter(timestamp__gte=since).values("event_type").annotate(n=Count("id"))
    return {row["event_type"]: row["n"] for row in rows.order_by("event_type")}


def events_latest(*, limit: int = 10) -> list[Event]:
    return list(Event.objects.order_by("-id")[:limit])


def events_after(
    after_id: int, *, up_to_id: int | None = None, event_types: frozenset[str] | None = None, limit: int = 500
) -> list[Event]:
    """Events with after_id < id <= up_to_id, oldest first: how the live feed follows and replays the log."""
    qs = Event.objects.filter(id__gt=after_id)
    if up_to_id is not None:
        qs = qs.filter(id__lte=up_to_id)
    if event_types:
        qs = qs.filter(event_type__in=event_types)
    return list(qs.order_by("id")[:limit])


def event_count_between(
    after_id: int, before_id: int, *, event_types: frozenset[str] | None = None
) -> tuple[int, int | None, int | None]:
    """How many events lie strictly between two ids, with the first and last of them."""
    qs = Event.objects.filter(id__gt=after_id, id__lt=before_id)
    if event_types:
        qs = qs.filter(event_type__in=event_types)
    stats = qs.aggregate(n=Count("id"), first=Min("id"), last=Max("id"))
    return stats["n"], stats["first"], stats["last"]


def event_id_before_newest(
    after_id: int, up_to_id: int, *, keep: int, event_types: frozenset[str] | None = None
) -> int | None:
    """The id of the `keep`-th newest event in (after_id, up_to_id], or None when there are fewer."""
    qs = Event.objects.filter(id__gt=after_id, id__lte=up_to_id)
    if event_types:
        qs = qs.filter(event_type__in=event_types)
    return qs.order_by("-id").values_list("id", flat=True)[keep - 1 : keep].first()


def event_latest_id() -> int:
    return Event.objects.order_by("-id").values_list("id", flat=True).first() or 0


def event_payload(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "event_type": event.event_type,
        "source": event.source,
        "task_id": event.task_id,
        "agent_id": event.agent_id,
        "timestamp": event.timestamp.isoformat(),
        "data": event.data,
    }
