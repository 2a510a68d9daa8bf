"""The upgrade queue's writes (ADR-021). Each move is a conditional update from the states it may come from, with an
`upgrade.*` event naming who made it; a wrong state, a missing permission or failing tests raise a named error.

Git work (worktrees, merges, reverts) is in apps.upgrades.gitops and runs outside any transaction.
"""

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from apps.core.leases import LeaseKeeper
from apps.events.services import clean_multiline_text, log_event
from apps.swarm import services as swarm_services
from apps.upgrades import gitops, sandbox
from apps.upgrades.models import Risk, Upgrade, UpgradeRequest

logger = logging.getLogger("timmy.upgrades")
SOURCE = "upgrades"
REASON_MAX = 1000


class UpgradeError(Exception):
    pass


class UpgradeNotFound(UpgradeError, LookupError):
    pass


class UpgradeWrongState(UpgradeError):
    """The upgrade is not in a state this move starts from (the message says which it is in)."""


class UpgradeClaimLost(UpgradeWrongState):
    """The worker stalled past its lease and the upgrade (or request) was given back: its outcome is not recorded."""


class UpgradeRollbackQueued(UpgradeWrongState):
    """The upgrade's rollback is already asked for: waiting for a worker, or being done."""


class UpgradeNotAllowed(UpgradeError, PermissionError):
    pass


class UpgradeTestsFailed(UpgradeError):
    pass


class InvalidUpgrade(UpgradeError, ValueError):
    pass


APPROVE_PERMISSION = "upgrades.approve_upgrade"


def _actor_name(actor: Any) -> str:
    return actor.get_username() if actor is not None else "system"


def _require_permission(actor: Any) -> None:
    if actor is None or not actor.is_authenticated or not actor.has_perm(APPROVE_PERMISSION):
        raise UpgradeNotAllowed("Approving or rejecting upgrades needs the permission upgrades.approve_upgrade.")


def _log(upgrade: Upgrade, event_type: str, actor: Any, **data: Any) -> None:
    log_event(
        event_type,
        source=SOURCE,
        data={
            "upgrade_id": upgrade.pk,
            "branch": upgrade.branch,
            "status": upgrade.status,
            "by": _actor_name(actor),
            **data,
        },
    )


def _move(
    upgrade_id: int, from_states: tuple[str, ...], to: str, *, where: dict[str, Any] | None = None, **changes: Any
) -> Upgrade:
    """The conditional update; raises UpgradeNotFound or UpgradeWrongState when it does not apply."""
    moved = Upgrade.objects.filter(pk=upgrade_id, status__in=from_states, **(where or {})).update(status=to, **changes)
    upgrade = Upgrade.objects.filter(pk=upgrade_id).first()
    if upgrade is None:
        raise UpgradeNotFound(f"Upgrade {upgrade_id} not found.")
    if not moved:
        holder = (where or {}).get("claimed_by")
        if holder is not None and upgrade.status in from_states:
            raise UpgradeClaimLost(
                f"Upgrade {upgrade_id} is no longer claimed by {holder} (claimed by {upgrade.claimed_by or 'nobody'})."
            )
        raise UpgradeWrongState(
            f"Upgrade {upgrade_id} is {upgrade.status}; only a {' or '.join(from_states)} upgrade can become {to}."
        )
    return upgrade


def _lease_end(lease_seconds: int | None = None) -> datetime:
    # Tasks, upgrades being applied and requests being drafted share one lease length and one attempt limit.
    return timezone.now() + timedelta(seconds=settings.TASK_LEASE_SECONDS if lease_seconds is None else lease_seconds)


def _stale(now: datetime) -> Q:
    # A claim with no lease at all was taken before claims had leases: its worker is long gone too.
    return ~Q(claimed_by="") & (Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True))


@dataclass(frozen=True)
class Proposal:
    description: str
    instruction: str
    repo_path: str
    target_branch: str
    branch: str
    worktree_path: str
    base_commit: str
    head_commit: str
    files_changed: list[str]
    diff: str
    diff_preview: str
    risk: str
    test_results: dict[str, Any]
    attempts: int = 1
    error_message: str = ""


def upgrade_propose(*, proposal: Proposal, actor: Any = None) -> Upgrade:
    """Record a proposal. One whose tests ran without a sandbox is high risk, whatever it changes."""
    description = clean_multiline_text(proposal.description).strip()
    if not description:
        raise InvalidUpgrade("An upgrade needs a description.")
    if proposal.risk not in Risk.values:
        raise InvalidUpgrade(f"Unknown risk {proposal.risk!r}.")
    unsandboxed = proposal.test_results.get("sandbox") == sandbox.UNSANDBOXED
    with transaction.atomic():
        upgrade = Upgrade.objects.create(
            description=description,
            instruction=proposal.instruction,
            repo_path=proposal.repo_path,
            target_branch=proposal.target_branch,
            branch=proposal.branch,
            worktree_path=proposal.worktree_path,
            base_commit=proposal.base_commit,
            head_commit=proposal.head_commit,
            files_changed=proposal.files_changed,
            diff=proposal.diff,
            diff_preview=proposal.diff_preview,
            risk=Risk.HIGH if unsandboxed else proposal.risk,
            test_results=proposal.test_results,
            attempts=proposal.attempts,
            error_message=proposal.error_message,
        )
        _log(
            upgrade,
            "upgrade.proposed",
            actor,
            files=len(upgrade.files_changed),
            risk=upgrade.risk,
            tests_passed=upgrade.tests_passed,
            attempts=upgrade.attempts,
            sandbox=proposal.test_results.get("sandbox", ""),
        )
    return upgrade


def upgrade_approve(*, upgrade_id: int, actor: Any) -> Upgrade:
    """Approve a proposed upgrade whose tests passed; the worker applies it."""
    _require_permission(actor)
    return _approve(upgrade_id, actor=actor, automatic=False)


