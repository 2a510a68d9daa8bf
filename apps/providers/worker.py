"""Provider steps of the worker (see WORKER_STEPS)."""

from datetime import datetime, timedelta

from django.conf import settings

from apps.providers import services


def prune_requests(now: datetime) -> int:
    # Pruned rows are not "work found": the loop should not spin faster because old rows went away.
    services.provider_requests_prune(older_than=now - timedelta(days=settings.PROVIDER_REQUEST_RETENTION_DAYS))
    services.model_calls_prune(older_than=now - timedelta(days=settings.TRACE_RETENTION_DAYS))
    return 0
