"""/self-modify/queue: what waits for a decision, the buttons for those who may decide, the history, the change
requests, the diff page, and the approve / reject endpoints with their refusals."""

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from apps.events.models import Event
from apps.upgrades import selectors, services
from apps.upgrades.models import Upgrade, UpgradeRequest
from tests.factories import StaffFactory
from tests.upgrades.test_queue import proposal

QUEUE = reverse("upgrades:queue")


@pytest.fixture
def reviewer_client(reviewer) -> Client:
    client = Client()
    client.force_login(reviewer)
    return client


def propose(**fields) -> Upgrade:
    return services.upgrade_propose(proposal=proposal(**fields))


def status_of(upgrade: Upgrade) -> str:
    return Upgrade.objects.get(pk=upgrade.pk).status


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def approve_url(upgrade_id: int) -> str:
    return reverse("upgrades:approve", args=[upgrade_id])


def reject_url(upgrade_id: int) -> str:
    return reverse("upgrades:reject", args=[upgrade_id])


def test_the_queue_explains_itself_and_shows_waiting_upgrades_with_buttons_for_reviewers(reviewer_client):
    upgrade = propose(description="Add a <i>greeting</i>", files_changed=["a.py", "b.py"], branch="self-modify/g-1")
    response = reviewer_client.get(QUEUE)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Nothing" in page and "reaches the target branch until" in page
    assert "Add a &lt;i&gt;greeting&lt;/i&gt;" in page and "self-modify/g-1" in page and "2 files" in page
    assert "✓ 3 passed" in page and "Medium risk" in page and "now" in page
    assert f'action="{approve_url(upgrade.pk)}"' in page and f'action="{reject_url(upgrade.pk)}"' in page
    assert 'name="csrfmiddlewaretoken"' in page and 'name="reason"' in page
    assert f'href="{reverse("upgrades:diff", args=[upgrade.pk])}"' in page


def test_staff_without_the_permission_see_the_queue_but_no_buttons(staff_client):
    upgrade = propose()
    page = staff_client.get(QUEUE).content.decode()
    assert "Add a greeting" in page
    assert approve_url(upgrade.pk) not in page and reject_url(upgrade.pk) not in page
    assert "needs the permission" in page


def test_an_upgrade_whose_tests_failed_cannot_be_approved_from_the_page(reviewer_client):
    propose(test_results={"passed": False, "passed_count": 1, "failed_count": 2})
    page = reviewer_client.get(QUEUE).content.decode()
    assert "✗ 2 failed, 1 passed" in page
    assert "disabled" in page and "cannot be approved" in page


def test_the_history_lists_finished_upgrades_newest_first_with_who_decided(reviewer_client, reviewer):
    applied = propose(description="Applied one")
    services.upgrade_approve(upgrade_id=applied.pk, actor=reviewer)
    services.upgrade_mark_applied(upgrade_id=applied.pk, applied_commit="c" * 40, replaced_commit="a" * 40)
    rejected = propose(description="Rejected one")
    services.upgrade_reject(upgrade_id=rejected.pk, actor=reviewer, reason="Not <now>")
    waiting = propose(description="Still waiting")
    response = reviewer_client.get(QUEUE)
    assert [u.description for u in response.context["history"]] == ["Rejected one", "Applied one"]
    assert [u.pk for u in response.context["waiting"]] == [waiting.pk]
    page = response.content.decode()
    assert "Not &lt;now&gt;" in page and "cccccccccccc" in page and ">reviewer<" in page


def test_an_approved_upgrade_waits_for_the_worker_without_buttons(reviewer_client, reviewer):
    upgrade = propose()
    services.upgrade_approve(upgrade_id=upgrade.pk, actor=reviewer)
    page = reviewer_client.get(QUEUE).content.decode()
    assert "waiting for the worker to apply it" in page and "by reviewer" in page
    assert approve_url(upgrade.pk) not in page


def test_asking_for_a_change_queues_a_request_shown_on_the_page(staff_client, staff_user):
    response = staff_client.post(reverse("upgrades:request"), {"instruction": "Greet in <b>French</b>"})
    assert response.status_code == 302 and response.url == QUEUE + "#upgrade-requests"
    request = UpgradeRequest.objects.get()
    assert (request.instruction, request.requested_by) == ("Greet in <b>French</b>", staff_user)
    assert request.status == UpgradeRequest.Status.QUEUED
    assert "Queued change request" in messages_of(response)[0]
    page = staff_client.get(QUEUE).content.decode()
    assert "Greet in &lt;b&gt;French&lt;/b&gt;" in page and "Queued" in page


def test_an_empty_change_request_is_refused_with_the_reason(staff_client):
    response = staff_client.post(reverse("upgrades:request"), {"instruction": "   "})
    assert response.status_code == 400
    assert "Say what should change." in response.content.decode()
    assert not UpgradeRequest.objects.exists()


DIFF = """--- a/app/greet.py
+++ b/app/greet.py
@@ -1,2 +1,2 @@
 def greet():
-    return "hi"
+    return "<script>alert(1)</script>"
--- a/README.md
+++ b/README.md
@@ -1 +1,2 @@
 # Greeter
+-- a line that looks like a header
"""


