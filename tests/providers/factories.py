import factory

from apps.providers.models import Provider


class ProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Provider
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"provider{n}")
    kind = Provider.Kind.OLLAMA
    priority = factory.Sequence(lambda n: n + 1)
    model = "llama3.2"
    base_url = "http://127.0.0.1:11434"
