"""Nothing fails silently, review where the reviewer reads: failed change requests stay on /self-modify/queue with
their reason and a Retry; the diff page shows the test output and the risk beside the diff, with Approve (confirmed
on a page that says it merges) and Reject (with a reason); the admin's change page has buttons for its own record."""

from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.events.models import Event
from apps.swarm.models import Task
from apps.upgrades import services
from apps.upgrades.models import Upgrade, UpgradeRequest
from apps.upgrades.worker import run_upgrade_requests
from tests.factories import StaffFactory, TaskFactory
from tests.upgrades.test_queue import proposal

QUEUE = reverse("upgrades:queue")
OUTPUT = "tests/test_greet.py::test_hello PASSED\n3 passed in 0.12s <ok>"


@pytest.fixture
def reviewer_client(reviewer) -> Client:
    client = Client()
    client.force_login(reviewer)
    return client


@pytest.fixture
def not_a_repo(tmp_path: Path, settings) -> Path:
    """A self-modify target that is no git repository: every draft of a change request fails, saying so."""
    path = tmp_path / "plain-dir"
    path.mkdir()
    settings.SELF_MODIFY_REPO = str(path)
    settings.DATA_DIR = tmp_path / "data"
    return path


def propose(**fields) -> Upgrade:
    results = {"passed": True, "passed_count": 3, "failed_count": 0, "output_tail": OUTPUT, "command": "pytest -q"}
    return services.upgrade_propose(proposal=proposal(**{"test_results": results, **fields}))


def failed_request(actor, instruction: str = "Greet in French") -> UpgradeRequest:
    """A change request drafted by the worker's real job, against a target that is not a repository."""
    request = services.upgrade_request_create(instruction=instruction, actor=actor)
    assert run_upgrade_requests(timezone.now()) == 1
    request.refresh_from_db()
    assert request.status == UpgradeRequest.Status.FAILED
    return request


def retry_url(request_id: int) -> str:
    return reverse("upgrades:retry_request", args=[request_id])


# --- failed change requests on the queue ---


def test_a_failed_request_stays_on_the_queue_with_its_reason_when_and_a_retry_button(
    staff_client, staff_user, not_a_repo
):
    request = failed_request(staff_user)
    page = staff_client.get(QUEUE).content.decode()
    assert "Failed requests" in page and f'id="request-{request.pk}" data-status="failed"' in page
    assert "Greet in French" in page and "is not a git repository" in page
    assert f'failed <time datetime="{request.finished_at.isoformat()}"' in page
    assert f'action="{retry_url(request.pk)}"' in page and ">Retry</button>" in page


def test_retry_queues_the_failed_request_again_with_attempts_reset_and_an_event(staff_client, staff_user, not_a_repo):
    request = failed_request(staff_user)
    response = staff_client.post(retry_url(request.pk))
    assert response.status_code == 302 and response.url == QUEUE + "#upgrade-requests"
    request.refresh_from_db()
    assert request.status == UpgradeRequest.Status.QUEUED
    assert (request.attempts, request.error_message, request.finished_at) == (0, "", None)
    [event] = Event.objects.filter(event_type="upgrade.request_retried")
    assert event.data["request_id"] == request.pk and event.data["by"] == staff_user.get_username()
    assert "is not a git repository" in event.data["previous_error"]
    page = staff_client.get(QUEUE).content.decode()
    assert f'id="request-{request.pk}" data-status="queued"' in page and "No change request has failed." in page


def test_retrying_a_request_that_has_not_failed_is_409_with_its_state_and_an_unknown_one_404(staff_client, staff_user):
    queued = services.upgrade_request_create(instruction="Greet", actor=staff_user)
    response = staff_client.post(retry_url(queued.pk))
    assert response.status_code == 409
    assert f"Change request {queued.pk} is queued; only a failed request can be retried." in response.content.decode()
    assert staff_client.post(retry_url(999)).status_code == 404
    assert not Event.objects.filter(event_type="upgrade.request_retried").exists()


