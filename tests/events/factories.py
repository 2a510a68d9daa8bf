import factory
from django.utils import timezone

from apps.events.models import Event, EventType
from apps.swarm.models import Agent


class EventFactory(factory.django.DjangoModelFactory):
    """A stored row, for reads that need a given timestamp; tests of writing go through log_event."""

    class Meta:
        model = Event

    event_type = EventType.TASK_CREATED
    source = "swarm"
    data = factory.LazyFunction(dict)
    timestamp = factory.LazyFunction(timezone.now)


def persona(name: str) -> Agent:
    """The persona the data migration made, or one of that name when a transactional test's flush removed it."""
    return Agent.objects.filter(name=name).first() or Agent.objects.create(name=name)
