"""Provider rows and the circuit breaker (ADR-020).

The breaker's state lives in `provider_metrics`, so every web process and worker sees the same one. Each
transition is a conditional UPDATE that names the state it leaves: when two processes race, the database
lets exactly one of them make it, and only that one logs the event.
"""

import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from apps.events.services import clean_text, log_event
from apps.providers import clients, embedded
from apps.providers.models import CircuitState, Provider, ProviderMetrics, ProviderRequest

SOURCE = "providers.breaker"
LAST_ERROR_MAX = 300
PRUNE_BATCH = 500


class ProviderError(Exception):
    pass


class UnknownErrorClass(ProviderError, ValueError):
    pass


@dataclass(frozen=True)
class DefaultProvider:
    name: str
    kind: str
    priority: int
    enabled: bool
    model: str
    base_url: str


def default_providers() -> list[DefaultProvider]:
    """The providers of ADR-020, and the embedded model, as the settings and environment describe them now."""
    openai_configured = bool(settings.OPENAI_BASE_URL or os.environ.get("OPENAI_API_KEY"))
    return [
        DefaultProvider("ollama", Provider.Kind.OLLAMA, 1, True, settings.OLLAMA_MODEL, settings.OLLAMA_HOST),
        DefaultProvider(
            "airllm", Provider.Kind.AIRLLM, 2, bool(settings.AIRLLM_MODEL_PATH), settings.AIRLLM_MODEL_PATH, ""
        ),
        DefaultProvider(
            "openai",
            Provider.Kind.OPENAI,
            3,
            openai_configured,
            settings.OPENAI_MODEL,
            settings.OPENAI_BASE_URL or ("https://api.openai.com/v1" if openai_configured else ""),
        ),
        # Last, so that a configured real model comes first and a fresh install still answers.
        DefaultProvider("embedded", Provider.Kind.EMBEDDED, 4, True, embedded.default_model_name(), ""),
    ]


def providers_ensure_defaults() -> list[Provider]:
    """Create the default providers that do not exist yet and return them; existing rows are left as they are,
    so an operator's edits in the admin survive every start-up."""
    created = []
    for default in default_providers():
        with transaction.atomic():
            provider, was_created = Provider.objects.get_or_create(
                name=default.name,
                defaults={
                    "kind": default.kind,
                    "priority": default.priority,
                    "enabled": default.enabled,
                    "model": default.model,
                    "base_url": default.base_url,
                },
            )
            _metrics_ensure(provider)
        if was_created:
            created.append(provider)
    return created


def _metrics_ensure(provider: Provider) -> None:
    # Providers added in the admin get their row on first use.
    ProviderMetrics.objects.get_or_create(provider=provider)


def _metrics(provider: Provider) -> QuerySet[ProviderMetrics]:
    return ProviderMetrics.objects.filter(provider=provider)


def _metrics_update(provider: Provider, **changes: object) -> None:
    # The router writes here on every request: the row nearly always exists, so update first, create if not.
    if not _metrics(provider).update(**changes):
        _metrics_ensure(provider)
        _metrics(provider).update(**changes)


def _short_error(message: str) -> str:
    return clean_text(clients.redact(message), max_length=LAST_ERROR_MAX)


def _log(event_type: str, provider: Provider, **data: object) -> None:
    log_event(event_type, source=SOURCE, data={"provider": provider.name, **data})


def _request_record(
    provider: Provider, *, now: datetime, latency_ms: int, model: str, outcome: str, **fields: object
) -> ProviderRequest:
    """One row per request: `now` is when it ended, so it started latency_ms before."""
    return ProviderRequest.objects.create(
        provider=provider,
        model=model,
        started_at=now - timedelta(milliseconds=latency_ms),
        latency_ms=latency_ms,
        outcome=outcome,
        **fields,
    )


# --- the circuit breaker ---


def breaker_decided(metrics: ProviderMetrics, *, now: datetime) -> bool | None:
    """What a metrics row read a moment ago already says: True closed, False open and not due for a probe,
    None when only the database can decide (a probe is due: `breaker_allows` picks one caller)."""
    if metrics.circuit_state == CircuitState.CLOSED:
        return True
    recovered_before = now - timedelta(seconds=settings.CIRCUIT_BREAKER_RECOVERY_SECONDS)
    since = metrics.opened_at if metrics.circuit_state == CircuitState.OPEN else metrics.probe_started_at
    if since is not None and since > recovered_before:
        return False
    return None


