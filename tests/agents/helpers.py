from apps.events.models import Event


def events_from(source: str) -> list[Event]:
    """The tool events a source logged, in order (memory.stored and the like left out)."""
    return list(Event.objects.filter(source=source, event_type__startswith="tool.").order_by("id"))
