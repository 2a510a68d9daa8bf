from datetime import timedelta

import pytest

from apps.events.models import Event
from apps.providers.models import CircuitState, ProviderRequest
from apps.providers.selectors import provider_requests_recent, providers_in_order
from apps.providers.services import (
    UnknownErrorClass,
    breaker_allows,
    breaker_record_failure,
    breaker_record_success,
    breaker_reset,
    provider_requests_prune,
)
from tests.providers.conftest import RECOVERY, THRESHOLD, metrics_of
from tests.providers.factories import ProviderFactory


def fail(provider, now, times=1):
    for _ in range(times):
        breaker_record_failure(provider, now=now, error_class="connection", message="connection refused")


def events(event_type):
    return list(Event.objects.filter(event_type=event_type).order_by("id"))


def open_breaker(provider, now):
    fail(provider, now, THRESHOLD)
    assert metrics_of(provider).circuit_state == CircuitState.OPEN


def test_a_fresh_provider_that_fails_once_is_still_tried(provider, t0):
    fail(provider, t0)
    assert breaker_allows(provider, now=t0)
    assert metrics_of(provider).consecutive_failures == 1


def test_the_breaker_opens_after_exactly_threshold_consecutive_failures(provider, t0):
    fail(provider, t0, THRESHOLD - 1)
    assert breaker_allows(provider, now=t0)
    assert not events("provider.circuit_opened")
    fail(provider, t0)
    assert not breaker_allows(provider, now=t0)
    metrics = metrics_of(provider)
    assert (metrics.circuit_state, metrics.opened_at, metrics.consecutive_failures) == ("open", t0, THRESHOLD)
    [event] = events("provider.circuit_opened")
    assert event.data["provider"] == "ollama"
    assert event.data["reason"] == f"{THRESHOLD} consecutive failures"


def test_a_success_between_failures_resets_the_count(provider, t0):
    fail(provider, t0, THRESHOLD - 1)
    breaker_record_success(provider, now=t0, latency_ms=100)
    fail(provider, t0, THRESHOLD - 1)
    assert metrics_of(provider).circuit_state == CircuitState.CLOSED
    assert metrics_of(provider).consecutive_failures == THRESHOLD - 1
    assert not events("provider.circuit_closed")  # it never left closed


def test_further_failures_of_an_open_provider_log_no_second_opening(provider, t0):
    open_breaker(provider, t0)
    fail(provider, t0 + timedelta(seconds=1), 3)
    assert len(events("provider.circuit_opened")) == 1
    assert metrics_of(provider).opened_at == t0


def test_an_open_breaker_refuses_until_the_recovery_time_then_lets_exactly_one_probe_through(provider, t0):
    open_breaker(provider, t0)
    assert not breaker_allows(provider, now=t0 + timedelta(seconds=RECOVERY - 1))
    probe_time = t0 + timedelta(seconds=RECOVERY)
    assert breaker_allows(provider, now=probe_time)
    assert not breaker_allows(provider, now=probe_time)  # a second caller at the same moment
    assert not breaker_allows(provider, now=probe_time + timedelta(seconds=RECOVERY - 1))
    metrics = metrics_of(provider)
    assert (metrics.circuit_state, metrics.probe_started_at) == ("half_open", probe_time)


def test_a_successful_probe_closes_the_breaker_and_logs_it_once(provider, t0):
    open_breaker(provider, t0)
    probe_time = t0 + timedelta(seconds=RECOVERY)
    assert breaker_allows(provider, now=probe_time)
    breaker_record_success(provider, now=probe_time, latency_ms=250)
    breaker_record_success(provider, now=probe_time, latency_ms=250)
    metrics = metrics_of(provider)
    assert (metrics.circuit_state, metrics.consecutive_failures, metrics.opened_at) == ("closed", 0, None)
    assert breaker_allows(provider, now=probe_time)
    [event] = events("provider.circuit_closed")
    assert event.data["provider"] == "ollama"