def breaker_allows(provider: Provider, *, now: datetime) -> bool:
    """Whether a request may go to `provider` now.

    Closed: yes. Open, or half-open with its probe lost, past the recovery time: one caller, chosen by the
    conditional update, becomes the probe and gets yes; everyone else, no.
    """
    metrics = _metrics(provider)
    if metrics.filter(circuit_state=CircuitState.CLOSED).exists():
        return True
    recovered_before = now - timedelta(seconds=settings.CIRCUIT_BREAKER_RECOVERY_SECONDS)
    due = Q(circuit_state=CircuitState.OPEN, opened_at__lte=recovered_before) | Q(
        circuit_state=CircuitState.HALF_OPEN, probe_started_at__lte=recovered_before
    )
    if metrics.filter(due).update(circuit_state=CircuitState.HALF_OPEN, probe_started_at=now, updated_at=now):
        return True
    if not metrics.exists():  # a provider added in the admin, never used: closed
        _metrics_ensure(provider)
        return True
    return False


# The router records every answer: prepared statements, because building three querysets per request costs
# more than the rest of the router together (bench/router.py). Portable SQL, for SQLite and PostgreSQL.
_SUCCESS_INSERT_SQL = (
    "INSERT INTO provider_requests (provider_id, model, started_at, latency_ms, time_to_first_token_ms, "
    "tokens_in, tokens_out, outcome, error_class) VALUES (%s, %s, %s, %s, %s, %s, %s, 'success', '')"
)
# In one UPDATE every column reads the row as it was, so the mean uses the old count.
_SUCCESS_METRICS_SQL = (
    "UPDATE provider_metrics SET total_requests = total_requests + 1, "
    "successful_requests = successful_requests + 1, "
    "average_latency_ms = (average_latency_ms * successful_requests + %s) / (successful_requests + 1.0), "
    "consecutive_failures = 0, updated_at = %s WHERE provider_id = %s"
)
_SUCCESS_CLOSE_SQL = (
    "UPDATE provider_metrics SET circuit_state = 'closed', opened_at = NULL, probe_started_at = NULL "
    "WHERE provider_id = %s AND circuit_state <> 'closed'"
)


def breaker_record_success(
    provider: Provider,
    *,
    now: datetime,
    latency_ms: int,
    model: str = "",
    time_to_first_token_ms: int | None = None,
    tokens_in: int = 0,
    tokens_out: int = 0,
) -> None:
    """Record a request that answered; it closes the breaker whatever its state."""
    started_at = connection.ops.adapt_datetimefield_value(now - timedelta(milliseconds=latency_ms))
    updated_at = connection.ops.adapt_datetimefield_value(now)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            _SUCCESS_INSERT_SQL,
            [provider.pk, model, started_at, latency_ms, time_to_first_token_ms, tokens_in, tokens_out],
        )
        cursor.execute(_SUCCESS_METRICS_SQL, [latency_ms, updated_at, provider.pk])
        if cursor.rowcount == 0:  # a provider added in the admin, never used: its row, then the counts
            _metrics_ensure(provider)
            cursor.execute(_SUCCESS_METRICS_SQL, [latency_ms, updated_at, provider.pk])
        cursor.execute(_SUCCESS_CLOSE_SQL, [provider.pk])
        if cursor.rowcount:
            _log("provider.circuit_closed", provider, reason="a request succeeded")