def _approve(upgrade_id: int, *, actor: Any, automatic: bool) -> Upgrade:
    upgrade = Upgrade.objects.filter(pk=upgrade_id).first()
    if upgrade is None:
        raise UpgradeNotFound(f"Upgrade {upgrade_id} not found.")
    if upgrade.status == Upgrade.Status.PROPOSED and not upgrade.tests_passed:
        raise UpgradeTestsFailed(f"Upgrade {upgrade_id} cannot be approved: its tests did not pass.")
    with transaction.atomic():
        upgrade = _move(
            upgrade_id,
            (Upgrade.Status.PROPOSED,),
            Upgrade.Status.APPROVED,
            where={"test_results__passed": True},  # checked again inside the update
            approved_at=timezone.now(),
            approved_by=None if automatic else actor,
            auto_approved=automatic,
        )
        _log(upgrade, "upgrade.approved", actor, automatic=automatic)
    return upgrade


def upgrade_reject(*, upgrade_id: int, actor: Any, reason: str) -> Upgrade:
    """Reject a proposed upgrade, with a reason. The caller removes its branch and worktree."""
    _require_permission(actor)
    reason = clean_multiline_text(reason).strip()
    if not reason:
        raise InvalidUpgrade("Say why the upgrade is rejected.")
    with transaction.atomic():
        upgrade = _move(
            upgrade_id,
            (Upgrade.Status.PROPOSED,),
            Upgrade.Status.REJECTED,
            rejected_at=timezone.now(),
            rejected_by=actor,
            rejection_reason=reason[:REASON_MAX],
        )
        _log(upgrade, "upgrade.rejected", actor, reason=reason[:REASON_MAX])
    return upgrade


