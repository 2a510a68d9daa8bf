import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.events.models import Event
from apps.providers.models import CircuitState, Provider
from apps.providers.selectors import percentile, router_status, url_without_credentials
from apps.providers.services import breaker_record_failure, breaker_record_success
from tests.llm_servers import OllamaServer, refused_url
from tests.providers.conftest import RECOVERY, THRESHOLD, metrics_of
from tests.providers.factories import ProviderFactory, ProviderRequestFactory

STATUS = reverse("providers:status")


def fast_provider(**fields) -> Provider:
    """A provider whose calls give up quickly when nothing answers."""
    return ProviderFactory(connect_timeout_seconds=0.5, read_timeout_seconds=5, **fields)


def open_breaker(provider, *, at):
    for _ in range(THRESHOLD):
        breaker_record_failure(provider, now=at, error_class="connection", message="cannot connect")
    assert metrics_of(provider).circuit_state == CircuitState.OPEN


def card(html: str, name: str) -> str:
    """The HTML of one provider's card."""
    match = re.search(rf'<article class="card provider[^"]*" id="provider-{name}">(.*?)</article>', html, re.S)
    assert match, f"no card for {name}"
    return match.group(1)


def csrf_token(client: Client) -> str:
    client.get(STATUS)
    return client.cookies["csrftoken"].value


def test_the_status_page_lives_at_router_status():
    assert STATUS == "/router/status"


def test_the_page_shows_each_provider_in_priority_order_with_its_figures(staff_client):
    second = ProviderFactory(name="openai", kind=Provider.Kind.OPENAI, priority=3)
    first = ProviderFactory(name="ollama", priority=1)
    for latency in range(100, 1001, 100):  # ten successes: p50 500 ms, p95 1000 ms
        ProviderRequestFactory(provider=first, latency_ms=latency)
    ProviderRequestFactory(provider=first, latency_ms=5, outcome="failure", error_class="timeout")
    ProviderRequestFactory(provider=second, latency_ms=250)
    html = staff_client.get(STATUS).content.decode()
    assert html.index('id="provider-ollama"') < html.index('id="provider-openai"')
    ollama = card(html, "ollama")
    assert "circuit closed" in ollama
    assert '<dd class="requests">11 <span class="muted">(10 ok, 1 failed)</span></dd>' in ollama
    assert '<dd class="success-rate">90.9 %</dd>' in ollama
    assert '<dd class="latency">500 ms / 1000 ms</dd>' in ollama
    assert '<dd class="latency">250 ms / 250 ms</dd>' in card(html, "openai")


def test_requests_older_than_an_hour_are_left_out(staff_client):
    provider = ProviderFactory(name="ollama")
    ProviderRequestFactory(provider=provider, latency_ms=100, started_at=timezone.now() - timedelta(minutes=59))
    ProviderRequestFactory(provider=provider, latency_ms=9000, started_at=timezone.now() - timedelta(minutes=61))
    ollama = card(staff_client.get(STATUS).content.decode(), "ollama")
    assert '<dd class="requests">1 <span class="muted">(1 ok, 0 failed)</span></dd>' in ollama
    assert '<dd class="latency">100 ms / 100 ms</dd>' in ollama


def test_a_provider_without_requests_shows_dashes_not_zeros(staff_client):
    ProviderFactory(name="ollama")
    ollama = card(staff_client.get(STATUS).content.decode(), "ollama")
    assert '<dd class="success-rate">—</dd>' in ollama
    assert '<dd class="latency">—</dd>' in ollama
    assert '<dd class="last-error">none</dd>' in ollama


def test_the_chart_data_counts_successes_and_failures_per_five_minutes(staff_client):
    provider = ProviderFactory(name="ollama")
    now = timezone.now()
    ProviderRequestFactory(provider=provider, started_at=now - timedelta(minutes=2))
    ProviderRequestFactory(provider=provider, started_at=now - timedelta(minutes=3), outcome="failure")
    ProviderRequestFactory(provider=provider, started_at=now - timedelta(minutes=57))
    response = staff_client.get(STATUS)
    html = response.content.decode()
    # Passed as data for static/js/router-status.js, never as an inline script.
    assert '<script id="router-chart-data" type="application/json">' in html
    assert "<script>" not in html
    assert 'src="/static/vendor/chartjs/chart-4.6.1.umd.min.js"' in html
    assert 'src="/static/js/router-status.js"' in html
    chart = response.context["chart"]
    assert len(chart["labels"]) == 12
    assert chart["bucket_seconds"] == 300
    assert chart["providers"]["ollama"] == {
        "successes": [1] + [0] * 10 + [1],
        "failures": [0] * 11 + [1],
    }


