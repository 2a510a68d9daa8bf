from django.test import Client
from django.urls import reverse

from apps.core.models import ApiToken
from apps.core.services import api_token_create, worker_register


def test_revoking_tokens_in_the_admin_stops_them_working_and_reports_the_count(admin_client, staff_user):
    (first, first_raw), (second, _) = api_token_create(user=staff_user), api_token_create(user=staff_user)
    script = Client(headers={"Authorization": f"Bearer {first_raw}"})
    assert script.get("/api/v1/agents").status_code == 200
    response = admin_client.post(
        reverse("admin:core_apitoken_changelist"),
        {"action": "revoke", "_selected_action": [first.pk, second.pk]},
        follow=True,
    )
    assert "Revoked 2 token(s)." in response.content.decode()
    assert ApiToken.objects.filter(revoked_at__isnull=True).count() == 0
    assert script.get("/api/v1/agents").status_code == 401


def test_an_already_revoked_token_is_not_counted_again(admin_client, staff_user):
    token, _ = api_token_create(user=staff_user)
    url = reverse("admin:core_apitoken_changelist")
    admin_client.post(url, {"action": "revoke", "_selected_action": [token.pk]})
    revoked_at = ApiToken.objects.get().revoked_at
    response = admin_client.post(url, {"action": "revoke", "_selected_action": [token.pk]}, follow=True)
    assert "Revoked 0 token(s)." in response.content.decode()
    assert ApiToken.objects.get().revoked_at == revoked_at


def test_tokens_are_not_added_in_the_admin_and_their_hash_is_not_shown(admin_client, staff_user):
    token, raw = api_token_create(user=staff_user)
    assert admin_client.get(reverse("admin:core_apitoken_add")).status_code == 403
    page = admin_client.get(reverse("admin:core_apitoken_change", args=[token.pk])).content.decode()
    assert token.prefix in page
    assert token.key_hash not in page
    assert raw not in page


def test_the_worker_admin_shows_whether_each_worker_is_alive(admin_client):
    worker_register(worker_id="host:9")
    page = admin_client.get(reverse("admin:core_workerheartbeat_changelist")).content.decode()
    assert "host:9" in page
    assert 'alt="True"' in page