def upgrades_due(*, now: datetime | None = None, limit: int = 50) -> list[Upgrade]:
    """Proposals older than UPGRADE_TIMEOUT_HOURS."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.UPGRADE_TIMEOUT_HOURS)
    return list(Upgrade.objects.filter(status=Upgrade.Status.PROPOSED, proposed_at__lte=cutoff).order_by("id")[:limit])


def upgrade_time_out(*, upgrade: Upgrade) -> Upgrade:
    """A proposal nobody decided on in time: approved automatically when AUTO_APPROVE_UPGRADES allows it (low risk,
    tests passed), otherwise expired."""
    if settings.AUTO_APPROVE_UPGRADES and upgrade.risk == Risk.LOW and upgrade.tests_passed:
        return _approve(upgrade.pk, actor=None, automatic=True)
    with transaction.atomic():
        expired = _move(upgrade.pk, (Upgrade.Status.PROPOSED,), Upgrade.Status.EXPIRED)
        _log(expired, "upgrade.expired", None, hours=settings.UPGRADE_TIMEOUT_HOURS)
    return expired


def upgrade_claim(*, worker_id: str, lease_seconds: int | None = None) -> Upgrade | None:
    """The oldest approved upgrade no worker is applying, claimed by this one for a lease (TASK_LEASE_SECONDS) that
    it renews while it applies; recover_stale_upgrades gives back the claims of workers that died."""
    for upgrade_id in (
        Upgrade.objects.filter(status=Upgrade.Status.APPROVED, claimed_by="")
        .order_by("id")
        .values_list("id", flat=True)[:5]
    ):
        with transaction.atomic():
            if not Upgrade.objects.filter(pk=upgrade_id, status=Upgrade.Status.APPROVED, claimed_by="").update(
                claimed_by=worker_id, lease_expires_at=_lease_end(lease_seconds), apply_attempts=F("apply_attempts") + 1
            ):
                continue
            upgrade = Upgrade.objects.get(pk=upgrade_id)
            _log(upgrade, "upgrade.applying", None, worker=worker_id, attempt=upgrade.apply_attempts)
        return upgrade
    return None


def upgrade_lease_renew(*, upgrade_id: int, worker_id: str, lease_seconds: int | None = None) -> bool:
    return bool(
        Upgrade.objects.filter(pk=upgrade_id, status=Upgrade.Status.APPROVED, claimed_by=worker_id).update(
            lease_expires_at=_lease_end(lease_seconds)
        )
    )


def _held_by(worker_id: str | None) -> dict[str, Any] | None:
    return None if worker_id is None else {"claimed_by": worker_id}


def upgrade_mark_applied(
    *,
    upgrade_id: int,
    applied_commit: str,
    replaced_commit: str,
    test_results: Any = None,
    worker_id: str | None = None,
    already_merged: bool = False,
) -> Upgrade:
    """With `worker_id`, only while that worker still holds the claim (UpgradeClaimLost otherwise).
    `already_merged`: the target contained the upgrade before this worker merged anything."""
    changes: dict[str, Any] = {
        "applied_at": timezone.now(),
        "applied_commit": applied_commit,
        "replaced_commit": replaced_commit,
        "claimed_by": "",
        "lease_expires_at": None,
    }
    if test_results is not None:
        changes["test_results"] = test_results
    extra = {"already_merged": True} if already_merged else {}
    with transaction.atomic():
        upgrade = _move(
            upgrade_id, (Upgrade.Status.APPROVED,), Upgrade.Status.APPLIED, where=_held_by(worker_id), **changes
        )
        _log(upgrade, "upgrade.applied", None, commit=applied_commit, replaced=replaced_commit, **extra)
    return upgrade


def upgrade_mark_failed(
    *, upgrade_id: int, reason: str, test_results: Any = None, worker_id: str | None = None
) -> Upgrade:
    """With `worker_id`, only while that worker still holds the claim (UpgradeClaimLost otherwise)."""
    changes: dict[str, Any] = {"error_message": reason[: REASON_MAX * 4], "claimed_by": "", "lease_expires_at": None}
    if test_results is not None:
        changes["test_results"] = test_results
    with transaction.atomic():
        upgrade = _move(
            upgrade_id, (Upgrade.Status.APPROVED,), Upgrade.Status.FAILED, where=_held_by(worker_id), **changes
        )
        _log(upgrade, "upgrade.failed", None, reason=reason[:REASON_MAX])
    return upgrade


def upgrade_mark_rolled_back(
    *, upgrade_id: int, revert_commit: str, actor: Any, worker_id: str | None = None, already_reverted: bool = False
) -> Upgrade:
    """With `worker_id`, only while that worker still holds the rollback's claim (UpgradeClaimLost otherwise).
    `already_reverted`: the target had the revert before this worker reverted anything."""
    extra: dict[str, Any] = {} if worker_id is None else {"worker": worker_id}
    if already_reverted:
        extra["already_reverted"] = True
    with transaction.atomic():
        upgrade = _move(
            upgrade_id,
            (Upgrade.Status.APPLIED,),
            Upgrade.Status.ROLLED_BACK,
            where=_held_by(worker_id),
            rolled_back_at=timezone.now(),
            revert_commit=revert_commit,
            claimed_by="",
            lease_expires_at=None,
        )
        _log(upgrade, "upgrade.rolled_back", actor, commit=revert_commit, **extra)
    return upgrade


def upgrades_prune(*, now: datetime | None = None) -> int:
    """Delete finished upgrades older than UPGRADE_HISTORY_DAYS (their events stay in the audit trail)."""
    now = now or timezone.now()
    finished = (
        Upgrade.Status.APPLIED,
        Upgrade.Status.FAILED,
        Upgrade.Status.REJECTED,
        Upgrade.Status.EXPIRED,
        Upgrade.Status.ROLLED_BACK,
    )
    old = Upgrade.objects.filter(
        status__in=finished, proposed_at__lt=now - timedelta(days=settings.UPGRADE_HISTORY_DAYS)
    ).exclude(_rollback_queued())  # its rollback is still to be done
    deleted, _ = old.delete()
    return deleted


INSTRUCTION_MAX = 4000
BRANCH_MAX = 200


def upgrade_request_create(*, instruction: str, actor: Any, task: Any = None) -> UpgradeRequest:
    """Ask for a change; the worker drafts it (apps.upgrades.worker) into a proposed upgrade."""
    text = clean_multiline_text(instruction).strip()
    if not text:
        raise InvalidUpgrade("Say what should change.")
    if len(text) > INSTRUCTION_MAX:
        raise InvalidUpgrade(f"The instruction is {len(text)} characters; the limit is {INSTRUCTION_MAX}.")
    with transaction.atomic():
        request = UpgradeRequest.objects.create(
            instruction=text, requested_by=actor if getattr(actor, "is_authenticated", False) else None, task=task
        )
        log_event(
            "upgrade.requested",
            source=SOURCE,
            task_id=task.pk if task is not None else None,
            data={"request_id": request.pk, "by": _actor_name(actor if request.requested_by else None)},
        )
    return request


def upgrade_branch_request_create(*, branch: str, commit: str, description: str, actor: Any) -> UpgradeRequest:
    """Queue an existing branch's `commit`, already checked (apps.upgrades.loop.queue_branch), for the worker to
    test and propose as it is."""
    text = clean_multiline_text(description).strip()
    if not text:
        raise InvalidUpgrade("Say what the branch changes.")
    if len(text) > INSTRUCTION_MAX:
        raise InvalidUpgrade(f"The description is {len(text)} characters; the limit is {INSTRUCTION_MAX}.")
    if not branch or len(branch) > BRANCH_MAX:
        raise InvalidUpgrade(f"A branch name has 1 to {BRANCH_MAX} characters.")
    with transaction.atomic():
        request = UpgradeRequest.objects.create(
            instruction=text,
            branch=branch,
            commit=commit,
            requested_by=actor if getattr(actor, "is_authenticated", False) else None,
        )
        log_event(
            "upgrade.requested",
            source=SOURCE,
            data={
                "request_id": request.pk,
                "branch": branch,
                "commit": commit,
                "by": _actor_name(actor if request.requested_by else None),
            },
        )
    return request


def upgrade_request_claim(*, worker_id: str, lease_seconds: int | None = None) -> UpgradeRequest | None:
    """The oldest queued change request, claimed by this worker to draft, with a lease as for applying upgrades."""
    for request_id in (
        UpgradeRequest.objects.filter(status=UpgradeRequest.Status.QUEUED)
        .order_by("id")
        .values_list("id", flat=True)[:5]
    ):
        if UpgradeRequest.objects.filter(pk=request_id, status=UpgradeRequest.Status.QUEUED).update(
            status=UpgradeRequest.Status.RUNNING,
            claimed_by=worker_id,
            lease_expires_at=_lease_end(lease_seconds),
            attempts=F("attempts") + 1,
        ):
            return UpgradeRequest.objects.get(pk=request_id)
    return None  # none queued, or other workers took them


def upgrade_request_lease_renew(*, request_id: int, worker_id: str, lease_seconds: int | None = None) -> bool:
    return bool(
        UpgradeRequest.objects.filter(pk=request_id, status=UpgradeRequest.Status.RUNNING, claimed_by=worker_id).update(
            lease_expires_at=_lease_end(lease_seconds)
        )
    )


def upgrade_request_release(*, request_id: int, worker_id: str, reason: str) -> bool:
    """Queue a request this worker is drafting again at once (the worker is stopping); the attempt does not count
    against TASK_MAX_ATTEMPTS. False if the claim was no longer this worker's."""
    with transaction.atomic():
        held = UpgradeRequest.objects.filter(pk=request_id, status=UpgradeRequest.Status.RUNNING, claimed_by=worker_id)
        task_id = held.values_list("task_id", flat=True).first()
        if not held.update(
            status=UpgradeRequest.Status.QUEUED, claimed_by="", lease_expires_at=None, attempts=F("attempts") - 1
        ):
            return False
        log_event(
            "upgrade.request_released",
            source=SOURCE,
            task_id=task_id,
            data={"request_id": request_id, "worker": worker_id, "reason": reason, "released": True},
        )
    return True


