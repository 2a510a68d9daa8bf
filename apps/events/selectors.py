from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Max, Min, QuerySet
from django.utils import timezone

from apps.events import registry
from apps.events.models import Event
from apps.swarm.models import Agent


@dataclass(frozen=True)
class EventFilter:
    # A type, or a whole family: "payment.*".
    event_type: str = ""
    task_id: str = ""
    agent_id: str = ""
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, qs: QuerySet[Event]) -> QuerySet[Event]:
        if registry.is_family_wildcard(self.event_type):
            # The family's registered types, not a prefix match: `IN` reads the (event_type, id) index.
            qs = qs.filter(event_type__in=registry.types_matching(self.event_type))
        elif self.event_type:
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


def event_type_filterable(value: str) -> bool:
    """A registered type, a family (`payment.*`), or a type that only old rows have (so their links still work)."""
    if registry.is_known_event_type(value) or registry.is_family_wildcard(value):
        return True
    return Event.objects.filter(event_type=value).exists()


@dataclass(frozen=True)
class AgentLookup:
    # What events store as agent_id for the value asked for.
    agent_id: str
    # False when the value is neither a number nor an agent's name (it is still tried as a stored id).
    found: bool


def agent_lookup(value: str) -> AgentLookup:
    """An agent filter's value: an id ("4"), or an agent's name in any case ("quill", "Quill")."""
    value = value.strip()
    if not value or value.isdigit():
        return AgentLookup(agent_id=value, found=True)
    pk = Agent.objects.filter(name__iexact=value).values_list("pk", flat=True).first()
    if pk is not None:
        return AgentLookup(agent_id=str(pk), found=True)
    return AgentLookup(agent_id=value, found=False)


def with_agent_names(events: list[Event], names: Mapping[str, str] | None = None) -> list[Event]:
    """Give each event its agent's current name (`agent_name`), for summaries: one query for all of them, none
    when `names` (agent id -> name) is given or no event names an agent."""
    if names is None:
        ids = {int(e.agent_id) for e in events if e.agent_id.isdigit()}
        found = Agent.objects.filter(pk__in=ids).values_list("pk", "name") if ids else []
        names = {str(pk): name for pk, name in found}
    for event in events:
        event.agent_name = names.get(event.agent_id)
    return events


@dataclass(frozen=True)
class EventPage:
    events: list[Event]
    # Pass as before_id to get the next (older) page; None on the last page.
    next_before_id: int | None


def events_page(
    *,
    filters: EventFilter,
    before_id: int | None = None,
    limit: int = 50,
    agent_names: Mapping[str, str] | None = None,
) -> EventPage:
    """Newest first, keyset-paginated on id: the cost of a page does not grow with the size of the log."""
    qs = filters.apply(Event.objects.all())
    if before_id is not None:
        qs = qs.filter(id__lt=before_id)
    rows = list(qs.order_by("-id")[: limit + 1])
    more = len(rows) > limit
    rows = with_agent_names(rows[:limit], agent_names)
    return EventPage(events=rows, next_before_id=rows[-1].id if more and rows else None)


def events_since(*, filters: EventFilter, since_id: int, limit: int = 100) -> list[Event]:
    """Events after since_id, oldest first: what a client that saw since_id has missed."""
    return with_agent_names(list(filters.apply(Event.objects.filter(id__gt=since_id)).order_by("id")[:limit]))


def events_for_task(task_id: object, *, limit: int = 200) -> list[Event]:
    return with_agent_names(list(Event.objects.filter(task_id=str(task_id)).order_by("id")[:limit]))


def events_for_agent(agent_id: object, *, limit: int = 200) -> list[Event]:
    return list(Event.objects.filter(agent_id=str(agent_id)).order_by("-id")[:limit])


def events_summary(*, minutes: int) -> dict[str, int]:
    since = timezone.now() - timedelta(minutes=minutes)
    rows = Event.objects.filter(timestamp__gte=since).values("event_type").annotate(n=Count("id"))
    return {row["event_type"]: row["n"] for row in rows.order_by("event_type")}


def events_latest(*, limit: int = 10, agent_names: Mapping[str, str] | None = None) -> list[Event]:
    return with_agent_names(list(Event.objects.order_by("-id")[:limit]), agent_names)


def events_after(
    after_id: int, *, up_to_id: int | None = None, event_types: frozenset[str] | None = None, limit: int = 500
) -> list[Event]:
    """Events with after_id < id <= up_to_id, oldest first: how the live feed follows and replays the log."""
    qs = Event.objects.filter(id__gt=after_id)
    if up_to_id is not None:
        qs = qs.filter(id__lte=up_to_id)
    if event_types:
        qs = qs.filter(event_type__in=event_types)
    # The names are read here, in the caller's thread: the feed encodes its frames where no query may run.
    return with_agent_names(list(qs.order_by("id")[:limit]))


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
        "agent_name": event.agent_name,
        "timestamp": event.timestamp.isoformat(),
        "data": event.data,
        # The page shows this as it is (static/js/live.js): the one wording of every event, apps.events.registry.
        "summary": event.summary,
    }
