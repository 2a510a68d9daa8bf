"""Rollbacks are asked for in the admin or by the command and done by the worker: queued, claimed with a lease,
reverted once on a real git repository, failed with the reason, recovered after a worker died, handed back when a
worker stops."""

import signal
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path

import git
import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.core.services import worker_default_id, worker_register
from apps.upgrades import gitops, services, worker
from apps.upgrades.models import Upgrade
from tests.factories import StaffFactory
from tests.upgrades.conftest import SUB
from tests.upgrades.test_admin import messages_of, run_action
from tests.upgrades.test_gitops import CALC, IDENTITY, WHO, commit_on
from tests.upgrades.test_recovery import data_of

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("isolated_git_config")


@pytest.fixture
def applied(repo: Path, approved: Upgrade) -> Upgrade:
    """An upgrade the worker merged into main, the live branch of `repo`."""
    assert worker.apply_approved_upgrades(timezone.now()) == 1
    upgrade = Upgrade.objects.get(pk=approved.pk)
    assert upgrade.status == Upgrade.Status.APPLIED, upgrade.error_message
    return upgrade


@pytest.fixture
def reviewer_client(reviewer) -> Client:
    client = Client()
    client.force_login(reviewer)
    return client


def reverts(repo: Path) -> list[str]:
    with git.Repo(repo) as r:
        return r.git.rev_list("--grep=This reverts commit", "main").split()


def change_page(client: Client, upgrade: Upgrade) -> str:
    return client.get(reverse("admin:upgrades_upgrade_change", args=[upgrade.pk])).content.decode()