def breaker_record_failure(
    provider: Provider,
    *,
    now: datetime,
    error_class: str,
    message: str,
    latency_ms: int = 0,
    model: str = "",
    tokens_in: int = 0,
    counts_for_breaker: bool = True,
) -> ProviderRequest:
    """Record a failed request. The breaker opens after CIRCUIT_BREAKER_THRESHOLD consecutive failures, or at
    once when the half-open probe fails. A failure below the threshold changes nothing about routing.

    A failure that is not the provider's fault (a prompt too long for its context) is recorded but does not
    count: the breaker and its consecutive count are left as they are.
    """
    if error_class not in ProviderRequest.ErrorClass.values or not error_class:
        raise UnknownErrorClass(f"unknown error class {error_class!r}")
    metrics = _metrics(provider)
    error = _short_error(message)
    threshold = settings.CIRCUIT_BREAKER_THRESHOLD
    with transaction.atomic():
        request = _request_record(
            provider,
            now=now,
            latency_ms=latency_ms,
            model=model,
            outcome=ProviderRequest.Outcome.FAILURE,
            tokens_in=tokens_in,
            error_class=error_class,
        )
        _metrics_update(
            provider,
            total_requests=F("total_requests") + 1,
            failed_requests=F("failed_requests") + 1,
            consecutive_failures=F("consecutive_failures") + (1 if counts_for_breaker else 0),
            last_error_at=now,
            last_error=error,
            last_error_class=error_class,
            updated_at=now,
        )
        if not counts_for_breaker:
            return request
        opened = {"circuit_state": CircuitState.OPEN, "opened_at": now, "probe_started_at": None}
        if metrics.filter(circuit_state=CircuitState.HALF_OPEN).update(**opened):
            _log("provider.circuit_opened", provider, reason="the half-open probe failed", error_class=error_class)
        elif metrics.filter(circuit_state=CircuitState.CLOSED, consecutive_failures__gte=threshold).update(**opened):
            failures = metrics.values_list("consecutive_failures", flat=True).get()
            _log(
                "provider.circuit_opened",
                provider,
                reason=f"{failures} consecutive failures",
                error_class=error_class,
            )
    return request


def breaker_reset(provider: Provider, *, actor: AbstractBaseUser | AnonymousUser) -> bool:
    """Close the breaker by hand and clear its failure count; False if there was nothing to reset."""
    _metrics_ensure(provider)
    metrics = _metrics(provider)
    with transaction.atomic():
        previous = metrics.values_list("circuit_state", "consecutive_failures").get()
        if (
            not metrics.filter(circuit_state=previous[0], consecutive_failures=previous[1])
            .exclude(circuit_state=CircuitState.CLOSED, consecutive_failures=0)
            .update(circuit_state=CircuitState.CLOSED, consecutive_failures=0, opened_at=None, probe_started_at=None)
        ):
            return False
        _log(
            "provider.circuit_reset",
            provider,
            by=actor.get_username(),
            previous_state=previous[0],
            consecutive_failures=previous[1],
        )
    return True


def provider_requests_prune(*, older_than: datetime) -> int:
    """Delete request rows started before `older_than`, in small batches; metrics keep their totals."""
    removed = 0
    while True:
        with transaction.atomic():
            ids = list(
                ProviderRequest.objects.filter(started_at__lt=older_than)
                .order_by("id")
                .values_list("id", flat=True)[:PRUNE_BATCH]
            )
            if not ids:
                return removed
            removed += ProviderRequest.objects.filter(id__in=ids).delete()[0]


@dataclass(frozen=True)
class HealthCheck:
    ok: bool
    message: str
    latency_ms: int
    error_class: str = ""


def provider_health_check(
    provider: Provider, *, actor: AbstractBaseUser | AnonymousUser | None = None, now: datetime | None = None
) -> HealthCheck:
    """Ask the provider whether it is up and has its model, without a completion.

    A pass closes an open breaker (the operator asked, and the provider answered); a failure is shown as the
    last error but does not count towards opening the breaker: only real requests do.
    """
    now = now or timezone.now()
    started = time.monotonic()
    try:
        message = clients.client_for(provider).health()
    except clients.ProviderCallError as error:
        check = HealthCheck(False, _short_error(error.message), clients.monotonic_ms(started), error.error_class)
        _metrics_update(
            provider, last_error_at=now, last_error=check.message, last_error_class=error.error_class, updated_at=now
        )
    else:
        check = HealthCheck(True, _short_error(message), clients.monotonic_ms(started))
        # The configuration error it may have shown is fixed: the provider answered with its model.
        _metrics_update(provider, last_error_class="", updated_at=now)
    with transaction.atomic():
        _log(
            "provider.health_checked",
            provider,
            ok=check.ok,
            message=check.message,
            error_class=check.error_class,
            latency_ms=check.latency_ms,
            by=actor.get_username() if actor is not None else "",
        )
        if check.ok and _metrics(provider).exclude(circuit_state=CircuitState.CLOSED).update(
            circuit_state=CircuitState.CLOSED, consecutive_failures=0, opened_at=None, probe_started_at=None
        ):
            _log("provider.circuit_closed", provider, reason="a health check passed")
    return check