def upgrade_release(*, upgrade_id: int, worker_id: str, reason: str) -> bool:
    """Give back an approved upgrade this worker is applying (it is stopping), for the next worker to apply; that
    one notices a merge this one already made. False if the claim was no longer this worker's."""
    with transaction.atomic():
        held = Upgrade.objects.filter(pk=upgrade_id, status=Upgrade.Status.APPROVED, claimed_by=worker_id)
        if not held.update(claimed_by="", lease_expires_at=None, apply_attempts=F("apply_attempts") - 1):
            return False
        upgrade = Upgrade.objects.get(pk=upgrade_id)
        _log(upgrade, "upgrade.released", None, worker=worker_id, reason=reason)
    return True


def upgrade_requests_recover_stale(*, now: datetime | None = None) -> int:
    """Give back change requests whose worker stopped renewing its lease: queued again if attempts remain
    (TASK_MAX_ATTEMPTS), else failed with the reason."""
    now = now or timezone.now()
    stale = list(
        UpgradeRequest.objects.filter(_stale(now), status=UpgradeRequest.Status.RUNNING).values_list(
            "id", "claimed_by", "attempts", "task_id"
        )[:100]
    )
    recovered = 0
    for request_id, worker, attempts, task_id in stale:
        why = f"worker {worker} stopped renewing its lease"
        held = UpgradeRequest.objects.filter(
            _stale(now), pk=request_id, status=UpgradeRequest.Status.RUNNING, claimed_by=worker
        )
        with transaction.atomic():
            if attempts < settings.TASK_MAX_ATTEMPTS:
                if not held.update(status=UpgradeRequest.Status.QUEUED, claimed_by="", lease_expires_at=None):
                    continue
                event, data = "upgrade.request_released", {"worker": worker, "attempts": attempts}
                reason = f"{why}; will retry"
            else:
                reason = f"{why} after {attempts} attempts"
                if not held.update(
                    status=UpgradeRequest.Status.FAILED,
                    error_message=reason,
                    finished_at=now,
                    claimed_by="",
                    lease_expires_at=None,
                ):
                    continue
                event, data = "upgrade.request_failed", {"worker": worker}
            log_event(
                event,
                source=SOURCE,
                task_id=task_id,
                data={"request_id": request_id, **data, "reason": reason, "recovered": True},
            )
            if event == "upgrade.request_failed":
                _request_task_outcome(request_id=request_id, task_id=task_id, upgrade=None, error=reason)
                logger.warning("change request %s failed: %s", request_id, reason)
        recovered += 1
    return recovered


def upgrade_request_retry(*, request_id: int, actor: Any) -> UpgradeRequest:
    """Queue a failed change request again, as new: no attempts counted, no error. A request drafted for a task
    that has finished meanwhile (it failed with the draft) leaves that task: the retry is a plain request, and its
    outcome neither completes nor pays the task."""
    if actor is None or not actor.is_authenticated or not actor.is_staff:
        raise UpgradeNotAllowed("Retrying a change request needs a staff user, as asking for one does.")
    with transaction.atomic():
        change = UpgradeRequest.objects.select_related("task").filter(pk=request_id).first()
        if change is None:
            raise UpgradeNotFound(f"Change request {request_id} not found.")
        task = change.task
        # The task's own state is not touched: only the link goes, so that nothing revives the task.
        detach = task is not None and task.status in task.TERMINAL
        changes: dict[str, Any] = {
            "status": UpgradeRequest.Status.QUEUED,
            "attempts": 0,
            "error_message": "",
            "finished_at": None,
            "claimed_by": "",
            "lease_expires_at": None,
        }
        if detach:
            changes["task"] = None
        if not UpgradeRequest.objects.filter(pk=request_id, status=UpgradeRequest.Status.FAILED).update(**changes):
            change.refresh_from_db()
            raise UpgradeWrongState(
                f"Change request {request_id} is {change.status}; only a failed request can be retried."
            )
        log_event(
            "upgrade.request_retried",
            source=SOURCE,
            task_id=change.task_id,
            data={
                "request_id": request_id,
                "by": _actor_name(actor),
                "previous_error": change.error_message[:REASON_MAX],
                "previous_attempts": change.attempts,
                **({"detached_from_task": True} if detach else {}),
            },
        )
        change.refresh_from_db()
    return change


# --- Git-backed moves (outside transactions: git is slow, and a failed git step must not roll back the record) ---

AUTHOR_NAME = "Timmy (self-modify)"
AUTHOR_EMAIL = "timmy@localhost"


class UpgradeGitError(UpgradeError):
    """Git refused (a conflict, a dirty live tree, a moved branch); the message says what."""


def worktrees_dir() -> Path:
    return Path(settings.DATA_DIR) / "worktrees"


def test_environment(*, tmp: str = sandbox.TMP) -> dict[str, str]:
    """The whole environment of a proposal's test run (PATH, HOME and TMPDIR in `tmp`, LANG, TIMMY_DATA_DIR), so
    this process's settings (database, data dir, secrets) never leak into the code under test."""
    return sandbox.environment(tmp=tmp)


def test_results_of(run: gitops.TestRun, command: str) -> dict[str, Any]:
    results: dict[str, Any] = {
        "passed": run.passed,
        "passed_count": run.passed_count,
        "failed_count": run.failed_count,
        "duration_seconds": round(run.duration_seconds, 2),
        "output_tail": run.output_tail,
        "timed_out": run.timed_out,
        "command": command,
    }
    if run.not_run:
        return results | {"not_run": run.not_run}
    results["sandbox"] = run.sandbox
    if run.sandbox == sandbox.UNSANDBOXED:
        return results | {"warning": UNSANDBOXED_WARNING}
    return results | {
        "limits": dataclasses.asdict(sandbox.limits()),
        "limited_by": run.limited_by,
        "limits_not_enforced": list(run.limits_not_enforced),
        "limits_hit": list(run.limits_hit),
        "output_cut": run.output_cut,
    }


