"""Work a worker left behind when it died: an approved upgrade it was applying, a change request it was drafting.
Real git repositories and the real worker steps; a worker that "died" is one whose claim's lease ran out."""

import shlex
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import git
import pytest
from django.db import connections
from django.utils import timezone

from apps.core.services import worker_default_id
from apps.events.models import Event
from apps.upgrades import gitops, loop, services, worker
from apps.upgrades.models import Upgrade, UpgradeRequest
from tests.upgrades.test_gitops import CALC, IDENTITY, WHO, commit_on
from tests.upgrades.test_loop import GOOD

pytestmark = pytest.mark.usefixtures("isolated_git_config")


def claimed_by_a_dead_worker(upgrade: Upgrade) -> Upgrade:
    """Claimed by worker w1, which then died: its lease ran out a second ago."""
    claimed = services.upgrade_claim(worker_id="w1")
    assert claimed is not None and claimed.pk == upgrade.pk
    Upgrade.objects.filter(pk=upgrade.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    return claimed


def merges(repo: Path) -> list[str]:
    with git.Repo(repo) as r:
        return r.git.rev_list("--merges", "main").split()


def data_of(kind: str) -> list[dict]:
    return [e.data for e in Event.objects.filter(event_type=kind).order_by("id")]


# Approved upgrades


def test_an_upgrade_whose_worker_died_is_released_and_applied_exactly_once_by_another_worker(repo, approved):
    claimed_by_a_dead_worker(approved)
    assert worker.apply_approved_upgrades(timezone.now()) == 0  # still w1's until the recovery runs

    assert worker.recover_stale_upgrades(timezone.now()) == 1
    released = Upgrade.objects.get(pk=approved.pk)
    assert (released.status, released.claimed_by, released.lease_expires_at) == ("approved", "", None)
    [event] = data_of("upgrade.released")
    assert (event["worker"], event["attempts"]) == ("w1", 1)
    assert event["reason"] == "worker w1 stopped renewing its lease; will retry"

    assert worker.apply_approved_upgrades(timezone.now()) == 1
    applied = Upgrade.objects.get(pk=approved.pk)
    assert applied.status == Upgrade.Status.APPLIED, applied.error_message
    assert (applied.apply_attempts, applied.claimed_by, applied.lease_expires_at) == (2, "", None)
    assert merges(repo) == [applied.applied_commit] == [gitops.head_sha(repo, "main")]
    assert "def sub" in (repo / "pkg/calc.py").read_text()
    assert [(e["worker"], e["attempt"]) for e in data_of("upgrade.applying")] == [
        ("w1", 1),
        (worker_default_id(), 2),
    ]
    assert worker.recover_stale_upgrades(timezone.now()) == 0
    assert worker.apply_approved_upgrades(timezone.now()) == 0
    assert merges(repo) == [applied.applied_commit]


def test_an_upgrade_whose_branch_moved_after_approval_is_not_applied(repo, approved):
    with git.Repo(approved.worktree_path) as tree:
        (Path(approved.worktree_path) / "pkg/extra.py").write_text("print('not reviewed')\n")
        tree.git.add("--all")
        tree.git.commit("-m", "after review", env=IDENTITY)

    assert worker.apply_approved_upgrades(timezone.now()) == 1

    failed = Upgrade.objects.get(pk=approved.pk)
    assert failed.status == Upgrade.Status.FAILED
    assert "moved after it was proposed" in failed.error_message
    assert approved.head_commit[:12] in failed.error_message
    assert merges(repo) == []
    assert not (repo / "pkg/extra.py").exists()


def test_a_merge_the_dead_worker_made_is_recorded_as_applied_without_a_second_merge_commit(repo, approved):
    claimed_by_a_dead_worker(approved)
    # w1 merged, then died before it could record it.
    merged = gitops.merge_into_target(
        repo, target_branch="main", branch="self-modify/add-sub-1", message=f"Merge upgrade {approved.pk}", **WHO
    )

    assert worker.recover_stale_upgrades(timezone.now()) == 1
    assert worker.apply_approved_upgrades(timezone.now()) == 1

    applied = Upgrade.objects.get(pk=approved.pk)
    assert applied.status == Upgrade.Status.APPLIED, applied.error_message
    assert (applied.applied_commit, applied.replaced_commit) == (merged.merge_sha, merged.previous_sha)
    assert merges(repo) == [merged.merge_sha] and gitops.head_sha(repo, "main") == merged.merge_sha
    assert data_of("upgrade.applied")[-1]["already_merged"] is True
    assert not Path(applied.worktree_path).exists()


def test_an_upgrade_claimed_under_a_live_lease_is_left_alone(repo, approved):
    services.upgrade_claim(worker_id="w1")
    before = gitops.head_sha(repo, "main")
    assert worker.recover_stale_upgrades(timezone.now()) == 0
    assert worker.apply_approved_upgrades(timezone.now()) == 0
    claimed = Upgrade.objects.get(pk=approved.pk)
    assert (claimed.status, claimed.claimed_by) == ("approved", "w1")
    assert claimed.lease_expires_at is not None and claimed.lease_expires_at > timezone.now()
    assert gitops.head_sha(repo, "main") == before and not data_of("upgrade.released")


def test_an_upgrade_out_of_attempts_fails_naming_the_worker_and_leaves_the_target(repo, approved, settings):
    settings.TASK_MAX_ATTEMPTS = 1
    claimed_by_a_dead_worker(approved)
    before = gitops.head_sha(repo, "main")
    assert worker.recover_stale_upgrades(timezone.now()) == 1
    failed = Upgrade.objects.get(pk=approved.pk)
    assert failed.status == Upgrade.Status.FAILED
    assert failed.error_message == "worker w1 stopped renewing its lease after 1 attempts"
    assert data_of("upgrade.failed")[-1]["reason"] == failed.error_message
    assert gitops.head_sha(repo, "main") == before and merges(repo) == []


def test_an_upgrade_out_of_attempts_that_the_dead_worker_had_merged_is_recorded_applied(repo, approved, settings):
    settings.TASK_MAX_ATTEMPTS = 1
    claimed_by_a_dead_worker(approved)
    merged = gitops.merge_into_target(
        repo, target_branch="main", branch="self-modify/add-sub-1", message="Merge", **WHO
    )
    assert worker.recover_stale_upgrades(timezone.now()) == 1
    applied = Upgrade.objects.get(pk=approved.pk)
    assert (applied.status, applied.applied_commit) == (Upgrade.Status.APPLIED, merged.merge_sha)
    assert merges(repo) == [merged.merge_sha]


def test_a_worker_that_comes_back_after_losing_its_claim_records_nothing(repo, approved):
    stale = claimed_by_a_dead_worker(approved)
    worker.recover_stale_upgrades(timezone.now())
    services.upgrade_claim(worker_id="w2")

    # w1 wakes up and finishes its merge, but the record is no longer w1's to make.
    assert services.upgrade_apply(upgrade=stale).status == Upgrade.Status.APPROVED
    assert Upgrade.objects.get(pk=approved.pk).claimed_by == "w2"

    # w2 finds w1's merge on the target and records it instead of merging again.
    applied = services.upgrade_apply(upgrade=Upgrade.objects.get(pk=approved.pk))
    assert applied.status == Upgrade.Status.APPLIED
    assert merges(repo) == [applied.applied_commit]
    assert data_of("upgrade.applied")[-1]["already_merged"] is True


def test_the_lease_is_renewed_while_the_merged_result_is_tested(transactional_db, repo, approved, settings):
    settings.TASK_LEASE_SECONDS = 1  # renewed every third of a second
    # The target moved, so the tests run again on the merged result; this "suite" takes twice the lease.
    settings.SELF_MODIFY_TEST_COMMAND = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(2)'"
    commit_on(repo, "main", {"README.md": "# tiny, moved\n"})
    runner = threading.Thread(target=lambda: (worker.apply_approved_upgrades(timezone.now()), connections.close_all()))
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while not Upgrade.objects.filter(pk=approved.pk).exclude(claimed_by="").exists():
            assert time.monotonic() < deadline, "the upgrade was never claimed"
            time.sleep(0.02)
        time.sleep(1.5)  # past the first lease
        assert worker.recover_stale_upgrades(timezone.now()) == 0
        applying = Upgrade.objects.get(pk=approved.pk)
        assert applying.status == Upgrade.Status.APPROVED
        assert applying.lease_expires_at is not None and applying.lease_expires_at > timezone.now()
    finally:
        runner.join(timeout=30)
    applied = Upgrade.objects.get(pk=approved.pk)
    assert applied.status == Upgrade.Status.APPLIED, applied.error_message
    assert applied.apply_attempts == 1 and merges(repo) == [applied.applied_commit]


# Change requests


@pytest.fixture
def request_of_a_dead_worker(db) -> UpgradeRequest:
    """A change request worker w1 claimed to draft, then died: its lease ran out a second ago."""
    request = services.upgrade_request_create(instruction="Add sub", actor=None)
    claimed = services.upgrade_request_claim(worker_id="w1")
    assert claimed is not None and claimed.pk == request.pk
    UpgradeRequest.objects.filter(pk=request.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    claimed.refresh_from_db()
    return claimed


def test_a_request_whose_worker_died_mid_draft_is_queued_again_and_drafted_once(repo, model, request_of_a_dead_worker):
    server = model(GOOD)
    request = request_of_a_dead_worker
    # w1 had started: its branch and worktree are there, with nothing proposed yet.
    leftover = gitops.create_worktree(
        repo, branch=f"self-modify/add-sub-{request.pk}", base="main", worktrees_dir=services.worktrees_dir()
    )

    assert worker.recover_stale_upgrades(timezone.now()) == 1
    assert UpgradeRequest.objects.get(pk=request.pk).status == UpgradeRequest.Status.QUEUED
    [event] = data_of("upgrade.request_released")
    assert (event["request_id"], event["worker"], event["attempts"]) == (request.pk, "w1", 1)

    assert worker.run_upgrade_requests(timezone.now()) == 1
    done = UpgradeRequest.objects.get(pk=request.pk)
    assert (done.status, done.attempts, done.lease_expires_at) == (UpgradeRequest.Status.DONE, 2, None)
    upgrade = Upgrade.objects.get()
    assert done.upgrade == upgrade and upgrade.tests_passed and upgrade.branch == f"self-modify/add-sub-{request.pk}"
    assert len(server.chats) == 1
    assert Path(upgrade.worktree_path) == leftover and (leftover / "pkg/calc.py").read_text() != CALC


def test_a_request_whose_worker_died_after_proposing_is_finished_with_that_proposal(
    repo, model, request_of_a_dead_worker
):
    server = model(GOOD)
    request = request_of_a_dead_worker
    proposed = loop.draft(instruction=request.instruction, request_id=request.pk)  # w1 got this far

    worker.recover_stale_upgrades(timezone.now())
    assert worker.run_upgrade_requests(timezone.now()) == 1

    done = UpgradeRequest.objects.get(pk=request.pk)
    assert (done.status, done.upgrade) == (UpgradeRequest.Status.DONE, proposed)
    assert Upgrade.objects.count() == 1 and len(server.chats) == 1


def test_a_request_out_of_attempts_fails_naming_the_worker(request_of_a_dead_worker, settings):
    settings.TASK_MAX_ATTEMPTS = 1
    assert worker.recover_stale_upgrades(timezone.now()) == 1
    failed = UpgradeRequest.objects.get(pk=request_of_a_dead_worker.pk)
    assert failed.status == UpgradeRequest.Status.FAILED and failed.finished_at is not None
    assert failed.error_message == "worker w1 stopped renewing its lease after 1 attempts"
    [event] = data_of("upgrade.request_failed")
    assert (event["worker"], event["reason"]) == ("w1", failed.error_message)


def test_a_request_drafted_under_a_live_lease_is_left_alone(request_of_a_dead_worker):
    request = request_of_a_dead_worker
    assert services.upgrade_request_lease_renew(request_id=request.pk, worker_id="w1")
    assert not services.upgrade_request_lease_renew(request_id=request.pk, worker_id="w2")
    assert worker.recover_stale_upgrades(timezone.now()) == 0
    running = UpgradeRequest.objects.get(pk=request.pk)
    assert (running.status, running.claimed_by) == (UpgradeRequest.Status.RUNNING, "w1")


def test_a_worker_that_comes_back_after_losing_its_request_does_not_finish_it(request_of_a_dead_worker):
    stale = request_of_a_dead_worker
    worker.recover_stale_upgrades(timezone.now())
    services.upgrade_request_claim(worker_id="w2")
    with pytest.raises(services.UpgradeClaimLost):
        services.upgrade_request_finish(request=stale, error="w1's late answer")
    running = UpgradeRequest.objects.get(pk=stale.pk)
    assert (running.status, running.claimed_by, running.error_message) == ("running", "w2", "")