def test_the_diff_page_shows_each_file_escaped(staff_client):
    upgrade = propose(diff=DIFF, files_changed=["app/greet.py", "README.md"])
    response = staff_client.get(reverse("upgrades:diff", args=[upgrade.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert "<script>alert(1)" not in page
    added = "+    return &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;"
    assert f'<span class="diff-line diff-add">{added}</span>' in page
    assert '<span class="diff-line diff-del">-    return &quot;hi&quot;</span>' in page
    assert [f.path for f in response.context["files"]] == ["app/greet.py", "README.md"]
    assert [(f.added, f.removed) for f in response.context["files"]] == [(1, 1), (1, 0)]


def test_a_removed_line_that_looks_like_a_file_header_stays_in_its_file():
    diff = "--- a/notes.md\n+++ b/notes.md\n@@ -1,2 +1 @@\n keep\n--- old rule\n"
    diff += "--- a/x.py\n+++ b/x.py\n@@ -0,0 +1 @@\n+x\n"
    files = selectors.diff_files(diff)
    assert [(f.path, f.added, f.removed) for f in files] == [("notes.md", 0, 1), ("x.py", 1, 0)]
    assert [line.kind for line in files[0].lines] == ["file", "file", "hunk", "context", "del"]
    assert [(f.path, [line.kind for line in f.lines]) for f in selectors.diff_files("+hello")] == [("", ["add"])]


def test_the_diff_of_an_unknown_upgrade_is_404(staff_client, db):
    assert staff_client.get(reverse("upgrades:diff", args=[999])).status_code == 404


def test_approving_redirects_to_the_queue_with_a_message(reviewer_client):
    upgrade = propose()
    response = reviewer_client.post(approve_url(upgrade.pk), {"confirm": "yes"})
    assert response.status_code == 302 and response.url == QUEUE
    [message] = messages_of(response)
    assert message == f"Approved upgrade {upgrade.pk} (“Add a greeting”): the worker applies it to main."
    assert status_of(upgrade) == "approved"
    assert Event.objects.get(event_type="upgrade.approved").data["by"] == "reviewer"


def test_rejecting_needs_a_reason_and_keeps_it(reviewer_client):
    upgrade = propose()
    response = reviewer_client.post(reject_url(upgrade.pk), {"reason": ""})
    assert response.status_code == 422
    assert "Say why the upgrade is rejected." in response.content.decode()
    assert status_of(upgrade) == "proposed"

    response = reviewer_client.post(reject_url(upgrade.pk), {"reason": "Not needed"})
    assert response.status_code == 302 and response.url == QUEUE
    assert "Reason: Not needed" in messages_of(response)[0]
    assert Upgrade.objects.get(pk=upgrade.pk).rejection_reason == "Not needed"


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_deciding_needs_a_csrf_token(reviewer, decision):
    upgrade = propose()
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    response = client.post(reverse(f"upgrades:{decision}", args=[upgrade.pk]), {"reason": "x"})
    assert response.status_code == 403
    assert status_of(upgrade) == "proposed"


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_deciding_is_refused_without_the_permission_with_the_reason(staff_client, decision):
    upgrade = propose()
    response = staff_client.post(reverse(f"upgrades:{decision}", args=[upgrade.pk]), {"reason": "x"})
    assert response.status_code == 403
    assert "needs the permission upgrades.approve_upgrade" in response.content.decode()
    assert status_of(upgrade) == "proposed"


def test_deciding_twice_or_approving_failing_tests_answers_409(reviewer_client, reviewer):
    decided = propose()
    services.upgrade_reject(upgrade_id=decided.pk, actor=reviewer, reason="no")
    failing = propose(test_results={"passed": False, "failed_count": 1})
    for url, needle in [
        (approve_url(decided.pk), "is rejected"),
        (reject_url(decided.pk), "is rejected"),
        (approve_url(failing.pk), "its tests did not pass"),
    ]:
        response = reviewer_client.post(url, {"reason": "again"})
        assert response.status_code == 409, url
        assert needle in response.content.decode()
    assert (status_of(decided), status_of(failing)) == ("rejected", "proposed")


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_deciding_an_unknown_upgrade_answers_404(reviewer_client, decision):
    assert reviewer_client.post(reverse(f"upgrades:{decision}", args=[999]), {"reason": "x"}).status_code == 404
    assert reviewer_client.post(reverse(f"upgrades:{decision}", args=[999]), {"reason": ""}).status_code == 404


def test_deciding_is_post_only(reviewer_client):
    upgrade = propose()
    assert reviewer_client.get(approve_url(upgrade.pk)).status_code == 405
    assert reviewer_client.get(reject_url(upgrade.pk)).status_code == 405


def test_the_navigation_shows_the_number_of_upgrades_waiting_for_a_decision(staff_client, staff_user):
    page = staff_client.get(reverse("home")).content.decode()
    assert 'class="nav-count"' not in page
    propose()
    propose()
    services.upgrade_approve(upgrade_id=propose().pk, actor=StaffFactory(username="boss", is_superuser=True))
    page = staff_client.get(reverse("memory:index")).content.decode()
    assert 'href="/self-modify/queue">Upgrades</a>' in page
    assert 'title="2 upgrades waiting for a decision">2<' in page


def test_the_queue_page_cost_does_not_grow_with_the_number_of_upgrades(reviewer_client, reviewer):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert reviewer_client.get(QUEUE).status_code == 200
        return len(captured.captured_queries)

    def add_some() -> None:
        for _ in range(3):
            propose()
            services.upgrade_reject(upgrade_id=propose().pk, actor=reviewer, reason="no")
            services.upgrade_request_create(instruction="Change something", actor=reviewer)

    add_some()
    few = queries()
    # Session, user, the user's permissions (two), waiting, history, open and failed requests, the navigation's count.
    assert few <= 9
    add_some()
    add_some()
    assert queries() == few
