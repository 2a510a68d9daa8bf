"""/api/v1/upgrades: staff read the queue; approving and rejecting need upgrades.approve_upgrade, as on the page."""

import pytest
from django.test import Client

from apps.core.services import api_token_create
from apps.events.models import Event
from apps.upgrades import services
from apps.upgrades.models import Risk, Upgrade
from tests.factories import StaffFactory, UserFactory
from tests.upgrades.test_queue import proposal

URL = "/api/v1/upgrades"


def client_for(user) -> Client:
    _, raw = api_token_create(user=user, name="test")
    return Client(headers={"authorization": f"Bearer {raw}"})


@pytest.fixture
def reviewer_api(reviewer) -> Client:
    return client_for(reviewer)


def propose(**fields) -> Upgrade:
    return services.upgrade_propose(proposal=proposal(**fields))


def reject(client: Client, upgrade_id: int, reason: str):
    return client.post(f"{URL}/{upgrade_id}/reject", {"reason": reason}, content_type="application/json")


def test_the_list_shows_upgrades_newest_first_and_filters_by_status(api_client, reviewer):
    first = propose(files_changed=["a.py", "b.py"])
    second = propose(description="Risky", risk=Risk.HIGH, test_results={"passed": False, "failed_count": 2})
    services.upgrade_approve(upgrade_id=first.pk, actor=reviewer)

    body = api_client.get(URL).json()
    assert [u["id"] for u in body] == [second.pk, first.pk]
    assert body[0]["tests"] == {"passed": False, "passed_count": None, "failed_count": 2}
    assert body[1] | {"proposed_at": None} == {
        "id": first.pk,
        "status": "approved",
        "description": "Add a greeting",
        "branch": "self-modify/greeting-1",
        "target_branch": "main",
        "risk": "medium",
        "files_changed": ["a.py", "b.py"],
        "tests": {"passed": True, "passed_count": 3, "failed_count": 0},
        "proposed_at": None,
    }
    assert [u["id"] for u in api_client.get(URL, {"status": "proposed"}).json()] == [second.pk]
    assert api_client.get(URL, {"status": "maybe"}).status_code == 422


def test_the_detail_has_the_test_results_commits_and_decision(api_client, reviewer):
    upgrade = propose(test_results={"passed": True, "passed_count": 3, "failed_count": 0, "output_tail": "ok"})
    services.upgrade_approve(upgrade_id=upgrade.pk, actor=reviewer)
    services.upgrade_mark_applied(upgrade_id=upgrade.pk, applied_commit="c" * 40, replaced_commit="a" * 40)
    body = api_client.get(f"{URL}/{upgrade.pk}").json()
    assert body["status"] == "applied" and body["test_results"]["output_tail"] == "ok"
    assert (body["base_commit"], body["head_commit"]) == ("a" * 40, "b" * 40)
    assert (body["applied_commit"], body["replaced_commit"], body["revert_commit"]) == ("c" * 40, "a" * 40, "")
    assert (body["approved_by"], body["auto_approved"], body["error_message"], body["rejection_reason"]) == (
        "reviewer",
        False,
        "",
        "",
    )
    assert api_client.get(f"{URL}/999").status_code == 404


def test_the_api_is_for_staff_only(db):
    upgrade = propose()
    assert Client().get(URL).status_code == 401
    plain = client_for(UserFactory(username="plain"))
    assert plain.get(URL).status_code == 403
    assert plain.get(f"{URL}/{upgrade.pk}").status_code == 403


def test_approving_needs_the_permission(api_client):
    upgrade = propose()
    response = api_client.post(f"{URL}/{upgrade.pk}/approve")
    assert response.status_code == 403
    assert "upgrades.approve_upgrade" in response.json()["detail"]
    assert reject(api_client, upgrade.pk, "no").status_code == 403
    assert Upgrade.objects.get(pk=upgrade.pk).status == "proposed"


def test_approving_records_who_approved(reviewer_api):
    upgrade = propose()
    response = reviewer_api.post(f"{URL}/{upgrade.pk}/approve")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["approved_by"]) == ("approved", "reviewer")
    assert Event.objects.get(event_type="upgrade.approved").data["by"] == "reviewer"


def test_approving_twice_or_with_failing_tests_answers_409_and_an_unknown_upgrade_404(reviewer_api):
    upgrade = propose()
    failing = propose(test_results={"passed": False, "failed_count": 1})
    assert reviewer_api.post(f"{URL}/{upgrade.pk}/approve").status_code == 200
    again = reviewer_api.post(f"{URL}/{upgrade.pk}/approve")
    assert again.status_code == 409 and "is approved" in again.json()["detail"]
    refused = reviewer_api.post(f"{URL}/{failing.pk}/approve")
    assert refused.status_code == 409 and "tests did not pass" in refused.json()["detail"]
    assert reviewer_api.post(f"{URL}/999/approve").status_code == 404


def test_rejecting_needs_a_reason_and_a_proposed_upgrade(reviewer_api):
    upgrade = propose()
    assert reject(reviewer_api, upgrade.pk, "").status_code == 422
    blank = reject(reviewer_api, upgrade.pk, "   ")
    assert blank.status_code == 422 and "Say why" in blank.json()["detail"]
    assert reviewer_api.post(f"{URL}/{upgrade.pk}/reject", {}, content_type="application/json").status_code == 422

    response = reject(reviewer_api, upgrade.pk, "Too risky")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["rejection_reason"]) == ("rejected", "Too risky")
    assert reject(reviewer_api, upgrade.pk, "Again").status_code == 409
    assert reject(reviewer_api, 999, "Gone").status_code == 404


def test_a_browser_session_needs_the_csrf_token_to_decide(reviewer):
    upgrade = propose()
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(reviewer)
    assert browser.get(f"{URL}/{upgrade.pk}").status_code == 200
    assert browser.post(f"{URL}/{upgrade.pk}/approve").status_code == 403
    assert Upgrade.objects.get(pk=upgrade.pk).status == "proposed"


def test_rolling_back_queues_it_for_the_worker_and_says_who_asked_and_a_second_ask_is_409(reviewer, reviewer_api):
    upgrade = propose()
    services.upgrade_approve(upgrade_id=upgrade.pk, actor=reviewer)
    services.upgrade_mark_applied(upgrade_id=upgrade.pk, applied_commit="c" * 40, replaced_commit="a" * 40)
    proposed = propose(description="Not applied yet")
    # Without upgrades.approve_upgrade: refused, as on the page.
    assert client_for(StaffFactory(username="staff")).post(f"{URL}/{upgrade.pk}/rollback").status_code == 403

    response = reviewer_api.post(f"{URL}/{upgrade.pk}/rollback")
    assert response.status_code == 202
    body = response.json()
    assert (body["status"], body["rollback_requested_by"], body["rollback_error"]) == ("applied", "reviewer", "")
    assert body["rollback_requested_at"] is not None
    assert Event.objects.get(event_type="upgrade.rollback_requested").data["by"] == "reviewer"
    again = reviewer_api.post(f"{URL}/{upgrade.pk}/rollback")
    assert again.status_code == 409 and "already queued" in again.json()["detail"]
    not_applied = reviewer_api.post(f"{URL}/{proposed.pk}/rollback")
    assert not_applied.status_code == 409 and "only an applied upgrade" in not_applied.json()["detail"]
    assert reviewer_api.post(f"{URL}/999/rollback").status_code == 404