UNSANDBOXED_WARNING = (
    "These tests ran without a sandbox (SELF_MODIFY_UNSANDBOXED_TESTS is on): the proposal's code ran as the worker, "
    "with its access to the data directory, the keys, the live tree and the network."
)


def tests_not_run_error(reason: str) -> str:
    return (
        f"The tests were not run: no sandbox can be made here ({reason}). Install bubblewrap (`make sandbox`), or set "
        "SELF_MODIFY_UNSANDBOXED_TESTS to run proposal tests without a sandbox (each such proposal is high risk)."
    )


def run_proposal_tests(worktree: Path) -> gitops.TestRun:
    """Run SELF_MODIFY_TEST_COMMAND on the proposal code in `worktree` inside the sandbox. Where none can be made,
    the tests are not run (`not_run` says why), unless SELF_MODIFY_UNSANDBOXED_TESTS allows running them without
    one (`sandbox` "none": the proposal is then high risk).

    Afterwards the worktree is as committed again: what the tests wrote there is neither committed by a later
    attempt nor read by git outside the sandbox (gitops.restore_worktree)."""
    pointer = gitops.git_pointer(worktree)
    try:
        return _run_tests(worktree)
    finally:
        gitops.restore_worktree(worktree, pointer)


def _run_tests(worktree: Path) -> gitops.TestRun:
    command = settings.SELF_MODIFY_TEST_COMMAND
    reason = sandbox.unavailable_reason()
    if reason is None:
        return sandbox.run(command, worktree=worktree, env=test_environment())
    if not settings.SELF_MODIFY_UNSANDBOXED_TESTS:
        logger.warning("proposal tests in %s not run: %s", worktree, reason)
        return gitops.TestRun(
            passed=False,
            passed_count=None,
            failed_count=None,
            duration_seconds=0.0,
            output_tail="",
            timed_out=False,
            sandbox="",
            not_run=reason,
        )
    logger.warning("running the tests in %s without a sandbox (SELF_MODIFY_UNSANDBOXED_TESTS): %s", worktree, reason)
    # Still a HOME, TMPDIR and data dir of the run's own, removed afterwards.
    with tempfile.TemporaryDirectory(prefix="timmy-unsandboxed-") as tmp:
        run = gitops.run_tests(
            worktree, command, timeout_seconds=settings.SELF_MODIFY_TEST_TIMEOUT_SECONDS, env=test_environment(tmp=tmp)
        )
    return dataclasses.replace(run, sandbox=sandbox.UNSANDBOXED)


def _clean_up(upgrade: Upgrade, *, delete_branch: bool) -> None:
    if not upgrade.worktree_path:
        return
    try:
        gitops.remove_worktree(
            Path(upgrade.repo_path), Path(upgrade.worktree_path), branch=upgrade.branch if delete_branch else None
        )
    except gitops.GitOpsError:
        # Leftovers in the data dir are harmless; the record's state is what counts.
        logger.warning("could not remove the worktree of upgrade %s", upgrade.pk, exc_info=True)


def upgrade_reject_and_clean(*, upgrade_id: int, actor: Any, reason: str) -> Upgrade:
    """Reject, then remove the proposal's branch and worktree."""
    upgrade = upgrade_reject(upgrade_id=upgrade_id, actor=actor, reason=reason)
    _clean_up(upgrade, delete_branch=True)
    return upgrade


def upgrade_time_out_and_clean(*, upgrade: Upgrade) -> Upgrade:
    upgrade = upgrade_time_out(upgrade=upgrade)
    if upgrade.status == Upgrade.Status.EXPIRED:
        _clean_up(upgrade, delete_branch=True)
    return upgrade


def _merged_already(upgrade: Upgrade) -> gitops.MergeResult | None:
    return gitops.merge_of(
        Path(upgrade.repo_path), target_branch=upgrade.target_branch, commit=upgrade.head_commit or upgrade.branch
    )


def upgrades_recover_stale(*, worker_id: str, now: datetime | None = None) -> int:
    """Give back approved upgrades whose worker stopped renewing its claim's lease: to the queue if attempts remain
    (TASK_MAX_ATTEMPTS; the next apply notices a merge the dead worker already made), else, taken over by
    `worker_id`, recorded as applied if the target already contains it, or failed with the reason."""
    now = now or timezone.now()
    stale = list(
        Upgrade.objects.filter(_stale(now), status=Upgrade.Status.APPROVED).values_list(
            "id", "claimed_by", "apply_attempts"
        )[:100]
    )
    recovered = 0
    for upgrade_id, worker, attempts in stale:
        why = f"worker {worker} stopped renewing its lease"
        held = Upgrade.objects.filter(_stale(now), pk=upgrade_id, status=Upgrade.Status.APPROVED, claimed_by=worker)
        if attempts < settings.TASK_MAX_ATTEMPTS:
            with transaction.atomic():
                if not held.update(claimed_by="", lease_expires_at=None):
                    continue
                upgrade = Upgrade.objects.get(pk=upgrade_id)
                _log(upgrade, "upgrade.released", None, worker=worker, attempts=attempts, reason=f"{why}; will retry")
            recovered += 1
            continue
        if not held.update(claimed_by=worker_id, lease_expires_at=_lease_end()):
            continue
        upgrade = Upgrade.objects.get(pk=upgrade_id)
        reason = f"{why} after {attempts} attempts"
        try:
            done = _merged_already(upgrade)
        except gitops.GitOpsError as exc:
            done, reason = None, f"{reason}; git could not tell whether it was merged: {exc}"
        try:
            if done is None:
                upgrade_mark_failed(upgrade_id=upgrade_id, reason=reason, worker_id=worker_id)
                logger.warning("upgrade %s was not applied: %s", upgrade_id, reason)
            else:
                applied = upgrade_mark_applied(
                    upgrade_id=upgrade_id,
                    applied_commit=done.merge_sha,
                    replaced_commit=done.previous_sha,
                    worker_id=worker_id,
                    already_merged=True,
                )
                _clean_up(applied, delete_branch=False)
        except UpgradeWrongState:
            continue  # failed in the admin, or taken over by someone else meanwhile
        recovered += 1
    return recovered