def test_retry_is_for_staff_only_and_post_only(plain_client, staff_client, staff_user, not_a_repo):
    request = failed_request(staff_user)
    assert plain_client.post(retry_url(request.pk)).status_code == 403
    assert staff_client.get(retry_url(request.pk)).status_code == 405
    assert UpgradeRequest.objects.get(pk=request.pk).status == UpgradeRequest.Status.FAILED
    with pytest.raises(services.UpgradeNotAllowed):
        services.upgrade_request_retry(request_id=request.pk, actor=None)


def test_a_retried_request_of_a_failed_task_leaves_the_task_failed_and_becomes_a_plain_request(staff_user, not_a_repo):
    task = TaskFactory(status=Task.Status.FAILED, failure_reason="the draft failed")
    request = services.upgrade_request_create(instruction="Add sub", actor=None, task=task)
    UpgradeRequest.objects.filter(pk=request.pk).update(status=UpgradeRequest.Status.FAILED, error_message="boom")
    retried = services.upgrade_request_retry(request_id=request.pk, actor=staff_user)
    assert retried.status == UpgradeRequest.Status.QUEUED and retried.task is None
    task.refresh_from_db()
    assert (task.status, task.failure_reason) == (Task.Status.FAILED, "the draft failed")
    event = Event.objects.get(event_type="upgrade.request_retried")
    assert event.task_id == str(task.pk) and event.data["detached_from_task"] is True


def test_the_api_retries_a_failed_request_and_refuses_others_with_the_reason(api_client, staff_user, not_a_repo):
    request = failed_request(staff_user)
    url = f"/api/v1/upgrades/requests/{request.pk}/retry"
    response = api_client.post(url)
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "queued" and response.json()["error_message"] == ""
    again = api_client.post(url)
    assert again.status_code == 409 and "only a failed request can be retried" in again.json()["detail"]
    assert api_client.post("/api/v1/upgrades/requests/999/retry").status_code == 404


def test_a_failed_request_logs_one_warning_with_its_id_and_reason(staff_user, not_a_repo, caplog):
    caplog.set_level("WARNING", logger="timmy.worker")
    request = failed_request(staff_user)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"change request {request.pk} ")]
    assert lines == [f"change request {request.pk} failed: SELF_MODIFY_REPO {not_a_repo} is not a git repository."]


# --- the diff page ---


def test_the_diff_page_shows_the_test_output_and_the_risk_beside_the_diff(reviewer_client):
    upgrade = propose(risk="high")
    page = reviewer_client.get(reverse("upgrades:diff", args=[upgrade.pk])).content.decode()
    assert 'class="review-layout"' in page and 'id="upgrade-tests"' in page and 'id="upgrade-risk"' in page
    assert "3 passed in 0.12s &lt;ok&gt;" in page and "<code>pytest -q</code>" in page
    assert "High risk" in page and "Read every line before approving." in page


def test_approve_on_the_diff_page_asks_for_a_confirmation_that_says_it_merges(reviewer_client):
    upgrade = propose()
    diff_url = reverse("upgrades:diff", args=[upgrade.pk])
    approve_url = reverse("upgrades:approve", args=[upgrade.pk])
    page = reviewer_client.get(diff_url).content.decode()
    assert f'action="{approve_url}"' in page and ">Approve…</button>" in page

    response = reviewer_client.post(approve_url, {"next": "diff"})
    assert response.status_code == 200
    confirm = response.content.decode()
    assert "merges branch <code>self-modify/greeting-1</code>" in confirm and "into <code>main</code>" in confirm
    assert 'name="confirm" value="yes"' in confirm and "Yes, approve and merge into main" in confirm
    assert Upgrade.objects.get(pk=upgrade.pk).status == Upgrade.Status.PROPOSED

    response = reviewer_client.post(approve_url, {"next": "diff", "confirm": "yes"})
    assert response.status_code == 302 and response.url == diff_url
    assert Upgrade.objects.get(pk=upgrade.pk).status == Upgrade.Status.APPROVED
    assert "waiting for the worker to apply it" in reviewer_client.get(diff_url).content.decode()


