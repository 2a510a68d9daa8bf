"""The upgrade queue's states: who may move an upgrade, from which state, and what the audit trail says."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.events.models import Event
from apps.upgrades import services
from apps.upgrades.models import Risk, Upgrade
from tests.factories import StaffFactory


def proposal(**fields) -> services.Proposal:
    values = {
        "description": "Add a greeting",
        "instruction": "Say hello",
        "repo_path": "/tmp/repo",
        "target_branch": "main",
        "branch": "self-modify/greeting-1",
        "worktree_path": "",
        "base_commit": "a" * 40,
        "head_commit": "b" * 40,
        "files_changed": ["app/greet.py"],
        "diff": "+hello",
        "diff_preview": "+hello",
        "risk": Risk.MEDIUM,
        "test_results": {"passed": True, "passed_count": 3, "failed_count": 0},
    }
    return services.Proposal(**{**values, **fields})


@pytest.fixture
def proposed(db) -> Upgrade:
    return services.upgrade_propose(proposal=proposal())


def events(kind: str) -> list[dict]:
    return [e.data for e in Event.objects.filter(event_type=kind)]


def test_a_proposal_is_recorded_with_its_event(proposed):
    assert proposed.status == Upgrade.Status.PROPOSED and proposed.tests_passed
    [data] = events("upgrade.proposed")
    assert (data["upgrade_id"], data["risk"], data["tests_passed"], data["by"]) == (
        proposed.pk,
        "medium",
        True,
        "system",
    )


def test_approving_needs_the_permission_and_names_the_reviewer(proposed, reviewer):
    with pytest.raises(services.UpgradeNotAllowed, match=r"upgrades\.approve_upgrade"):
        services.upgrade_approve(upgrade_id=proposed.pk, actor=StaffFactory(username="staff-without-permission"))
    approved = services.upgrade_approve(upgrade_id=proposed.pk, actor=reviewer)
    assert (approved.status, approved.approved_by, approved.auto_approved) == ("approved", reviewer, False)
    assert events("upgrade.approved")[0]["by"] == "reviewer"


def test_an_upgrade_whose_tests_failed_cannot_be_approved(db, reviewer):
    failing = services.upgrade_propose(proposal=proposal(test_results={"passed": False, "failed_count": 2}))
    with pytest.raises(services.UpgradeTestsFailed):
        services.upgrade_approve(upgrade_id=failing.pk, actor=reviewer)
    assert Upgrade.objects.get(pk=failing.pk).status == Upgrade.Status.PROPOSED


def test_each_move_starts_only_from_its_states(proposed, reviewer):
    services.upgrade_approve(upgrade_id=proposed.pk, actor=reviewer)
    with pytest.raises(services.UpgradeWrongState, match="is approved"):
        services.upgrade_approve(upgrade_id=proposed.pk, actor=reviewer)
    with pytest.raises(services.UpgradeWrongState):
        services.upgrade_reject(upgrade_id=proposed.pk, actor=reviewer, reason="too late")
    with pytest.raises(services.UpgradeWrongState):
        services.upgrade_mark_rolled_back(upgrade_id=proposed.pk, revert_commit="c" * 40, actor=reviewer)
    with pytest.raises(services.UpgradeNotFound):
        services.upgrade_approve(upgrade_id=9999, actor=reviewer)


def test_rejecting_needs_a_reason_and_the_permission(proposed, reviewer):
    with pytest.raises(services.InvalidUpgrade, match="why"):
        services.upgrade_reject(upgrade_id=proposed.pk, actor=reviewer, reason="  ")
    with pytest.raises(services.UpgradeNotAllowed):
        services.upgrade_reject(upgrade_id=proposed.pk, actor=StaffFactory(username="other"), reason="no")
    rejected = services.upgrade_reject(upgrade_id=proposed.pk, actor=reviewer, reason="Not what I asked for")
    assert (rejected.status, rejected.rejection_reason, rejected.rejected_by) == (
        "rejected",
        "Not what I asked for",
        reviewer,
    )
    assert events("upgrade.rejected")[0]["reason"] == "Not what I asked for"


def test_old_proposals_expire_unless_auto_approval_takes_the_low_risk_ones_that_pass(db, settings):
    settings.UPGRADE_TIMEOUT_HOURS = 24
    settings.AUTO_APPROVE_UPGRADES = True
    low = services.upgrade_propose(proposal=proposal(risk=Risk.LOW))
    medium = services.upgrade_propose(proposal=proposal(risk=Risk.MEDIUM))
    failing = services.upgrade_propose(proposal=proposal(risk=Risk.LOW, test_results={"passed": False}))
    fresh = services.upgrade_propose(proposal=proposal(risk=Risk.LOW))
    Upgrade.objects.exclude(pk=fresh.pk).update(proposed_at=timezone.now() - timedelta(hours=25))
    due = services.upgrades_due()
    assert [u.pk for u in due] == [low.pk, medium.pk, failing.pk]
    outcomes = {u.pk: services.upgrade_time_out(upgrade=u) for u in due}
    assert outcomes[low.pk].status == "approved" and outcomes[low.pk].auto_approved
    assert events("upgrade.approved") == [
        {"upgrade_id": low.pk, "branch": low.branch, "status": "approved", "by": "system", "automatic": True}
    ]
    assert (outcomes[medium.pk].status, outcomes[failing.pk].status) == ("expired", "expired")
    assert Upgrade.objects.get(pk=fresh.pk).status == "proposed"


def test_one_worker_claims_an_approved_upgrade(proposed, reviewer):
    services.upgrade_approve(upgrade_id=proposed.pk, actor=reviewer)
    assert services.upgrade_claim(worker_id="w1").pk == proposed.pk
    assert services.upgrade_claim(worker_id="w2") is None


def test_applied_then_rolled_back_or_failed(db, reviewer):
    first = services.upgrade_propose(proposal=proposal())
    second = services.upgrade_propose(proposal=proposal(branch="self-modify/other-2"))
    for upgrade in (first, second):
        services.upgrade_approve(upgrade_id=upgrade.pk, actor=reviewer)
    applied = services.upgrade_mark_applied(upgrade_id=first.pk, applied_commit="m" * 40, replaced_commit="a" * 40)
    assert (applied.status, applied.applied_commit, applied.replaced_commit) == ("applied", "m" * 40, "a" * 40)
    rolled = services.upgrade_mark_rolled_back(upgrade_id=first.pk, revert_commit="r" * 40, actor=reviewer)
    assert (rolled.status, rolled.revert_commit) == ("rolled_back", "r" * 40)
    failed = services.upgrade_mark_failed(upgrade_id=second.pk, reason="merge conflict in app/greet.py")
    assert (failed.status, failed.error_message) == ("failed", "merge conflict in app/greet.py")
    assert [e.event_type for e in Event.objects.order_by("id")][-3:] == [
        "upgrade.applied", "upgrade.rolled_back", "upgrade.failed",
    ]  # fmt: skip


def test_history_older_than_the_retention_is_pruned(db, settings, reviewer):
    settings.UPGRADE_HISTORY_DAYS = 90
    old = services.upgrade_propose(proposal=proposal())
    services.upgrade_reject(upgrade_id=old.pk, actor=reviewer, reason="no")
    pending = services.upgrade_propose(proposal=proposal())
    Upgrade.objects.update(proposed_at=timezone.now() - timedelta(days=91))
    assert services.upgrades_prune() == 1
    assert list(Upgrade.objects.values_list("pk", flat=True)) == [pending.pk]
