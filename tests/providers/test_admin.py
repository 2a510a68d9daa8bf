from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from apps.events.models import Event
from apps.providers.models import CircuitState
from apps.providers.services import breaker_record_failure, breaker_record_success
from tests.factories import StaffFactory
from tests.providers.conftest import THRESHOLD, metrics_of

CHANGELIST = reverse("admin:providers_provider_changelist")


def open_breaker(provider, now):
    for _ in range(THRESHOLD):
        breaker_record_failure(provider, now=now, error_class="connection", message="connection refused")


def reset_selected(client: Client, providers, **extra: str):
    return client.post(
        CHANGELIST,
        {"action": "reset_breaker", "_selected_action": [p.pk for p in providers], **extra},
        follow=True,
    )


def test_resetting_a_breaker_asks_for_confirmation_first_and_changes_nothing_until_then(admin_client, provider, t0):
    open_breaker(provider, t0)
    response = reset_selected(admin_client, [provider])
    page = response.content.decode()
    assert response.status_code == 200
    assert "Reset circuit breakers?" in page
    assert f"ollama: open, {THRESHOLD} consecutive failures" in page
    assert metrics_of(provider).circuit_state == CircuitState.OPEN


def test_confirming_the_reset_closes_the_breaker_and_records_the_user(admin_client, admin_user, provider, t0):
    open_breaker(provider, t0)
    response = reset_selected(admin_client, [provider], confirm="yes")
    assert "Reset the breaker of 1 provider(s)." in response.content.decode()
    assert metrics_of(provider).circuit_state == CircuitState.CLOSED
    [event] = Event.objects.filter(event_type="provider.circuit_reset")
    assert event.data["by"] == admin_user.username


def test_the_reset_action_needs_the_change_permission(db, provider, t0):
    viewer = StaffFactory(username="viewer")
    viewer.user_permissions.add(Permission.objects.get(codename="view_provider"))
    client = Client()
    client.force_login(viewer)
    open_breaker(provider, t0)
    page = client.get(CHANGELIST)
    assert page.status_code == 200
    assert "reset_breaker" not in page.content.decode()
    reset_selected(client, [provider], confirm="yes")
    assert metrics_of(provider).circuit_state == CircuitState.OPEN


def test_an_operator_edits_a_provider_and_sees_its_health_read_only(admin_client, provider, t0):
    breaker_record_success(provider, now=t0, latency_ms=420)
    url = reverse("admin:providers_provider_change", args=[provider.pk])
    page = admin_client.get(url)
    assert page.status_code == 200
    assert "420" in page.content.decode()
    response = admin_client.post(
        url,
        {
            "enabled": "",
            "priority": "9",
            "model": "mistral",
            "base_url": "http://127.0.0.1:11435",
            "connect_timeout_seconds": "1.5",
            "read_timeout_seconds": "30",
            # The read-only health inline's management form.
            "metrics-TOTAL_FORMS": "1",
            "metrics-INITIAL_FORMS": "1",
            "metrics-MIN_NUM_FORMS": "0",
            "metrics-MAX_NUM_FORMS": "1",
            "metrics-0-provider": str(provider.pk),
        },
    )
    assert response.status_code == 302
    provider.refresh_from_db()
    assert (provider.enabled, provider.priority, provider.model) == (False, 9, "mistral")
    assert (provider.connect_timeout_seconds, provider.read_timeout_seconds) == (1.5, 30.0)
    assert metrics_of(provider).total_requests == 1


def test_the_provider_admin_lists_render(admin_client, provider, t0):
    breaker_record_success(provider, now=t0, latency_ms=10)
    assert admin_client.get(CHANGELIST).status_code == 200
    assert admin_client.get(reverse("admin:providers_providerrequest_changelist")).status_code == 200
    usage = admin_client.get(reverse("admin:providers_usageday_changelist"))
    assert usage.status_code == 200 and provider.name in usage.content.decode()
    # The rollup is the router's to write: no adding, and no editing of a row.
    assert admin_client.get(reverse("admin:providers_usageday_add")).status_code == 403