def upgrade_apply(*, upgrade: Upgrade) -> Upgrade:
    """Merge a claimed, approved upgrade into its target branch, renewing the claim's lease meanwhile.

    A target that already contains the upgrade's commit (a worker died after merging it) is recorded as applied
    with that merge, never merged twice. If the target moved since the proposal, its tests are first run on the
    merged result. A conflict, failing tests or a live tree with uncommitted changes leave the target as it was and
    fail the upgrade with the reason; a target that moves during the merge is retried later. A worker that lost its
    claim meanwhile records nothing: the upgrade is someone else's now."""
    worker_id = upgrade.claimed_by
    if not worker_id:
        raise UpgradeWrongState(f"Upgrade {upgrade.pk} is not claimed: only a worker that claimed it applies it.")
    try:
        with LeaseKeeper(
            lambda: upgrade_lease_renew(upgrade_id=upgrade.pk, worker_id=worker_id), name=f"lease-upgrade-{upgrade.pk}"
        ):
            return _apply(upgrade, worker_id=worker_id)
    except UpgradeClaimLost as exc:
        logger.warning("%s This worker's outcome is dropped.", exc)
        upgrade.refresh_from_db()
        return upgrade


def _apply(upgrade: Upgrade, *, worker_id: str) -> Upgrade:
    repo = Path(upgrade.repo_path)
    expected = None
    try:
        done = _merged_already(upgrade)
        if done is not None:
            applied = upgrade_mark_applied(
                upgrade_id=upgrade.pk,
                applied_commit=done.merge_sha,
                replaced_commit=done.previous_sha,
                worker_id=worker_id,
                already_merged=True,
            )
            _clean_up(applied, delete_branch=False)
            return applied
        # What was tested and reviewed is the proposal's head commit: a branch moved since then is not merged.
        branch_head = gitops.head_sha(repo, f"refs/heads/{upgrade.branch}")
        if upgrade.head_commit and branch_head != upgrade.head_commit:
            return upgrade_mark_failed(
                upgrade_id=upgrade.pk,
                reason=(
                    f"Not applied: branch {upgrade.branch} moved after it was proposed (it is at {branch_head[:12]}, "
                    f"the tested and reviewed commit is {upgrade.head_commit[:12]}). Propose the new commit again."
                ),
                worker_id=worker_id,
            )
        if gitops.target_moved(repo, upgrade.target_branch, upgrade.base_commit):
            merged = gitops.merged_worktree(
                repo,
                target_branch=upgrade.target_branch,
                branch=upgrade.branch,
                worktrees_dir=worktrees_dir(),
                author_name=AUTHOR_NAME,
                author_email=AUTHOR_EMAIL,
            )
            try:
                run = run_proposal_tests(merged.path)
            finally:
                gitops.remove_worktree(repo, merged.path)
            results = test_results_of(run, settings.SELF_MODIFY_TEST_COMMAND) | {"on_merged_result": True}
            if not run.passed:
                outcome = (
                    f"the tests were not run on the merged result: no sandbox can be made here ({run.not_run})."
                    if run.not_run
                    else "the tests fail on the merged result."
                )
                return upgrade_mark_failed(
                    upgrade_id=upgrade.pk,
                    reason=f"{upgrade.target_branch} moved since the proposal; {outcome}",
                    test_results=results,
                    worker_id=worker_id,
                )
            expected = merged.target_sha
        result = gitops.merge_into_target(
            repo,
            target_branch=upgrade.target_branch,
            branch=upgrade.branch,
            message=f"Merge upgrade {upgrade.pk}: {upgrade.description[:200]}",
            author_name=AUTHOR_NAME,
            author_email=AUTHOR_EMAIL,
            expected_target_sha=expected,
        )
    except gitops.BranchMoved:
        Upgrade.objects.filter(pk=upgrade.pk, status=Upgrade.Status.APPROVED, claimed_by=worker_id).update(
            claimed_by="", lease_expires_at=None
        )
        upgrade.refresh_from_db()
        return upgrade
    except gitops.MergeConflict as exc:
        return upgrade_mark_failed(upgrade_id=upgrade.pk, reason=f"Merge conflict: {exc}", worker_id=worker_id)
    except gitops.TreeNotClean as exc:
        return upgrade_mark_failed(upgrade_id=upgrade.pk, reason=f"Not applied: {exc}", worker_id=worker_id)
    except gitops.GitOpsError as exc:
        return upgrade_mark_failed(upgrade_id=upgrade.pk, reason=str(exc), worker_id=worker_id)
    applied = upgrade_mark_applied(
        upgrade_id=upgrade.pk, applied_commit=result.merge_sha, replaced_commit=result.previous_sha, worker_id=worker_id
    )
    _clean_up(applied, delete_branch=False)
    return applied


# --- Rollbacks: asked for in the admin or by the command, done by the worker with a revert commit ---

# The last line is git's own for a revert: gitops.revert_of finds it, and so a revert made by hand.
ROLLBACK_MESSAGE = "Roll back upgrade {pk}: {description}\n\nThis reverts commit {merge}."


def _rollback_queued() -> Q:
    return Q(status=Upgrade.Status.APPLIED, rollback_requested_at__isnull=False)


