from datetime import timedelta

from django.conf import settings
from django.db.models import Exists
from django.utils import timezone

from apps.core.models import WorkerHeartbeat
from apps.swarm.models import Task


def workers_recent() -> list[WorkerHeartbeat]:
    # Workers that stopped more than a day ago are history, not status.
    since = timezone.now() - timedelta(days=1)
    return list(WorkerHeartbeat.objects.filter(last_beat_at__gte=since)[:20])


def workers_alive_count(*, exclude_worker_id: str | None = None) -> int:
    stale = timezone.now() - timedelta(seconds=settings.WORKER_STALE_SECONDS)
    qs = WorkerHeartbeat.objects.filter(stopped_at__isnull=True, last_beat_at__gte=stale)
    if exclude_worker_id:
        qs = qs.exclude(worker_id=exclude_worker_id)
    return qs.count()


def tasks_waiting_without_worker() -> int:
    """Open tasks (pending, bidding, assigned, running) while no worker is alive to close their auctions or run them;
    0 while one is. One query: the home and swarm pages show it on every refresh."""
    stale = timezone.now() - timedelta(seconds=settings.WORKER_STALE_SECONDS)
    alive = WorkerHeartbeat.objects.filter(stopped_at__isnull=True, last_beat_at__gte=stale)  # as workers_alive_count
    return Task.objects.exclude(status__in=Task.TERMINAL).filter(~Exists(alive)).count()
