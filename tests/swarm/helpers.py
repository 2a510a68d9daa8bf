from datetime import datetime, timedelta

from apps.events.models import Event
from apps.swarm.models import Task


def after_auction(task: Task) -> datetime:
    """A moment just after the task's auction closes."""
    assert task.auction_closes_at is not None
    return task.auction_closes_at + timedelta(milliseconds=1)


def event_types(task: Task) -> list[str]:
    return list(Event.objects.filter(task_id=str(task.pk)).order_by("id").values_list("event_type", flat=True))


def events_of(task: Task, event_type: str) -> list[Event]:
    return list(Event.objects.filter(task_id=str(task.pk), event_type=event_type).order_by("id"))
