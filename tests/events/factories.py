import factory
from django.utils import timezone

from apps.events.models import Event, EventType


class EventFactory(factory.django.DjangoModelFactory):
    """A stored row, for reads that need a given timestamp; tests of writing go through log_event."""

    class Meta:
        model = Event

    event_type = EventType.TASK_CREATED
    source = "swarm"
    data = factory.LazyFunction(dict)
    timestamp = factory.LazyFunction(timezone.now)
