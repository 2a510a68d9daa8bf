from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from apps.providers.models import Provider, ProviderMetrics
from tests.providers.factories import ProviderFactory

THRESHOLD = 3
RECOVERY = 60


@pytest.fixture(autouse=True)
def breaker_settings(settings):
    settings.CIRCUIT_BREAKER_THRESHOLD = THRESHOLD
    settings.CIRCUIT_BREAKER_RECOVERY_SECONDS = RECOVERY
    return settings


@pytest.fixture
def t0() -> datetime:
    """The start of a test's controlled clock."""
    return timezone.now().replace(microsecond=0) - timedelta(hours=1)


@pytest.fixture
def provider(db) -> Provider:
    return ProviderFactory(name="ollama")


def metrics_of(provider: Provider) -> ProviderMetrics:
    return ProviderMetrics.objects.get(provider=provider)