def test_an_open_breaker_shows_the_time_until_half_open(staff_client):
    provider = ProviderFactory(name="ollama")
    open_breaker(provider, at=timezone.now() - timedelta(seconds=RECOVERY - 40))
    ollama = card(staff_client.get(STATUS).content.decode(), "ollama")
    assert "circuit open" in ollama
    assert re.search(r'Half-open in <strong class="until-half-open">(40|39) s</strong>', ollama)
    assert f"<dd>{THRESHOLD} <span" in ollama


def test_an_open_breaker_past_its_recovery_time_says_the_next_request_probes(staff_client):
    provider = ProviderFactory(name="ollama")
    open_breaker(provider, at=timezone.now() - timedelta(seconds=RECOVERY + 5))
    ollama = card(staff_client.get(STATUS).content.decode(), "ollama")
    assert '<strong class="until-half-open">Half-open now</strong>' in ollama


def test_seconds_until_half_open_counts_from_when_the_breaker_opened(db, t0):
    provider = ProviderFactory(name="ollama")
    open_breaker(provider, at=t0)
    [status] = router_status(now=t0 + timedelta(seconds=15.5)).providers
    assert status.seconds_until_half_open == RECOVERY - 15
    [status] = router_status(now=t0 + timedelta(seconds=RECOVERY * 3)).providers
    assert status.seconds_until_half_open == 0


def test_a_closed_breaker_has_no_time_until_half_open(db, t0):
    ProviderFactory(name="ollama")
    [status] = router_status(now=t0).providers
    assert (status.circuit_state, status.seconds_until_half_open) == ("closed", None)


def test_the_page_explains_the_breaker_states_and_settings(staff_client):
    html = staff_client.get(STATUS).content.decode()
    assert f"after {THRESHOLD} consecutive failures (<code>CIRCUIT_BREAKER_THRESHOLD</code>)" in html
    assert f"for {RECOVERY} s (<code>CIRCUIT_BREAKER_RECOVERY_SECONDS</code>)" in html
    assert "<strong>Half-open</strong>: then one probe request is let through" in html


@pytest.mark.parametrize(
    ("error_class", "message"),
    [("auth", "the API at http://x/v1 refused the key (401)"), ("not_found", 'model "llama9" not found')],
)
def test_a_single_auth_or_not_found_failure_is_flagged_as_a_configuration_error(staff_client, error_class, message):
    provider = ProviderFactory(name="ollama")
    breaker_record_failure(provider, now=timezone.now(), error_class=error_class, message=message)
    assert metrics_of(provider).circuit_state == CircuitState.CLOSED  # far below the threshold
    ollama = card(staff_client.get(STATUS).content.decode(), "ollama")
    assert f'<p class="config-error" role="alert"><strong>Configuration error</strong> ({error_class}):' in ollama
    assert message.replace('"', "&quot;") in ollama


def test_a_connection_failure_is_not_a_configuration_error(staff_client):
    provider = ProviderFactory(name="ollama")
    breaker_record_failure(provider, now=timezone.now(), error_class="connection", message="cannot connect")
    ollama = card(staff_client.get(STATUS).content.decode(), "ollama")
    assert "Configuration error" not in ollama
    assert '<span class="badge error-class">connection</span> cannot connect' in ollama


def test_a_success_after_a_configuration_error_clears_the_flag(db, t0):
    provider = ProviderFactory(name="ollama")
    breaker_record_failure(provider, now=t0, error_class="auth", message="refused the key")
    assert router_status(now=t0 + timedelta(seconds=1)).providers[0].configuration_error
    breaker_record_success(provider, now=t0 + timedelta(seconds=2), latency_ms=100)
    [status] = router_status(now=t0 + timedelta(seconds=3)).providers
    assert not status.configuration_error
    assert status.last_error_class == "auth"  # still shown as the last error, just not as a standing problem


def test_disabled_providers_are_shown_with_a_hint_how_to_enable_them(staff_client):
    ProviderFactory(name="ollama", priority=1)
    disabled = ProviderFactory(name="openai", kind=Provider.Kind.OPENAI, priority=2, enabled=False)
    html = staff_client.get(STATUS).content.decode()
    assert '<article class="card provider is-disabled" id="provider-openai">' in html
    openai = card(html, "openai")
    assert '<span class="badge circuit-disabled">disabled</span>' in openai
    assert "Disabled: the router skips it. To use it, set OPENAI_BASE_URL or OPENAI_API_KEY" in openai
    assert f'href="/admin/providers/provider/{disabled.pk}/change/"' in openai


def test_the_base_url_is_shown_without_its_credentials(staff_client):
    ProviderFactory(
        name="openai",
        kind=Provider.Kind.OPENAI,
        base_url="https://bobthebuilder:hunter2secret@llm.example/v1?key=querykey77",
    )
    html = staff_client.get(STATUS).content.decode()
    assert "<code>https://llm.example/v1</code>" in card(html, "openai")
    assert "hunter2secret" not in html and "bobthebuilder" not in html and "querykey77" not in html


