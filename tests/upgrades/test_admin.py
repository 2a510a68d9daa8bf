"""The approval console: a read-only list and change page, and Approve / Reject / Roll back as confirm-first actions
that need upgrades.approve_upgrade and report what they did and what they skipped."""

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from apps.events.models import Event
from apps.upgrades import services
from apps.upgrades.models import Risk, Upgrade, UpgradeRequest
from tests.factories import StaffFactory
from tests.upgrades.test_queue import proposal

CHANGELIST = reverse("admin:upgrades_upgrade_changelist")
REQUESTS = reverse("admin:upgrades_upgraderequest_changelist")


def client_with(*codenames: str, username: str) -> Client:
    user = StaffFactory(username=username)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def reviewer_client(db) -> Client:
    return client_with("approve_upgrade", username="reviewer")


@pytest.fixture
def viewer_client(db) -> Client:
    """Staff who may read the upgrades in the admin, not decide on them."""
    return client_with("view_upgrade", "view_upgraderequest", username="viewer")


def propose(**fields) -> Upgrade:
    return services.upgrade_propose(proposal=proposal(**fields))


def run_action(client: Client, action: str, upgrades: list[Upgrade], **extra: str):
    return client.post(CHANGELIST, {"action": action, "_selected_action": [u.pk for u in upgrades], **extra})


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def statuses(*upgrades: Upgrade) -> list[str]:
    return [Upgrade.objects.get(pk=u.pk).status for u in upgrades]


def listed(response) -> set[str]:
    return {u.description for u in response.context["cl"].result_list}


def test_the_list_shows_status_risk_tests_files_and_age_and_no_total(reviewer_client):
    propose(description="Passing change", files_changed=["a.py", "b.py", "c.py"])
    propose(
        description="Failing change",
        risk=Risk.HIGH,
        test_results={"passed": False, "passed_count": 4, "failed_count": 2},
    )
    response = reviewer_client.get(CHANGELIST)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Passing change" in page and "Failing change" in page
    assert "✓ 3 passed" in page and "✗ 2 failed, 4 passed" in page
    assert '<td class="field-files">3</td>' in page
    assert "High" in page and "now" in page  # risk, and the age in words
    assert response.context["cl"].show_full_result_count is False


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status__exact": "rejected"}, {"Rejected one"}),
        ({"risk__exact": "high"}, {"Risky one"}),
        ({"auto_approved__exact": "1"}, set()),
        ({"target_branch__exact": "develop"}, {"Risky one"}),
        ({"q": "greeting"}, {"Add a greeting"}),
        ({"q": "self-modify/risky"}, {"Risky one"}),
    ],
)
def test_the_list_filters_and_searches(admin_client, admin_user, params, expected):
    propose()
    propose(description="Risky one", risk=Risk.HIGH, target_branch="develop", branch="self-modify/risky-2")
    rejected = propose(description="Rejected one", branch="self-modify/other-3")
    services.upgrade_reject(upgrade_id=rejected.pk, actor=admin_user, reason="no")
    response = admin_client.get(CHANGELIST, params)
    assert response.status_code == 200
    assert listed(response) == expected


def test_upgrades_cannot_be_added_edited_or_deleted_here(admin_client):
    upgrade = propose()
    change_url = reverse("admin:upgrades_upgrade_change", args=[upgrade.pk])
    assert admin_client.get(reverse("admin:upgrades_upgrade_add")).status_code == 403
    page = admin_client.get(change_url).content.decode()
    assert 'name="_save"' not in page and 'name="description"' not in page
    admin_client.post(change_url, {"description": "Changed", "status": "approved"})
    assert Upgrade.objects.get(pk=upgrade.pk).description == "Add a greeting"
    assert admin_client.post(reverse("admin:upgrades_upgrade_delete", args=[upgrade.pk])).status_code == 403
    assert "delete_selected" not in admin_client.get(CHANGELIST).content.decode()
    assert Upgrade.objects.filter(pk=upgrade.pk).exists()


def test_approving_shows_a_confirmation_first_and_changes_nothing_until_confirmed(reviewer_client):
    upgrade = propose(description="Add a <b>greeting</b>")
    response = run_action(reviewer_client, "approve_upgrades", [upgrade])
    assert response.status_code == 200
    page = response.content.decode()
    assert "Approve upgrades?" in page and "Add a &lt;b&gt;greeting&lt;/b&gt;" in page
    assert 'name="confirm" value="yes"' in page
    assert statuses(upgrade) == ["proposed"]


def test_approving_approves_the_proposed_upgrades_and_reports_what_it_skipped(reviewer_client, admin_user):
    good = propose()
    failing = propose(test_results={"passed": False, "failed_count": 1})
    rejected = propose()
    services.upgrade_reject(upgrade_id=rejected.pk, actor=admin_user, reason="no")
    page = run_action(reviewer_client, "approve_upgrades", [good, failing, rejected]).content.decode()
    assert "its tests did not pass" in page and "it is rejected, not proposed" in page  # said before confirming

    response = run_action(reviewer_client, "approve_upgrades", [good, failing, rejected], confirm="yes")
    assert response.status_code == 302
    assert messages_of(response) == [
        "Approved 1 upgrade(s).",
        f"Skipped 2: #{failing.pk} has failing tests; #{rejected.pk} is rejected.",
    ]
    assert statuses(good, failing, rejected) == ["approved", "proposed", "rejected"]
    assert Event.objects.get(event_type="upgrade.approved").data["by"] == "reviewer"