def test_reject_on_the_diff_page_needs_a_reason(reviewer_client):
    upgrade = propose()
    reject_url = reverse("upgrades:reject", args=[upgrade.pk])
    response = reviewer_client.post(reject_url, {"next": "diff", "reason": "  "})
    assert response.status_code == 422
    page = response.content.decode()
    assert 'id="reject-error"' in page and "Say why the upgrade is rejected." in page and 'id="upgrade-tests"' in page
    assert Upgrade.objects.get(pk=upgrade.pk).status == Upgrade.Status.PROPOSED

    response = reviewer_client.post(reject_url, {"next": "diff", "reason": "Not now"})
    assert response.status_code == 302 and response.url == reverse("upgrades:diff", args=[upgrade.pk])
    assert Upgrade.objects.get(pk=upgrade.pk).rejection_reason == "Not now"


def test_deciding_on_the_diff_page_in_a_wrong_state_answers_409_with_the_reason(reviewer_client, reviewer):
    upgrade = propose()
    services.upgrade_reject(upgrade_id=upgrade.pk, actor=reviewer, reason="no")
    failing = propose(test_results={"passed": False, "failed_count": 1, "output_tail": "1 failed"})
    for pk, data, needle in [
        (upgrade.pk, {"next": "diff"}, "is rejected; only a proposed upgrade can become approved"),
        (upgrade.pk, {"next": "diff", "confirm": "yes"}, "is rejected"),
        (failing.pk, {"next": "diff"}, "its tests did not pass"),
    ]:
        response = reviewer_client.post(reverse("upgrades:approve", args=[pk]), data)
        assert response.status_code == 409 and needle in response.content.decode()
    page = reviewer_client.get(reverse("upgrades:diff", args=[failing.pk])).content.decode()
    assert ">Approve…</button>" not in page and "its tests did not pass" in page and "1 failed" in page


def test_the_diff_page_has_no_decision_buttons_without_the_permission(staff_client):
    upgrade = propose()
    page = staff_client.get(reverse("upgrades:diff", args=[upgrade.pk])).content.decode()
    assert reverse("upgrades:approve", args=[upgrade.pk]) not in page
    assert "needs the permission" in page and "3 passed in 0.12s" in page


def test_approve_on_the_queue_goes_through_the_same_confirmation(reviewer_client):
    upgrade = propose()
    response = reviewer_client.post(reverse("upgrades:approve", args=[upgrade.pk]))
    assert response.status_code == 200 and "Yes, approve and merge into main" in response.content.decode()
    assert 'name="next" value="queue"' in response.content.decode()
    assert Upgrade.objects.get(pk=upgrade.pk).status == Upgrade.Status.PROPOSED


# --- the admin's change page ---


def admin_change(pk: int) -> str:
    return reverse("admin:upgrades_upgrade_change", args=[pk])


def admin_decision(pk: int, decision: str) -> str:
    return reverse(f"admin:upgrades_upgrade_{decision}", args=[pk])


def viewer() -> Client:
    user = StaffFactory(username="viewer")
    user.user_permissions.add(Permission.objects.get(codename="view_upgrade"))
    client = Client()
    client.force_login(user)
    return client


