from datetime import timedelta

import factory
from django.utils import timezone

from apps.providers.models import Provider, ProviderRequest


class ProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Provider
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"provider{n}")
    kind = Provider.Kind.OLLAMA
    priority = factory.Sequence(lambda n: n + 1)
    model = "llama3.2"
    base_url = "http://127.0.0.1:11434"


class ProviderRequestFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ProviderRequest

    provider = factory.SubFactory(ProviderFactory)
    model = "llama3.2"
    started_at = factory.LazyFunction(lambda: timezone.now() - timedelta(minutes=1))
    latency_ms = 100
    outcome = ProviderRequest.Outcome.SUCCESS