def upgrade_rollback_request(*, upgrade_id: int, actor: Any) -> Upgrade:
    """Queue the rollback of an applied upgrade; a worker reverts it (upgrade_rollback_run)."""
    _require_permission(actor)
    with transaction.atomic():
        queued = Upgrade.objects.filter(
            pk=upgrade_id, status=Upgrade.Status.APPLIED, rollback_requested_at__isnull=True
        ).update(rollback_requested_at=timezone.now(), rollback_requested_by=actor, rollback_error="")
        upgrade = Upgrade.objects.select_related("rollback_requested_by").filter(pk=upgrade_id).first()
        if upgrade is None:
            raise UpgradeNotFound(f"Upgrade {upgrade_id} not found.")
        if not queued:
            if upgrade.status == Upgrade.Status.ROLLED_BACK:
                raise UpgradeWrongState(
                    f"Upgrade {upgrade_id} is already rolled back (commit {upgrade.revert_commit[:12]})."
                )
            if upgrade.status != Upgrade.Status.APPLIED:
                raise UpgradeWrongState(
                    f"Upgrade {upgrade_id} is {upgrade.status}; only an applied upgrade can be rolled back."
                )
            if upgrade.claimed_by:
                raise UpgradeRollbackQueued(
                    f"Upgrade {upgrade_id} is already being rolled back (by worker {upgrade.claimed_by})."
                )
            raise UpgradeRollbackQueued(
                f"The rollback of upgrade {upgrade_id} is already queued (asked for by "
                f"{_actor_name(upgrade.rollback_requested_by)}): a worker reverts it."
            )
        _log(upgrade, "upgrade.rollback_requested", actor)
    return upgrade


def upgrade_rollback_claim(*, worker_id: str, lease_seconds: int | None = None) -> Upgrade | None:
    """The oldest queued rollback no worker is doing, claimed by this one for a lease it renews while it reverts,
    as for applying upgrades."""
    for upgrade_id in (
        Upgrade.objects.filter(_rollback_queued(), claimed_by="")
        .order_by("rollback_requested_at", "id")
        .values_list("id", flat=True)[:5]
    ):
        with transaction.atomic():
            if not Upgrade.objects.filter(_rollback_queued(), pk=upgrade_id, claimed_by="").update(
                claimed_by=worker_id,
                lease_expires_at=_lease_end(lease_seconds),
                rollback_attempts=F("rollback_attempts") + 1,
            ):
                continue
            upgrade = Upgrade.objects.select_related("rollback_requested_by").get(pk=upgrade_id)
            _log(upgrade, "upgrade.rolling_back", None, worker=worker_id, attempt=upgrade.rollback_attempts)
        return upgrade
    return None


def upgrade_rollback_lease_renew(*, upgrade_id: int, worker_id: str, lease_seconds: int | None = None) -> bool:
    return bool(
        Upgrade.objects.filter(_rollback_queued(), pk=upgrade_id, claimed_by=worker_id).update(
            lease_expires_at=_lease_end(lease_seconds)
        )
    )


def upgrade_rollback_fail(*, upgrade_id: int, reason: str, worker_id: str | None = None) -> Upgrade:
    """The upgrade stays applied, with the reason; its rollback is no longer queued and can be asked for again.
    With `worker_id`, only while that worker still holds the claim (UpgradeClaimLost otherwise)."""
    with transaction.atomic():
        upgrade = _move(
            upgrade_id,
            (Upgrade.Status.APPLIED,),
            Upgrade.Status.APPLIED,
            where=_held_by(worker_id),
            rollback_error=reason[: REASON_MAX * 4],
            rollback_requested_at=None,
            claimed_by="",
            lease_expires_at=None,
        )
        worker = {} if worker_id is None else {"worker": worker_id}
        _log(upgrade, "upgrade.rollback_failed", upgrade.rollback_requested_by, reason=reason[:REASON_MAX], **worker)
    return upgrade


def upgrade_rollback_release(*, upgrade_id: int, worker_id: str, reason: str) -> bool:
    """Give back a rollback this worker is doing (it is stopping, or the target moved under it), for the next worker;
    that one notices a revert this one already committed. False if the claim was no longer this worker's."""
    with transaction.atomic():
        held = Upgrade.objects.filter(_rollback_queued(), pk=upgrade_id, claimed_by=worker_id)
        if not held.update(claimed_by="", lease_expires_at=None, rollback_attempts=F("rollback_attempts") - 1):
            return False
        upgrade = Upgrade.objects.get(pk=upgrade_id)
        _log(upgrade, "upgrade.rollback_released", None, worker=worker_id, reason=reason)
    return True


def _reverted_already(upgrade: Upgrade) -> str | None:
    return gitops.revert_of(
        Path(upgrade.repo_path), target_branch=upgrade.target_branch, merge_sha=upgrade.applied_commit
    )


def upgrade_rollbacks_recover_stale(*, worker_id: str, now: datetime | None = None) -> int:
    """Give back rollbacks whose worker stopped renewing its claim's lease: to the queue if attempts remain
    (TASK_MAX_ATTEMPTS; the next run notices a revert the dead worker already committed), else, taken over by
    `worker_id`, recorded as rolled back if the target already has the revert, or failed with the reason."""
    now = now or timezone.now()
    stale = list(
        Upgrade.objects.filter(_stale(now), _rollback_queued()).values_list("id", "claimed_by", "rollback_attempts")[
            :100
        ]
    )
    recovered = 0
    for upgrade_id, worker, attempts in stale:
        why = f"worker {worker} stopped renewing its lease"
        held = Upgrade.objects.filter(_stale(now), _rollback_queued(), pk=upgrade_id, claimed_by=worker)
        if attempts < settings.TASK_MAX_ATTEMPTS:
            with transaction.atomic():
                if not held.update(claimed_by="", lease_expires_at=None):
                    continue
                upgrade = Upgrade.objects.get(pk=upgrade_id)
                _log(
                    upgrade,
                    "upgrade.rollback_released",
                    None,
                    worker=worker,
                    attempts=attempts,
                    reason=f"{why}; will retry",
                )
            recovered += 1
            continue
        if not held.update(claimed_by=worker_id, lease_expires_at=_lease_end()):
            continue
        upgrade = Upgrade.objects.select_related("rollback_requested_by").get(pk=upgrade_id)
        reason = f"{why} after {attempts} attempts"
        try:
            revert = _reverted_already(upgrade)
        except gitops.GitOpsError as exc:
            revert, reason = None, f"{reason}; git could not tell whether it was reverted: {exc}"
        try:
            if revert is None:
                upgrade_rollback_fail(upgrade_id=upgrade_id, reason=reason, worker_id=worker_id)
                logger.warning("upgrade %s was not rolled back: %s", upgrade_id, reason)
            else:
                upgrade_mark_rolled_back(
                    upgrade_id=upgrade_id,
                    revert_commit=revert,
                    actor=upgrade.rollback_requested_by,
                    worker_id=worker_id,
                    already_reverted=True,
                )
        except UpgradeWrongState:
            continue  # taken over by someone else meanwhile
        recovered += 1
    return recovered


