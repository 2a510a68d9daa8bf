"""Upgrade steps of the worker (see WORKER_STEPS): recover the work of workers that died, draft requested changes,
apply approved upgrades, time out old proposals, prune old history. Each takes the time and returns how many items
it handled."""

import contextlib
from datetime import datetime, timedelta

from apps.core.leases import LeaseKeeper
from apps.core.services import worker_default_id
from apps.core.worker import at_most_every
from apps.upgrades import gitops, loop, services


def recover_stale_upgrades(now: datetime) -> int:
    """Give back the upgrades and change requests whose worker stopped renewing its lease (it died)."""
    recovered = services.upgrades_recover_stale(worker_id=worker_default_id(), now=now)
    return recovered + services.upgrade_requests_recover_stale(now=now)


def run_upgrade_requests(now: datetime) -> int:
    """Draft one queued change request into a proposed upgrade (one per call: a draft takes minutes)."""
    worker_id = worker_default_id()
    request = services.upgrade_request_claim(worker_id=worker_id)
    if request is None:
        return 0
    upgrade = None
    error = ""
    with LeaseKeeper(
        lambda: services.upgrade_request_lease_renew(request_id=request.pk, worker_id=worker_id),
        name=f"lease-request-{request.pk}",
    ):
        try:
            upgrade = loop.draft(instruction=request.instruction, request_id=request.pk)
        except (services.UpgradeError, gitops.GitOpsError) as exc:
            error = str(exc)
    # Stalled past the lease: the request was given back, and whoever has it now finishes it.
    with contextlib.suppress(services.UpgradeClaimLost):
        services.upgrade_request_finish(request=request, upgrade=upgrade, error=error)
    return 1


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
