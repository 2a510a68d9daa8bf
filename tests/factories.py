import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.swarm.models import Agent, Bid, Task


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("correct horse battery staple")
    is_staff = False


class StaffFactory(UserFactory):
    username = factory.Sequence(lambda n: f"staff{n}")
    is_staff = True


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    name = factory.Sequence(lambda n: f"agent{n}")
    persona = "echo"
    keywords = factory.LazyFunction(lambda: ["research"])
    capabilities = factory.LazyFunction(lambda: ["research"])
    status = Agent.Status.IDLE
    base_bid_sats = 100
    bid_jitter_sats = 0


class TaskFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Task

    description = factory.Sequence(lambda n: f"Task number {n}")
    status = Task.Status.PENDING


class BidFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Bid

    task = factory.SubFactory(TaskFactory, status=Task.Status.BIDDING)
    agent = factory.SubFactory(AgentFactory)
    amount_sats = 100
    created_at = factory.LazyFunction(timezone.now)