def test_url_without_credentials_keeps_host_port_and_path():
    assert url_without_credentials("http://u:p@[::1]:8080/v1") == "http://[::1]:8080/v1"
    assert url_without_credentials("http://127.0.0.1:11434") == "http://127.0.0.1:11434"
    assert url_without_credentials("") == ""


def test_percentiles_are_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([7], 95) == 7
    assert percentile([1, 2], 50) == 1
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile(list(range(1, 101)), 50) == 50


def test_an_htmx_refresh_gets_only_the_status_region(staff_client):
    ProviderFactory(name="ollama")
    response = staff_client.get(STATUS, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="router-status" hx-get="/router/status" hx-trigger="every 5s"')
    assert "<html" not in html
    assert 'id="provider-ollama"' in html


def test_the_page_makes_the_same_few_queries_for_many_providers(staff_client):
    def queries_for_page() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert staff_client.get(STATUS).status_code == 200
        return len(queries)

    first = ProviderFactory(name="ollama")
    breaker_record_failure(first, now=timezone.now(), error_class="auth", message="refused")
    ProviderRequestFactory(provider=first)
    one = queries_for_page()
    for n in range(6):
        provider = ProviderFactory(name=f"extra{n}", enabled=n % 2 == 0)
        ProviderRequestFactory.create_batch(3, provider=provider)
        breaker_record_failure(provider, now=timezone.now(), error_class="not_found", message="no model")
    open_breaker(ProviderFactory(name="flaky"), at=timezone.now())
    assert queries_for_page() == one
    # Session and user, then providers with metrics, the window's requests, the last successes, and the
    # navigation's count of pending upgrades.
    assert one <= 6


def test_router_status_takes_two_queries_three_while_a_configuration_error_shows(db, t0, django_assert_num_queries):
    for n in range(4):
        provider = ProviderFactory(name=f"p{n}")
        ProviderRequestFactory.create_batch(2, provider=provider, started_at=t0)
    with django_assert_num_queries(2):
        assert len(router_status(now=t0).providers) == 4
    later = t0 + timedelta(seconds=1)
    breaker_record_failure(provider, now=later, error_class="auth", message="refused")
    with django_assert_num_queries(3):
        assert [p.configuration_error for p in router_status(now=later).providers] == [False, False, False, True]


# --- the buttons ---


def test_a_health_check_against_a_live_server_closes_an_open_breaker(staff_client):
    with OllamaServer() as server:
        provider = fast_provider(name="ollama", base_url=server.url)
        open_breaker(provider, at=timezone.now())
        response = staff_client.post(reverse("providers:health_check", args=[provider.pk]), follow=True)
    assert response.redirect_chain == [(STATUS, 302)]
    html = response.content.decode()
    assert re.search(r'<li class="success">Health check of ollama passed in \d+ ms: Ollama at .+ is up', html)
    assert metrics_of(provider).circuit_state == CircuitState.CLOSED
    assert "circuit closed" in card(html, "ollama")
    event = Event.objects.get(event_type="provider.health_checked")
    assert (event.data["ok"], event.data["by"]) == (True, "reviewer")


def test_a_health_check_against_a_refused_url_shows_the_failure(staff_client):
    provider = fast_provider(name="ollama", base_url=refused_url())
    response = staff_client.post(reverse("providers:health_check", args=[provider.pk]), follow=True)
    html = response.content.decode()
    assert '<li class="error">Health check of ollama failed (connection): cannot connect to Ollama at' in html
    assert '<span class="badge error-class">connection</span> cannot connect' in card(html, "ollama")
    assert metrics_of(provider).consecutive_failures == 0  # a check does not count towards opening the breaker


def test_a_health_check_of_a_missing_model_is_a_configuration_error(staff_client):
    with OllamaServer(models=["mistral"]) as server:
        provider = fast_provider(name="ollama", base_url=server.url, model="llama3.2")
        response = staff_client.post(reverse("providers:health_check", args=[provider.pk]), follow=True)
    html = response.content.decode()
    assert "Health check of ollama failed (not_found): Ollama at" in html
    assert "<strong>Configuration error</strong> (not_found)" in card(html, "ollama")


def test_reset_closes_an_open_breaker(staff_client):
    provider = ProviderFactory(name="ollama")
    open_breaker(provider, at=timezone.now())
    response = staff_client.post(reverse("providers:reset", args=[provider.pk]), follow=True)
    assert response.redirect_chain == [(STATUS, 302)]
    metrics = metrics_of(provider)
    assert (metrics.circuit_state, metrics.consecutive_failures) == (CircuitState.CLOSED, 0)
    html = response.content.decode()
    assert "The breaker of ollama is closed again; its failure count is zero." in html
    assert Event.objects.get(event_type="provider.circuit_reset").data["by"] == "reviewer"


def test_reset_of_a_closed_breaker_says_there_was_nothing_to_reset(staff_client):
    provider = ProviderFactory(name="ollama")
    response = staff_client.post(reverse("providers:reset", args=[provider.pk]), follow=True)
    assert "The breaker of ollama was already closed with no failures." in response.content.decode()
    assert not Event.objects.filter(event_type="provider.circuit_reset").exists()


@pytest.mark.parametrize("name", ["providers:health_check", "providers:reset"])
def test_a_button_for_an_unknown_provider_is_404(staff_client, name):
    assert staff_client.post(reverse(name, args=[999])).status_code == 404


@pytest.mark.parametrize("name", ["providers:health_check", "providers:reset"])
def test_the_buttons_refuse_get(staff_client, name):
    provider = ProviderFactory(name="ollama")
    assert staff_client.get(reverse(name, args=[provider.pk])).status_code == 405


def test_the_status_page_refuses_post(staff_client):
    assert staff_client.post(STATUS).status_code == 405


# --- who may see and press ---


def test_anonymous_users_are_sent_to_the_login_page(db, client):
    provider = ProviderFactory(name="ollama")
    response = client.get(STATUS)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={STATUS}"
    assert client.post(reverse("providers:reset", args=[provider.pk])).status_code == 302


def test_non_staff_users_get_403_and_change_nothing(plain_client):
    provider = ProviderFactory(name="ollama")
    open_breaker(provider, at=timezone.now())
    assert plain_client.get(STATUS).status_code == 403
    assert plain_client.post(reverse("providers:reset", args=[provider.pk])).status_code == 403
    assert plain_client.post(reverse("providers:health_check", args=[provider.pk])).status_code == 403
    assert metrics_of(provider).circuit_state == CircuitState.OPEN
    assert not Event.objects.filter(event_type__in=["provider.circuit_reset", "provider.health_checked"]).exists()


def test_the_buttons_need_the_csrf_token(staff_user):
    provider = ProviderFactory(name="ollama")
    open_breaker(provider, at=timezone.now())
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    url = reverse("providers:reset", args=[provider.pk])
    assert client.post(url).status_code == 403
    assert client.post(reverse("providers:health_check", args=[provider.pk])).status_code == 403
    assert metrics_of(provider).circuit_state == CircuitState.OPEN
    response = client.post(url, {"csrfmiddlewaretoken": csrf_token(client)})
    assert response.status_code == 302
    assert metrics_of(provider).circuit_state == CircuitState.CLOSED


# --- secrets ---


def test_the_api_key_never_reaches_the_page_even_after_an_auth_failure(staff_client, monkeypatch):
    key = "sk-test-9f8e7d6c5b4a3210fedcba9876543210"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with OllamaServer(mode="unauthorized") as server:
        # The key even in the base URL, as a careless operator might paste it.
        base_url = server.url.replace("http://", f"http://apikey:{key}@") + "/v1"
        provider = fast_provider(name="openai", kind=Provider.Kind.OPENAI, base_url=base_url, model="gpt-4o-mini")
        health = staff_client.post(reverse("providers:health_check", args=[provider.pk]), follow=True)
        assert server.requests["/v1/models"] == 1
    assert metrics_of(provider).last_error_class == "auth"
    html = health.content.decode()
    assert "Health check of openai failed (auth)" in html
    assert "<strong>Configuration error</strong> (auth)" in card(html, "openai")
    assert key not in html
    assert "apikey:" not in html
    assert key not in staff_client.get(STATUS).content.decode()


def test_the_embedded_provider_shows_its_model_host_its_window_and_tokens_per_second(
    staff_client, embedded_model, settings
):
    settings.OLLAMA_HOST = refused_url()
    from apps.providers import router

    stream = router.complete([{"role": "user", "content": "Name three colours."}], stream=True)
    assert "".join(stream)
    html = card(staff_client.get(STATUS).content.decode(), "embedded")
    assert "loaded SmolLM2-135M-Instruct in" in html and "2048 tokens of context" in html
    assert re.search(r"2048 tokens <span class=\"muted\">\(server\)</span>", html)
    assert re.search(r'class="tokens-per-second">\d+\.\d tokens/s', html)


def test_without_a_model_host_the_embedded_provider_says_how_to_start_one(staff_client, settings, tmp_path):
    settings.EMBEDDED_SOCKET = str(tmp_path / "none.sock")
    ProviderFactory(name="embedded", kind=Provider.Kind.EMBEDDED, model="SmolLM2-135M-Instruct", base_url="")
    html = card(staff_client.get(STATUS).content.decode(), "embedded")
    assert "not running" in html and "make run" in html