def upgrade_rollback_run(*, upgrade: Upgrade) -> Upgrade:
    """Undo a claimed rollback's merge with a revert commit on its target branch, renewing the claim's lease
    meanwhile.

    A target that already has a revert of the merge (a worker died after committing it, or the owner reverted it by
    hand) is recorded as rolled back with that commit, never reverted twice. A conflict with later changes or a live
    tree with uncommitted changes leave the target as it was and the upgrade applied, with the reason; a target that
    moves during the revert is retried. A worker that lost its claim meanwhile records nothing."""
    worker_id = upgrade.claimed_by
    if not worker_id:
        raise UpgradeWrongState(f"Upgrade {upgrade.pk} is not claimed: only a worker that claimed it rolls it back.")
    try:
        with LeaseKeeper(
            lambda: upgrade_rollback_lease_renew(upgrade_id=upgrade.pk, worker_id=worker_id),
            name=f"lease-rollback-{upgrade.pk}",
        ):
            return _roll_back(upgrade, worker_id=worker_id)
    except UpgradeClaimLost as exc:
        logger.warning("%s This worker's rollback outcome is dropped.", exc)
        upgrade.refresh_from_db()
        return upgrade


def _roll_back(upgrade: Upgrade, *, worker_id: str) -> Upgrade:
    actor = upgrade.rollback_requested_by
    try:
        done = _reverted_already(upgrade)
        if done is not None:
            return upgrade_mark_rolled_back(
                upgrade_id=upgrade.pk, revert_commit=done, actor=actor, worker_id=worker_id, already_reverted=True
            )
        revert = gitops.revert_merge(
            Path(upgrade.repo_path),
            target_branch=upgrade.target_branch,
            merge_sha=upgrade.applied_commit,
            message=ROLLBACK_MESSAGE.format(
                pk=upgrade.pk, description=upgrade.description[:200], merge=upgrade.applied_commit
            ),
            author_name=AUTHOR_NAME,
            author_email=AUTHOR_EMAIL,
        )
    except gitops.BranchMoved as exc:
        upgrade_rollback_release(upgrade_id=upgrade.pk, worker_id=worker_id, reason=f"{exc}; will retry")
        upgrade.refresh_from_db()
        return upgrade
    except gitops.GitOpsError as exc:
        return upgrade_rollback_fail(upgrade_id=upgrade.pk, reason=f"Not rolled back: {exc}", worker_id=worker_id)
    return upgrade_mark_rolled_back(upgrade_id=upgrade.pk, revert_commit=revert, actor=actor, worker_id=worker_id)


def request_task_claim(request_id: int) -> str:
    """What a swarm task waiting on change request `request_id` is claimed by (swarm.services.task_wait)."""
    return f"change-request {request_id}"


def _request_task_outcome(*, request_id: int, task_id: int | None, upgrade: Upgrade | None, error: str) -> None:
    """Complete the swarm task that waits on this request with the upgrade it proposed, or fail it with the drafting
    error. A task no longer waiting on it (failed in the admin, or already ended by an earlier outcome of a retried
    request) is left as it is."""
    if task_id is None:
        return
    claim = request_task_claim(request_id)
    try:
        if upgrade is not None:
            tests = "its tests pass" if upgrade.tests_passed else "its tests FAIL"
            result = (
                f"Proposed upgrade {upgrade.pk}: {upgrade.description} ({tests}). Review it at "
                f"{reverse('upgrades:diff', args=[upgrade.pk])}: it is merged only once a person approves it."
            )
            swarm_services.task_complete(task_id=task_id, result=result, claimed_by=claim)
        else:
            reason = f"Change request {request_id} failed: {error or 'no upgrade was proposed'}"
            swarm_services.task_fail(task_id=task_id, reason=reason, claimed_by=claim)
    except (swarm_services.TaskWrongState, swarm_services.TaskNotFound) as exc:
        logger.info("task %s is no longer waiting on change request %s (%s)", task_id, request_id, exc)


def upgrade_request_finish(*, request: UpgradeRequest, upgrade: Upgrade | None = None, error: str = "") -> None:
    """Record the draft's outcome, unless the worker that claimed `request` lost it meanwhile (UpgradeClaimLost:
    it stalled past its lease and the request was given back). The task waiting on it, if any, ends with it."""
    status = UpgradeRequest.Status.DONE if upgrade is not None else UpgradeRequest.Status.FAILED
    with transaction.atomic():
        if not UpgradeRequest.objects.filter(
            pk=request.pk, status=UpgradeRequest.Status.RUNNING, claimed_by=request.claimed_by
        ).update(
            status=status,
            upgrade=upgrade,
            error_message=error[:4000],
            finished_at=timezone.now(),
            lease_expires_at=None,
        ):
            raise UpgradeClaimLost(f"Change request {request.pk} is no longer claimed by {request.claimed_by}.")
        if upgrade is None:
            log_event(
                "upgrade.request_failed",
                source=SOURCE,
                task_id=request.task_id,
                data={"request_id": request.pk, "reason": error[:REASON_MAX]},
            )
        _request_task_outcome(request_id=request.pk, task_id=request.task_id, upgrade=upgrade, error=error)