def test_rejecting_asks_for_a_reason_and_keeps_it(reviewer_client):
    first, second = propose(), propose()
    page = run_action(reviewer_client, "reject_upgrades", [first, second]).content.decode()
    assert "Reject upgrades?" in page and 'name="reason"' in page
    page = run_action(reviewer_client, "reject_upgrades", [first, second], confirm="yes", reason="  ").content.decode()
    assert "Say why these upgrades are rejected." in page
    assert statuses(first, second) == ["proposed", "proposed"]

    response = run_action(reviewer_client, "reject_upgrades", [first, second], confirm="yes", reason="Too broad")
    assert messages_of(response) == ["Rejected 2 upgrade(s)."]
    assert statuses(first, second) == ["rejected", "rejected"]
    assert Upgrade.objects.get(pk=first.pk).rejection_reason == "Too broad"


def test_rolling_back_confirms_first_and_skips_upgrades_that_are_not_applied(reviewer_client):
    upgrade = propose()
    page = run_action(reviewer_client, "roll_back_upgrades", [upgrade]).content.decode()
    assert "Roll back upgrades?" in page and "it is proposed, not applied" in page
    response = run_action(reviewer_client, "roll_back_upgrades", [upgrade], confirm="yes")
    assert messages_of(response) == ["No rollback queued.", f"Skipped 1: #{upgrade.pk} is proposed."]
    assert statuses(upgrade) == ["proposed"]


@pytest.mark.parametrize("action", ["approve_upgrades", "reject_upgrades", "roll_back_upgrades"])
def test_the_actions_are_refused_without_the_permission(viewer_client, action):
    upgrade = propose()
    page = viewer_client.get(CHANGELIST).content.decode()
    assert "Add a greeting" in page and action not in page
    for extra in ({}, {"confirm": "yes", "reason": "no"}):
        response = run_action(viewer_client, action, [upgrade], **extra)
        assert 'name="confirm"' not in response.content.decode()  # the list again: no such action for this user
    assert statuses(upgrade) == ["proposed"]
    assert not Event.objects.exclude(event_type="upgrade.proposed").exists()


DIFF = """diff --git a/app/greet.py b/app/greet.py
index 1111111..2222222 100644
--- a/app/greet.py
+++ b/app/greet.py
@@ -1,2 +1,2 @@
 def greet():
-    return "hi"
+    return "<script>alert('hello')</script>"
diff --git a/docs/notes.md b/docs/notes.md
new file mode 100644
--- /dev/null
+++ b/docs/notes.md
@@ -0,0 +1 @@
+Notes & <b>bold</b>
"""


def test_the_change_page_shows_the_escaped_diff_per_file_the_tests_and_the_audit_trail(reviewer_client, admin_user):
    upgrade = propose(
        diff=DIFF,
        files_changed=["app/greet.py", "docs/notes.md"],
        test_results={"passed": True, "passed_count": 12, "failed_count": 0, "duration_seconds": 3.4,
                      "output_tail": "12 passed in 3.40s <end>"},
    )  # fmt: skip
    services.upgrade_approve(upgrade_id=upgrade.pk, actor=StaffFactory(username="approver", is_superuser=True))
    response = reviewer_client.get(reverse("admin:upgrades_upgrade_change", args=[upgrade.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert "<script>alert" not in page
    assert '<span class="diff-line diff-add">+    return &quot;&lt;script&gt;alert(&#x27;hello&#x27;)' in page
    assert '<span class="diff-line diff-del">-    return &quot;hi&quot;</span>' in page
    assert '<span class="diff-line diff-add">+Notes &amp; &lt;b&gt;bold&lt;/b&gt;</span>' in page
    assert page.count('class="diff-section"') == 2 and "<code>docs/notes.md</code>" in page
    assert "12 passed in 3.40s &lt;end&gt;" in page and "3.4 s" in page
    # The audit trail, newest first, with who.
    trail = [e.event_type for e in response.context["events"]]
    assert trail == ["upgrade.approved", "upgrade.proposed"]
    assert '<td class="upgrade-event-by">approver</td>' in page and '<td class="upgrade-event-by">system</td>' in page


def test_the_change_page_shows_the_error_of_a_failed_upgrade(admin_client, admin_user):
    upgrade = propose()
    services.upgrade_approve(upgrade_id=upgrade.pk, actor=admin_user)
    services.upgrade_mark_failed(upgrade_id=upgrade.pk, reason="merge conflict in <app/greet.py>")
    page = admin_client.get(reverse("admin:upgrades_upgrade_change", args=[upgrade.pk])).content.decode()
    assert 'id="upgrade-error"' in page and "merge conflict in &lt;app/greet.py&gt;" in page


def test_the_request_list_is_read_only_and_links_the_upgrade(viewer_client, admin_user):
    request = services.upgrade_request_create(instruction="Make the greeting friendlier", actor=admin_user)
    upgrade = propose()
    UpgradeRequest.objects.filter(pk=request.pk).update(status=UpgradeRequest.Status.DONE, upgrade=upgrade)
    response = viewer_client.get(REQUESTS)
    page = response.content.decode()
    assert "Make the greeting friendlier" in page and "admin" in page and "Done" in page
    assert f'href="{upgrade.get_absolute_url()}"' in page
    assert viewer_client.get(reverse("admin:upgrades_upgraderequest_add")).status_code == 403
    change = viewer_client.get(reverse("admin:upgrades_upgraderequest_change", args=[request.pk])).content.decode()
    assert 'name="_save"' not in change
