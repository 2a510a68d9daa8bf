from datetime import datetime, timedelta

from django.db.models import QuerySet

from apps.providers.models import Provider, ProviderRequest


def providers_in_order(*, enabled_only: bool = True) -> QuerySet[Provider]:
    """Providers in the order the router tries them, with their metrics."""
    providers = Provider.objects.select_related("metrics").order_by("priority", "name")
    return providers.filter(enabled=True) if enabled_only else providers


def provider_requests_recent(*, provider: Provider, now: datetime, seconds: int = 3600) -> QuerySet[ProviderRequest]:
    return ProviderRequest.objects.filter(provider=provider, started_at__gte=now - timedelta(seconds=seconds))