def test_the_change_page_shows_the_buttons_its_state_allows_to_reviewers_only(reviewer_client, reviewer):
    proposed = propose()
    page = reviewer_client.get(admin_change(proposed.pk)).content.decode()
    assert admin_decision(proposed.pk, "approve") in page and admin_decision(proposed.pk, "reject") in page
    assert admin_decision(proposed.pk, "rollback") not in page

    applied = propose()
    services.upgrade_approve(upgrade_id=applied.pk, actor=reviewer)
    services.upgrade_mark_applied(upgrade_id=applied.pk, applied_commit="c" * 40, replaced_commit="a" * 40)
    page = reviewer_client.get(admin_change(applied.pk)).content.decode()
    assert admin_decision(applied.pk, "rollback") in page and admin_decision(applied.pk, "approve") not in page

    failing = propose(test_results={"passed": False, "failed_count": 1})
    page = reviewer_client.get(admin_change(failing.pk)).content.decode()
    assert admin_decision(failing.pk, "approve") not in page and admin_decision(failing.pk, "reject") in page

    page = viewer().get(admin_change(proposed.pk)).content.decode()
    assert "upgrade-record-action" not in page


def test_the_change_page_buttons_confirm_then_call_the_services(reviewer_client, reviewer):
    upgrade = propose()
    confirm = reviewer_client.get(admin_decision(upgrade.pk, "approve"))
    assert confirm.status_code == 200 and "merges branch self-modify/greeting-1 into main" in confirm.content.decode()
    assert Upgrade.objects.get(pk=upgrade.pk).status == Upgrade.Status.PROPOSED
    response = reviewer_client.post(admin_decision(upgrade.pk, "approve"))
    assert response.status_code == 302 and response.url == admin_change(upgrade.pk)
    assert Upgrade.objects.get(pk=upgrade.pk).status == Upgrade.Status.APPROVED
    assert Event.objects.get(event_type="upgrade.approved").data["by"] == "reviewer"

    services.upgrade_mark_applied(upgrade_id=upgrade.pk, applied_commit="c" * 40, replaced_commit="a" * 40)
    response = reviewer_client.post(admin_decision(upgrade.pk, "rollback"))
    assert response.status_code == 302
    assert Upgrade.objects.get(pk=upgrade.pk).rollback_queued
    again = reviewer_client.post(admin_decision(upgrade.pk, "rollback"))
    assert again.status_code == 409 and "already queued" in again.content.decode()


def test_reject_on_the_change_page_needs_a_reason(reviewer_client):
    upgrade = propose()
    response = reviewer_client.post(admin_decision(upgrade.pk, "reject"), {"reason": ""})
    assert response.status_code == 422 and "Say why the upgrade is rejected." in response.content.decode()
    assert Upgrade.objects.get(pk=upgrade.pk).status == Upgrade.Status.PROPOSED
    response = reviewer_client.post(admin_decision(upgrade.pk, "reject"), {"reason": "Too risky"})
    assert response.status_code == 302
    assert Upgrade.objects.get(pk=upgrade.pk).rejection_reason == "Too risky"


def test_the_change_page_buttons_are_refused_without_the_permission_and_in_a_wrong_state(reviewer_client, db):
    upgrade = propose()
    client = viewer()
    for decision in ("approve", "reject", "rollback"):
        assert client.post(admin_decision(upgrade.pk, decision), {"reason": "x"}).status_code == 403
    assert Upgrade.objects.get(pk=upgrade.pk).status == Upgrade.Status.PROPOSED
    response = reviewer_client.post(admin_decision(upgrade.pk, "rollback"))
    assert response.status_code == 409 and "only an applied upgrade can be rolled back" in response.content.decode()
    assert reviewer_client.get(admin_decision(999, "approve")).status_code == 404


def test_the_worker_process_prints_a_failed_request_once(run_manage, transactional_db, tmp_path):
    plain = tmp_path / "plain-dir"
    plain.mkdir()
    request = services.upgrade_request_create(instruction="Greet in French", actor=None)
    env = {"SELF_MODIFY_REPO": str(plain), "TIMMY_DATA_DIR": str(tmp_path / "data"), "PRELOAD_MODELS": "0"}
    result = run_manage("run_worker", "--once", timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if f"change request {request.pk} failed" in line]
    assert len(lines) == 1, output
    assert lines[0].endswith(
        f"WARNING timmy.worker: change request {request.pk} failed: SELF_MODIFY_REPO {plain} is not a git repository."
    )
