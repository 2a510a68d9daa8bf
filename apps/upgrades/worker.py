"""Upgrade work of the worker. Steps (WORKER_STEPS, each takes the time and returns how many items it handled):
recover the work of workers that died, time out old proposals, prune old history. Jobs (WORKER_JOBS, run in the
worker's pool): draft requested changes, apply approved upgrades, roll back applied ones."""

import logging
from datetime import datetime, timedelta
from functools import partial

from apps.core.jobs import Job
from apps.core.leases import LeaseKeeper
from apps.core.services import worker_default_id
from apps.core.worker import at_most_every
from apps.upgrades import gitops, loop, services
from apps.upgrades.models import Upgrade, UpgradeRequest

# The worker's log: one warning for each request, apply and rollback that fails (the reason is on the record too).
logger = logging.getLogger("timmy.worker")


def recover_stale_upgrades(now: datetime) -> int:
    """Give back the upgrades, rollbacks and change requests whose worker stopped renewing its lease (it died)."""
    recovered = services.upgrades_recover_stale(worker_id=worker_default_id(), now=now)
    recovered += services.upgrade_rollbacks_recover_stale(worker_id=worker_default_id(), now=now)
    return recovered + services.upgrade_requests_recover_stale(now=now)


RELEASED = "worker {worker} stopped before it finished; handed back"


def claim_upgrade_request(worker_id: str) -> Job | None:
    """Claim the oldest queued change request, as a job that drafts it into a proposed upgrade."""
    request = services.upgrade_request_claim(worker_id=worker_id)
    if request is None:
        return None
    return Job(
        name=f"change request {request.pk}",
        run=partial(_draft, request, worker_id),
        release=partial(
            services.upgrade_request_release,
            request_id=request.pk,
            worker_id=worker_id,
            reason=RELEASED.format(worker=worker_id),
        ),
    )


def _draft(request: UpgradeRequest, worker_id: str) -> None:
    upgrade = None
    error = ""
    with LeaseKeeper(
        lambda: services.upgrade_request_lease_renew(request_id=request.pk, worker_id=worker_id),
        name=f"lease-request-{request.pk}",
    ):
        try:
            if request.branch:
                upgrade = loop.propose_branch(
                    branch=request.branch, commit=request.commit, description=request.instruction, request_id=request.pk
                )
            else:
                upgrade = loop.draft(instruction=request.instruction, request_id=request.pk)
        except (services.UpgradeError, gitops.GitOpsError) as exc:
            error = str(exc)
    # Stalled past the lease (or handed back as the worker stopped): whoever has it now finishes it.
    try:
        services.upgrade_request_finish(request=request, upgrade=upgrade, error=error)
    except services.UpgradeClaimLost:
        return
    if upgrade is None:
        logger.warning("change request %s failed: %s", request.pk, _one_line(error))


def claim_approved_upgrade(worker_id: str) -> Job | None:
    """Claim the oldest approved upgrade, as a job that tests it if need be and merges it."""
    upgrade = services.upgrade_claim(worker_id=worker_id)
    if upgrade is None:
        return None
    return Job(
        name=f"upgrade {upgrade.pk}",
        run=partial(_apply, upgrade),
        release=partial(
            services.upgrade_release,
            upgrade_id=upgrade.pk,
            worker_id=worker_id,
            reason=RELEASED.format(worker=worker_id),
        ),
    )


def _apply(upgrade: Upgrade) -> Upgrade:
    done = services.upgrade_apply(upgrade=upgrade)
    if done.status == Upgrade.Status.FAILED:
        logger.warning("upgrade %s was not applied: %s", done.pk, _one_line(done.error_message))
    return done


def claim_rollback(worker_id: str) -> Job | None:
    """Claim the oldest queued rollback, as a job that reverts the upgrade's merge."""
    upgrade = services.upgrade_rollback_claim(worker_id=worker_id)
    if upgrade is None:
        return None
    return Job(
        name=f"rollback of upgrade {upgrade.pk}",
        run=partial(_roll_back, upgrade),
        release=partial(
            services.upgrade_rollback_release,
            upgrade_id=upgrade.pk,
            worker_id=worker_id,
            reason=RELEASED.format(worker=worker_id),
        ),
    )


def _roll_back(upgrade: Upgrade) -> Upgrade:
    done = services.upgrade_rollback_run(upgrade=upgrade)
    # A failed rollback leaves the upgrade applied, no longer queued, with the reason; one handed back stays queued.
    if done.status == Upgrade.Status.APPLIED and not done.rollback_queued and done.rollback_error:
        logger.warning("upgrade %s was not rolled back: %s", done.pk, _one_line(done.rollback_error))
    return done


def _one_line(reason: str) -> str:
    # A reason may hold test output or git's message over many lines: the log keeps one line per failure.
    return " ".join(reason.split())[:500] or "no reason recorded"


def run_upgrade_requests(now: datetime) -> int:
    """Claim and draft one change request in this thread (the worker runs drafts in its pool)."""
    job = claim_upgrade_request(worker_default_id())
    if job is None:
        return 0
    job.run()
    return 1


def apply_approved_upgrades(now: datetime) -> int:
    """Claim and apply one approved upgrade in this thread (the worker applies them in its pool)."""
    job = claim_approved_upgrade(worker_default_id())
    if job is None:
        return 0
    job.run()
    return 1


def run_rollbacks(now: datetime) -> int:
    """Claim and do one queued rollback in this thread (the worker does them in its pool)."""
    job = claim_rollback(worker_default_id())
    if job is None:
        return 0
    job.run()
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
