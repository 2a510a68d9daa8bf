"""Upgrade steps of the worker (see WORKER_STEPS): draft requested changes, apply approved upgrades, time out old
proposals, prune old history. Each takes the time and returns how many items it handled."""

from datetime import datetime, timedelta

from apps.core.services import worker_default_id
from apps.core.worker import at_most_every
from apps.upgrades import loop, services
from apps.upgrades.models import UpgradeRequest


def run_upgrade_requests(now: datetime) -> int:
    """Draft one queued change request into a proposed upgrade (one per call: a draft takes minutes)."""
    worker_id = worker_default_id()
    for request_id in (
        UpgradeRequest.objects.filter(status=UpgradeRequest.Status.QUEUED)
        .order_by("id")
        .values_list("id", flat=True)[:5]
    ):
        claimed = UpgradeRequest.objects.filter(pk=request_id, status=UpgradeRequest.Status.QUEUED).update(
            status=UpgradeRequest.Status.RUNNING, claimed_by=worker_id
        )
        if not claimed:
            continue  # another worker took it
        request = UpgradeRequest.objects.get(pk=request_id)
        try:
            upgrade = loop.draft(instruction=request.instruction, request_id=request.pk)
        except services.UpgradeError as exc:
            services.upgrade_request_finish(request=request, error=str(exc))
        else:
            services.upgrade_request_finish(request=request, upgrade=upgrade)
        return 1
    return 0


def apply_approved_upgrades(now: datetime) -> int:
    upgrade = services.upgrade_claim(worker_id=worker_default_id())
    if upgrade is None:
        return 0
    services.upgrade_apply(upgrade=upgrade)
    return 1


def time_out_upgrades(now: datetime) -> int:
    due = services.upgrades_due(now=now)
    for upgrade in due:
        try:
            services.upgrade_time_out_and_clean(upgrade=upgrade)
        except services.UpgradeWrongState:
            continue  # decided by a person meanwhile
    return len(due)


# A DELETE scan every second would be work for nothing: once an hour per process.
@at_most_every(timedelta(hours=1))
def prune_upgrades(now: datetime) -> int:
    services.upgrades_prune(now=now)
    return 0  # pruning is not "work found": the loop should not spin faster