def claimed_by_a_dead_worker(upgrade: Upgrade) -> Upgrade:
    """Its rollback claimed by worker w1, which then died: the lease ran out a second ago."""
    claimed = services.upgrade_rollback_claim(worker_id="w1")
    assert claimed is not None and claimed.pk == upgrade.pk
    Upgrade.objects.filter(pk=upgrade.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    return claimed


def revert_as_the_worker_would(repo: Path, upgrade: Upgrade) -> str:
    message = services.ROLLBACK_MESSAGE.format(pk=upgrade.pk, description="Add sub", merge=upgrade.applied_commit)
    return gitops.revert_merge(repo, target_branch="main", merge_sha=upgrade.applied_commit, message=message, **WHO)


# Asking for it


def test_rolling_back_in_the_admin_queues_it_and_the_worker_reverts_it_once(repo, applied, reviewer, reviewer_client):
    worker_register(worker_id="w-alive")
    before = gitops.head_sha(repo, "main")

    response = run_action(reviewer_client, "roll_back_upgrades", [applied], confirm="yes")

    assert messages_of(response) == [f"Rollback of upgrade {applied.pk} queued: a worker reverts it in a moment."]
    queued = Upgrade.objects.get(pk=applied.pk)
    assert queued.status == Upgrade.Status.APPLIED and queued.rollback_queued
    assert queued.rollback_requested_by == reviewer
    assert gitops.head_sha(repo, "main") == before  # nothing reverted inside the request
    assert data_of("upgrade.rollback_requested")[0]["by"] == "reviewer"
    page = change_page(reviewer_client, applied)
    assert 'id="upgrade-rollback"' in page and "by reviewer: a worker reverts it in a moment" in page
    assert "No worker is running" not in page

    assert worker.run_rollbacks(timezone.now()) == 1

    rolled = Upgrade.objects.get(pk=applied.pk)
    assert rolled.status == Upgrade.Status.ROLLED_BACK
    assert (rolled.claimed_by, rolled.lease_expires_at, rolled.rollback_attempts) == ("", None, 1)
    assert gitops.head_sha(repo, "main") == rolled.revert_commit and reverts(repo) == [rolled.revert_commit]
    assert (repo / "pkg/calc.py").read_text() == CALC
    with git.Repo(repo) as r:
        assert r.commit(rolled.revert_commit).message.startswith(f"Roll back upgrade {applied.pk}: Add sub")
    [event] = data_of("upgrade.rolled_back")
    assert (event["by"], event["commit"], event["worker"]) == ("reviewer", rolled.revert_commit, worker_default_id())
    assert worker.run_rollbacks(timezone.now()) == 0
    assert reverts(repo) == [rolled.revert_commit]


def test_the_admin_says_when_no_worker_is_running_and_refuses_a_second_request(applied, reviewer_client):
    response = run_action(reviewer_client, "roll_back_upgrades", [applied], confirm="yes")
    assert messages_of(response) == [
        f"Rollback of upgrade {applied.pk} queued: a worker reverts it in a moment.",
        "No worker is running, so nothing is rolled back yet: start one (`manage.py run_worker`, or `make run`) and "
        "it picks the queued rollbacks up.",
    ]
    assert "No worker is running: the rollback waits until one starts" in change_page(reviewer_client, applied)

    page = run_action(reviewer_client, "roll_back_upgrades", [applied]).content.decode()
    assert "skipped: its rollback is already queued" in page
    response = run_action(reviewer_client, "roll_back_upgrades", [applied], confirm="yes")
    assert messages_of(response) == [
        "No rollback queued.",
        f"Skipped 1: #{applied.pk}'s rollback is already queued.",
    ]
    assert len(data_of("upgrade.rollback_requested")) == 1


def test_the_command_queues_the_rollback_and_refuses_a_second_request(repo, applied):
    out, err = StringIO(), StringIO()
    call_command("upgrades", "rollback", str(applied.pk), "--user", "reviewer", stdout=out, stderr=err)
    assert out.getvalue() == f"Rollback of upgrade {applied.pk} queued: a worker reverts it in a moment.\n"
    assert "No worker is running" in err.getvalue()
    assert Upgrade.objects.get(pk=applied.pk).rollback_queued and reverts(repo) == []

    with pytest.raises(CommandError, match=r"already queued \(asked for by reviewer\): a worker reverts it"):
        call_command("upgrades", "rollback", str(applied.pk), "--user", "reviewer")
    services.upgrade_rollback_claim(worker_id="w1")
    with pytest.raises(CommandError, match="already being rolled back \\(by worker w1\\)"):
        call_command("upgrades", "rollback", str(applied.pk), "--user", "reviewer")
    listing = StringIO()
    call_command("upgrades", "list", stdout=listing)
    assert "(rollback queued)" in listing.getvalue()


def test_the_command_refuses_a_missing_or_unapplied_upgrade_a_user_without_permission_and_a_bad_wait(approved):
    StaffFactory(username="viewer")
    with pytest.raises(CommandError, match="Upgrade 999999 not found"):
        call_command("upgrades", "rollback", "999999", "--user", "reviewer")
    with pytest.raises(CommandError, match="is approved; only an applied upgrade can be rolled back"):
        call_command("upgrades", "rollback", str(approved.pk), "--user", "reviewer")
    with pytest.raises(CommandError, match=r"needs the permission upgrades\.approve_upgrade"):
        call_command("upgrades", "rollback", str(approved.pk), "--user", "viewer")
    with pytest.raises(CommandError, match="--wait takes 0 to 86400 seconds, not -1"):
        call_command("upgrades", "rollback", str(approved.pk), "--user", "reviewer", "--wait", "-1")
    assert not data_of("upgrade.rollback_requested")


def test_the_command_help_says_the_worker_does_the_rollback_and_how_to_wait(capsys):
    with pytest.raises(SystemExit):
        call_command("upgrades", "rollback", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "Queue the rollback of an applied upgrade. The worker (`run_worker`) reverts its merge" in text
    assert "--wait SECONDS" in text and "exits non-zero if the rollback failed or is not done in time" in text


def test_waiting_with_no_worker_times_out_with_an_error_and_leaves_the_rollback_queued(applied):
    with pytest.raises(CommandError, match=f"Upgrade {applied.pk} is not rolled back after 0.3 s: it is still queued"):
        call_command("upgrades", "rollback", str(applied.pk), "--user", "reviewer", "--wait", "0.3", stdout=StringIO())
    assert Upgrade.objects.get(pk=applied.pk).rollback_queued


def test_the_command_waits_for_a_real_worker_and_reports_a_failure_then_the_revert(
    transactional_db, repo, applied, subprocess_env
):
    # The owner changed the upgrade's lines since: the revert conflicts.
    own = commit_on(repo, "main", {"pkg/calc.py": SUB.replace("a - b", "-(b - a)")})
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_worker", "--worker-id", "rollback-1"],
        cwd=ROOT,
        env={**subprocess_env, "PRELOAD_MODELS": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with pytest.raises(CommandError, match=r"was not rolled back: Not rolled back: reverting .* conflicts"):
            call_command(
                "upgrades", "rollback", str(applied.pk), "--user", "reviewer", "--wait", "60", stdout=StringIO()
            )
        assert gitops.head_sha(repo, "main") == own

        # The owner takes their change back; asked again, the rollback goes through.
        with git.Repo(repo) as r:
            r.git.revert("--no-edit", own, env=IDENTITY)
        out = StringIO()
        call_command("upgrades", "rollback", str(applied.pk), "--user", "reviewer", "--wait", "60", stdout=out)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    rolled = Upgrade.objects.get(pk=applied.pk)
    assert rolled.status == Upgrade.Status.ROLLED_BACK and rolled.rollback_attempts == 2
    assert out.getvalue().splitlines()[-1] == f"Rolled back upgrade {applied.pk} with commit {rolled.revert_commit}."
    assert (repo / "pkg/calc.py").read_text() == CALC and gitops.head_sha(repo, "main") == rolled.revert_commit
    assert [e["worker"] for e in data_of("upgrade.rolling_back")] == ["rollback-1", "rollback-1"]


# Failing


def test_a_revert_that_conflicts_records_the_reason_leaves_it_applied_and_can_be_asked_again(
    repo, applied, reviewer, reviewer_client
):
    moved = commit_on(repo, "main", {"pkg/calc.py": SUB.replace("a - b", "-(b - a)")})
    services.upgrade_rollback_request(upgrade_id=applied.pk, actor=reviewer)

    assert worker.run_rollbacks(timezone.now()) == 1

    failed = Upgrade.objects.get(pk=applied.pk)
    assert failed.status == Upgrade.Status.APPLIED and not failed.rollback_queued
    assert (failed.claimed_by, failed.lease_expires_at, failed.revert_commit) == ("", None, "")
    assert failed.rollback_error.startswith(f"Not rolled back: reverting {applied.applied_commit[:12]} conflicts")
    assert "pkg/calc.py" in failed.rollback_error
    assert gitops.head_sha(repo, "main") == moved and not git.Repo(repo).is_dirty(untracked_files=True)
    [event] = data_of("upgrade.rollback_failed")
    assert (event["reason"], event["by"]) == (failed.rollback_error, "reviewer")
    page = change_page(reviewer_client, applied)
    assert 'id="upgrade-rollback-error"' in page and "conflicts with later changes" in page
    assert worker.run_rollbacks(timezone.now()) == 0

    again = services.upgrade_rollback_request(upgrade_id=applied.pk, actor=reviewer)
    assert again.rollback_queued and again.rollback_error == ""


def test_a_live_tree_with_uncommitted_work_is_never_reverted_into(repo, applied, reviewer):
    (repo / "notes.txt").write_text("work in progress\n")
    before = gitops.head_sha(repo, "main")
    services.upgrade_rollback_request(upgrade_id=applied.pk, actor=reviewer)
    worker.run_rollbacks(timezone.now())
    failed = Upgrade.objects.get(pk=applied.pk)
    assert failed.status == Upgrade.Status.APPLIED and "uncommitted changes or untracked files" in failed.rollback_error
    assert gitops.head_sha(repo, "main") == before and (repo / "notes.txt").exists()


# Never twice


def test_a_revert_made_by_hand_is_recorded_as_the_rollback_without_a_second_one(repo, applied, reviewer):
    with git.Repo(repo) as r:
        r.git.revert("-m", "1", "--no-edit", applied.applied_commit, env=IDENTITY)
    by_hand = gitops.head_sha(repo, "main")
    services.upgrade_rollback_request(upgrade_id=applied.pk, actor=reviewer)

    assert worker.run_rollbacks(timezone.now()) == 1

    rolled = Upgrade.objects.get(pk=applied.pk)
    assert (rolled.status, rolled.revert_commit) == (Upgrade.Status.ROLLED_BACK, by_hand)
    assert reverts(repo) == [by_hand] and data_of("upgrade.rolled_back")[0]["already_reverted"] is True


def test_a_stale_claim_whose_revert_was_committed_is_recorded_rolled_back_without_a_second_revert(
    repo, applied, reviewer
):
    services.upgrade_rollback_request(upgrade_id=applied.pk, actor=reviewer)
    claimed_by_a_dead_worker(applied)
    revert = revert_as_the_worker_would(repo, applied)  # w1 got this far, then died
    assert worker.run_rollbacks(timezone.now()) == 0  # still w1's until the recovery runs

    assert worker.recover_stale_upgrades(timezone.now()) == 1
    released = Upgrade.objects.get(pk=applied.pk)
    assert (released.claimed_by, released.lease_expires_at, released.rollback_queued) == ("", None, True)
    [event] = data_of("upgrade.rollback_released")
    assert (event["worker"], event["attempts"]) == ("w1", 1)
    assert event["reason"] == "worker w1 stopped renewing its lease; will retry"

    assert worker.run_rollbacks(timezone.now()) == 1
    rolled = Upgrade.objects.get(pk=applied.pk)
    assert (rolled.status, rolled.revert_commit, rolled.rollback_attempts) == (Upgrade.Status.ROLLED_BACK, revert, 2)
    assert reverts(repo) == [revert] and gitops.head_sha(repo, "main") == revert
    assert data_of("upgrade.rolled_back")[0]["already_reverted"] is True
    assert worker.recover_stale_upgrades(timezone.now()) == 0


@pytest.mark.parametrize("committed", [True, False], ids=["reverted", "not-reverted"])
def test_a_stale_claim_out_of_attempts_is_recorded_from_what_git_shows(repo, applied, reviewer, settings, committed):
    settings.TASK_MAX_ATTEMPTS = 1
    services.upgrade_rollback_request(upgrade_id=applied.pk, actor=reviewer)
    claimed_by_a_dead_worker(applied)
    revert = revert_as_the_worker_would(repo, applied) if committed else None
    before = gitops.head_sha(repo, "main")

    assert worker.recover_stale_upgrades(timezone.now()) == 1

    after = Upgrade.objects.get(pk=applied.pk)
    assert gitops.head_sha(repo, "main") == before and after.claimed_by == ""
    if committed:
        assert (after.status, after.revert_commit) == (Upgrade.Status.ROLLED_BACK, revert)
        assert reverts(repo) == [revert]
    else:
        assert after.status == Upgrade.Status.APPLIED and not after.rollback_queued
        assert after.rollback_error == "worker w1 stopped renewing its lease after 1 attempts"
        assert data_of("upgrade.rollback_failed")[0]["reason"] == after.rollback_error
        assert reverts(repo) == []


def test_a_worker_that_lost_its_rollback_claim_records_nothing_and_the_next_does_not_revert_again(
    repo, applied, reviewer
):
    services.upgrade_rollback_request(upgrade_id=applied.pk, actor=reviewer)
    stale = claimed_by_a_dead_worker(applied)
    worker.recover_stale_upgrades(timezone.now())
    services.upgrade_rollback_claim(worker_id="w2")

    # w1 wakes up and reverts, but the record is no longer w1's to make.
    assert services.upgrade_rollback_run(upgrade=stale).status == Upgrade.Status.APPLIED
    assert Upgrade.objects.get(pk=applied.pk).claimed_by == "w2"
    [revert] = reverts(repo)

    rolled = services.upgrade_rollback_run(upgrade=Upgrade.objects.get(pk=applied.pk))
    assert (rolled.status, rolled.revert_commit) == (Upgrade.Status.ROLLED_BACK, revert)
    assert reverts(repo) == [revert]


# Handing back


def test_a_stopping_worker_hands_the_rollback_back_at_once(repo, applied, reviewer):
    services.upgrade_rollback_request(upgrade_id=applied.pk, actor=reviewer)
    job = worker.claim_rollback("w1")
    assert job is not None and job.name == f"rollback of upgrade {applied.pk}"
    assert worker.claim_rollback("w2") is None

    assert job.release() is True

    released = Upgrade.objects.get(pk=applied.pk)
    assert (released.claimed_by, released.lease_expires_at, released.rollback_attempts) == ("", None, 0)
    assert released.rollback_queued
    [event] = data_of("upgrade.rollback_released")
    assert (event["worker"], event["reason"]) == ("w1", "worker w1 stopped before it finished; handed back")
    assert job.release() is False  # no longer w1's
    resumed = worker.claim_rollback("w2")  # at once, not after the lease
    assert resumed is not None
    resumed.run()
    assert Upgrade.objects.get(pk=applied.pk).status == Upgrade.Status.ROLLED_BACK and len(reverts(repo)) == 1


def test_a_queued_rollback_is_not_pruned_with_old_history(applied, reviewer, settings):
    services.upgrade_rollback_request(upgrade_id=applied.pk, actor=reviewer)
    old = timezone.now() - timedelta(days=settings.UPGRADE_HISTORY_DAYS + 1)
    Upgrade.objects.filter(pk=applied.pk).update(proposed_at=old)
    services.upgrades_prune()
    assert Upgrade.objects.filter(pk=applied.pk).exists()
    services.upgrade_rollback_claim(worker_id="w1")
    services.upgrade_rollback_fail(upgrade_id=applied.pk, reason="gave up", worker_id="w1")
    services.upgrades_prune()
    assert not Upgrade.objects.filter(pk=applied.pk).exists()
