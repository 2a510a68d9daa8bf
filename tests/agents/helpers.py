from apps.events.models import Event


def events_from(source: str) -> list[Event]:
    return list(Event.objects.filter(source=source).order_by("id"))
