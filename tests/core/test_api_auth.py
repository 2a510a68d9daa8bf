from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.core.models import ApiToken
from apps.core.services import api_token_authenticate, api_token_create, api_token_revoke
from apps.swarm.models import Task

TASKS = "/api/v1/tasks"
ENDPOINTS = [TASKS, f"{TASKS}/1", "/api/v1/agents"]


def bearer(token: str, **kwargs) -> Client:
    return Client(headers={"Authorization": f"Bearer {token}"}, **kwargs)


@pytest.mark.parametrize("url", ENDPOINTS)
def test_the_api_refuses_requests_without_credentials_with_401(client, db, url):
    response = client.get(url)
    assert response.status_code == 401
    assert response.json() == {"detail": "Unauthorized"}


def test_a_script_posting_without_credentials_gets_401_not_a_csrf_error(db):
    script = Client(enforce_csrf_checks=True)
    response = script.post(TASKS, {"description": "Research it"}, content_type="application/json")
    assert response.status_code == 401
    assert not Task.objects.exists()


def test_an_unknown_token_is_refused_with_401(db):
    assert bearer("tt_not-a-real-token").get(TASKS).status_code == 401


@pytest.mark.parametrize("url", ENDPOINTS)
def test_the_token_of_a_non_staff_user_is_refused_with_403(plain_user, url):
    _, raw = api_token_create(user=plain_user)
    response = bearer(raw).get(url)
    assert response.status_code == 403
    assert response.json() == {"detail": "This endpoint needs a staff user."}


def test_a_non_staff_token_cannot_post_a_task(plain_user):
    _, raw = api_token_create(user=plain_user)
    response = bearer(raw).post(TASKS, {"description": "Research it"}, content_type="application/json")
    assert response.status_code == 403
    assert not Task.objects.exists()


def test_a_revoked_token_is_refused_with_401(staff_user):
    token, raw = api_token_create(user=staff_user)
    assert bearer(raw).get(TASKS).status_code == 200
    api_token_revoke(token=token)
    assert bearer(raw).get(TASKS).status_code == 401
    response = bearer(raw, enforce_csrf_checks=True).post(
        TASKS, {"description": "Research it"}, content_type="application/json"
    )
    assert response.status_code == 401
    assert not Task.objects.exists()


def test_the_token_of_a_deactivated_user_is_refused(staff_user):
    _, raw = api_token_create(user=staff_user)
    staff_user.is_active = False
    staff_user.save()
    assert bearer(raw).get(TASKS).status_code == 401


def test_a_bearer_token_needs_no_csrf_token_to_post(staff_token, db):
    script = bearer(staff_token, enforce_csrf_checks=True)
    response = script.post(TASKS, {"description": "Research it"}, content_type="application/json")
    assert response.status_code == 201


def test_a_browser_session_reads_the_api(staff_client):
    assert staff_client.get(TASKS).status_code == 200
    assert staff_client.get("/api/v1/agents").status_code == 200


def test_a_browser_session_of_a_non_staff_user_is_refused_with_403(plain_client):
    assert plain_client.get(TASKS).status_code == 403


def test_a_browser_session_must_send_its_csrf_token_to_post(staff_user):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(staff_user)
    refused = browser.post(TASKS, {"description": "Research it"}, content_type="application/json")
    assert refused.status_code == 403
    assert not Task.objects.exists()

    browser.get("/swarm/")  # sets the CSRF cookie, as the page does for htmx
    csrf = browser.cookies["csrftoken"].value
    accepted = browser.post(
        TASKS, {"description": "Research it"}, content_type="application/json", headers={"X-CSRFToken": csrf}
    )
    assert accepted.status_code == 201
    assert Task.objects.count() == 1


def test_the_token_is_stored_only_as_its_sha256(staff_user):
    import hashlib

    token, raw = api_token_create(user=staff_user, name="ci")
    assert raw.startswith("tt_")
    assert token.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert token.prefix == raw[:10]
    assert raw not in str(ApiToken.objects.filter(pk=token.pk).values().get())


def test_using_a_token_records_when_it_was_last_used_at_most_once_a_minute(staff_user):
    token, raw = api_token_create(user=staff_user)
    assert token.last_used_at is None
    assert api_token_authenticate(raw) == staff_user
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None
    api_token_authenticate(raw)
    token.refresh_from_db()
    assert token.last_used_at == first
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now() - timedelta(minutes=2))
    api_token_authenticate(raw)
    token.refresh_from_db()
    assert token.last_used_at is not None and token.last_used_at > first
