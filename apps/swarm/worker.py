"""Swarm steps of the worker (see WORKER_STEPS). Each takes the time and returns how many items it handled."""

from datetime import datetime

from apps.swarm import services


def close_due_auctions(now: datetime) -> int:
    return services.auctions_close_due(now=now)


def recover_stale_tasks(now: datetime) -> int:
    return services.tasks_recover_stale(now=now)