def test_a_failed_probe_reopens_the_breaker_at_once_for_another_recovery_period(provider, t0):
    open_breaker(provider, t0)
    probe_time = t0 + timedelta(seconds=RECOVERY)
    assert breaker_allows(provider, now=probe_time)
    breaker_record_failure(provider, now=probe_time, error_class="timeout", message="read timed out")
    metrics = metrics_of(provider)
    assert (metrics.circuit_state, metrics.opened_at) == ("open", probe_time)
    assert not breaker_allows(provider, now=probe_time + timedelta(seconds=RECOVERY - 1))
    assert breaker_allows(provider, now=probe_time + timedelta(seconds=RECOVERY))
    first, second = events("provider.circuit_opened")
    assert first.data["reason"] == f"{THRESHOLD} consecutive failures"
    assert second.data["reason"] == "the half-open probe failed"
    assert second.data["error_class"] == "timeout"


def test_a_probe_that_never_reports_is_replaced_after_the_recovery_time(provider, t0):
    open_breaker(provider, t0)
    probe_time = t0 + timedelta(seconds=RECOVERY)
    assert breaker_allows(provider, now=probe_time)
    assert breaker_allows(provider, now=probe_time + timedelta(seconds=RECOVERY))


def test_reset_closes_the_breaker_and_names_who_did_it(provider, t0, admin_user):
    open_breaker(provider, t0)
    assert breaker_reset(provider, actor=admin_user)
    assert breaker_allows(provider, now=t0)
    assert metrics_of(provider).consecutive_failures == 0
    [event] = events("provider.circuit_reset")
    assert event.data == {
        "provider": "ollama",
        "by": admin_user.username,
        "previous_state": "open",
        "consecutive_failures": THRESHOLD,
    }
    assert not breaker_reset(provider, actor=admin_user)  # nothing left to reset
    assert len(events("provider.circuit_reset")) == 1


def test_requests_and_metrics_are_recorded_with_a_running_mean_latency(provider, t0):
    breaker_record_success(
        provider, now=t0, latency_ms=100, model="llama3.2", time_to_first_token_ms=40, tokens_in=12, tokens_out=30
    )
    breaker_record_success(provider, now=t0, latency_ms=300)
    breaker_record_failure(provider, now=t0, error_class="server_error", message="HTTP 500", latency_ms=5000)
    metrics = metrics_of(provider)
    assert (metrics.total_requests, metrics.successful_requests, metrics.failed_requests) == (3, 2, 1)
    assert metrics.average_latency_ms == pytest.approx(200)
    assert (metrics.last_error, metrics.last_error_at) == ("HTTP 500", t0)
    first = ProviderRequest.objects.get(latency_ms=100)
    assert (first.started_at, first.model, first.time_to_first_token_ms) == (
        t0 - timedelta(milliseconds=100),
        "llama3.2",
        40,
    )
    assert (first.tokens_in, first.tokens_out, first.outcome, first.error_class) == (12, 30, "success", "")
    failure = ProviderRequest.objects.get(outcome="failure")
    assert failure.error_class == "server_error"


def test_a_failure_must_name_a_known_error_class(provider, t0):
    with pytest.raises(UnknownErrorClass):
        breaker_record_failure(provider, now=t0, error_class="gremlins", message="?")
    assert not ProviderRequest.objects.exists()


def test_pruning_removes_only_requests_older_than_the_cutoff(provider, t0):
    breaker_record_success(provider, now=t0 - timedelta(days=10), latency_ms=10)
    breaker_record_success(provider, now=t0 - timedelta(days=9), latency_ms=10)
    breaker_record_success(provider, now=t0, latency_ms=10)
    assert provider_requests_prune(older_than=t0 - timedelta(days=1)) == 2
    assert ProviderRequest.objects.count() == 1
    assert metrics_of(provider).total_requests == 3


def test_selectors_give_enabled_providers_in_priority_order_and_the_last_hour(provider, t0):
    ProviderFactory(name="openai", priority=3)
    ProviderFactory(name="airllm", priority=2, enabled=False)
    provider.priority = 1
    provider.save()
    assert [p.name for p in providers_in_order()] == ["ollama", "openai"]
    breaker_record_success(provider, now=t0 - timedelta(minutes=61), latency_ms=10)
    breaker_record_success(provider, now=t0 - timedelta(minutes=59), latency_ms=10)
    [recent] = provider_requests_recent(provider=provider, now=t0)
    assert recent.started_at == t0 - timedelta(minutes=59, milliseconds=10)
