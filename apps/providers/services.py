"""Provider rows and the circuit breaker (ADR-020).

The breaker's state lives in `provider_metrics`, so every web process and worker sees the same one. Each
transition is a conditional UPDATE that names the state it leaves: when two processes race, the database
lets exactly one of them make it, and only that one logs the event.
"""

import functools
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection, transaction
from django.db.models import Count, F, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from apps.agents.models import ChatMessage
from apps.events.services import clean_multiline_text, clean_text, log_event
from apps.providers import clients, embedded
from apps.providers.models import (
    CALLER_ERROR_CLASSES,
    HISTOGRAM_BOUNDS,
    LATENCY_COLUMNS,
    TTFT_COLUMNS,
    CircuitState,
    ModelCall,
    Provider,
    ProviderMetrics,
    ProviderRequest,
    UsageDay,
    histogram_bucket,
)
from apps.upgrades.models import UpgradeRequest

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
    read_timeout_seconds: float = Provider._meta.get_field("read_timeout_seconds").get_default()


def default_providers() -> list[DefaultProvider]:
    """The providers of ADR-020, and the embedded model, as the settings and environment describe them now."""
    openai_configured = bool(settings.OPENAI_BASE_URL or os.environ.get("OPENAI_API_KEY"))
    return [
        DefaultProvider("ollama", Provider.Kind.OLLAMA, 1, True, settings.OLLAMA_MODEL, settings.OLLAMA_HOST),
        DefaultProvider(
            "airllm",
            Provider.Kind.AIRLLM,
            2,
            bool(settings.AIRLLM_MODEL_PATH),
            settings.AIRLLM_MODEL_PATH,
            "",
            settings.AIRLLM_READ_TIMEOUT_SECONDS,
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
                    "read_timeout_seconds": default.read_timeout_seconds,
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


# --- usage: the daily rollup of request rows (UsageDay) ---

_USAGE_KEY = ("day", "provider", "model", "agent_pk")
_USAGE_COUNTERS = ("calls", "ok", "caller_errors", "provider_failures", "tokens_in", "tokens_out")


@functools.cache
def _usage_upsert_sql(columns: tuple[str, ...]) -> str:
    """One statement that adds a request to its row, creating the row if it is the day's first for its key: atomic
    on SQLite and PostgreSQL alike (ON CONFLICT ... DO UPDATE), so concurrent writers never lose a count."""
    names = ", ".join((*_USAGE_KEY, *columns))
    values = ", ".join(["%s"] * (len(_USAGE_KEY) + len(columns)))
    adds = ", ".join(f"{c} = usage_days.{c} + excluded.{c}" for c in columns)
    key = ", ".join(_USAGE_KEY)
    # Column names only from the constants above; every value is a parameter.
    return f"INSERT INTO usage_days ({names}) VALUES ({values}) ON CONFLICT ({key}) DO UPDATE SET {adds}"  # noqa: S608


def usage_outcome_column(outcome: str, error_class: str) -> str:
    if outcome == ProviderRequest.Outcome.SUCCESS:
        return "ok"
    return "caller_errors" if error_class in CALLER_ERROR_CLASSES else "provider_failures"


def _usage_add(
    cursor: Any,
    *,
    started_at: datetime,
    provider: str,
    model: str,
    agent_id: int | None,
    outcome: str,
    error_class: str,
    latency_ms: int,
    time_to_first_token_ms: int | None,
    tokens_in: int,
    tokens_out: int,
) -> None:
    """Add one request row to the rollup; called in the transaction that writes the row."""
    changes = {
        "calls": 1,
        usage_outcome_column(outcome, error_class): 1,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
    }
    # Latency percentiles are of successful requests: a timeout's latency says nothing about the model's speed.
    if outcome == ProviderRequest.Outcome.SUCCESS:
        changes[LATENCY_COLUMNS[histogram_bucket(latency_ms)]] = 1
        if time_to_first_token_ms is not None:
            changes[TTFT_COLUMNS[histogram_bucket(time_to_first_token_ms)]] = 1
    columns = tuple(changes)
    key = [connection.ops.adapt_datefield_value(timezone.localdate(started_at)), provider, model, agent_id or 0]
    cursor.execute(_usage_upsert_sql(columns), [*key, *changes.values()])


def _bucket_filter(field_name: str, index: int) -> Q:
    bucket = Q(**{f"{field_name}__gte": HISTOGRAM_BOUNDS[index]})
    if index + 1 < len(HISTOGRAM_BOUNDS):
        bucket &= Q(**{f"{field_name}__lt": HISTOGRAM_BOUNDS[index + 1]})
    return bucket


def usage_rows_from_requests(requests: QuerySet[Any]) -> QuerySet[Any]:
    """`requests` (ProviderRequest rows) grouped by day, provider, model and agent, with every UsageDay column
    summed exactly as `_usage_add` adds them one by one. Also used by the migration that creates the rollup, with
    its historical models."""
    success = Q(outcome=ProviderRequest.Outcome.SUCCESS)
    failure = ~success
    caller = failure & Q(error_class__in=CALLER_ERROR_CLASSES)
    histograms = {
        **{c: Count("id", filter=success & _bucket_filter("latency_ms", i)) for i, c in enumerate(LATENCY_COLUMNS)},
        **{
            c: Count("id", filter=success & _bucket_filter("time_to_first_token_ms", i))
            for i, c in enumerate(TTFT_COLUMNS)
        },
    }
    return (
        requests.order_by()
        .annotate(
            usage_day=TruncDate("started_at"),
            usage_agent=Coalesce("model_call__agent_id", Value(0)),
        )
        .values("usage_day", "provider__name", "model", "usage_agent")
        .annotate(
            calls=Count("id"),
            ok=Count("id", filter=success),
            caller_errors=Count("id", filter=caller),
            provider_failures=Count("id", filter=failure & ~Q(error_class__in=CALLER_ERROR_CLASSES)),
            sum_tokens_in=Coalesce(Sum("tokens_in"), 0),
            sum_tokens_out=Coalesce(Sum("tokens_out"), 0),
            **histograms,
        )
    )


@dataclass(frozen=True)
class UsageRebuilt:
    since: date | None
    days: int
    rows: int
    requests: int


def usage_rebuild(*, since: date | None = None) -> UsageRebuilt:
    """Recompute the rollup from the request rows, for the days from `since` on, replacing what it held for them.

    Without `since`: from the first day the request rows cover whole. When the rollup reaches back further than
    the rows, the rows' first day was cut by pruning, so it starts the day after (the rollup keeps what was pruned);
    an empty rollup (rows written before it existed) is rebuilt from the first row on. Days before are left alone.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # Writers wait at their UPSERT until this commits, and their request rows are not yet visible to the
            # query below, so each request is counted exactly once: here or by its own writer afterwards.
            with connection.cursor() as cursor:
                cursor.execute("LOCK TABLE usage_days IN SHARE ROW EXCLUSIVE MODE")
        # On SQLite the transaction holds the write lock from its start (transaction_mode IMMEDIATE).
        if since is None:
            since = _usage_rebuild_start()
        if since is None:
            return UsageRebuilt(since=None, days=0, rows=0, requests=0)
        start = timezone.make_aware(datetime.combine(since, datetime.min.time()))
        rows = [
            UsageDay(
                day=row["usage_day"],
                provider=row["provider__name"],
                model=row["model"],
                agent_pk=row["usage_agent"],
                calls=row["calls"],
                ok=row["ok"],
                caller_errors=row["caller_errors"],
                provider_failures=row["provider_failures"],
                tokens_in=row["sum_tokens_in"],
                tokens_out=row["sum_tokens_out"],
                **{c: row[c] for c in (*LATENCY_COLUMNS, *TTFT_COLUMNS)},
            )
            for row in usage_rows_from_requests(ProviderRequest.objects.filter(started_at__gte=start)).iterator(
                chunk_size=2000
            )
        ]
        UsageDay.objects.filter(day__gte=since).delete()
        UsageDay.objects.bulk_create(rows, batch_size=200)
    return UsageRebuilt(
        since=since,
        days=len({r.day for r in rows}),
        rows=len(rows),
        requests=sum(r.calls for r in rows),
    )


def _usage_rebuild_start() -> date | None:
    first = ProviderRequest.objects.order_by("started_at").values_list("started_at", flat=True).first()
    if first is None:
        return None
    first_day = timezone.localdate(first)
    if UsageDay.objects.filter(day__lt=first_day).exists():
        return first_day + timedelta(days=1)
    return first_day


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
    "tokens_in, tokens_out, outcome, error_class) VALUES (%s, %s, %s, %s, %s, %s, %s, 'success', '') RETURNING id"
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
    agent_id: int | None = None,
) -> int:
    """Record a request that answered and return its row's id; it closes the breaker whatever its state.
    `agent_id`: the agent the call was made for (the trace's), for the usage figures."""
    started = now - timedelta(milliseconds=latency_ms)
    started_at = connection.ops.adapt_datetimefield_value(started)
    updated_at = connection.ops.adapt_datetimefield_value(now)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            _SUCCESS_INSERT_SQL,
            [provider.pk, model, started_at, latency_ms, time_to_first_token_ms, tokens_in, tokens_out],
        )
        request_id: int = cursor.fetchone()[0]
        _usage_add(
            cursor,
            started_at=started,
            provider=provider.name,
            model=model,
            agent_id=agent_id,
            outcome=ProviderRequest.Outcome.SUCCESS,
            error_class="",
            latency_ms=latency_ms,
            time_to_first_token_ms=time_to_first_token_ms,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
        )
        cursor.execute(_SUCCESS_METRICS_SQL, [latency_ms, updated_at, provider.pk])
        if cursor.rowcount == 0:  # a provider added in the admin, never used: its row, then the counts
            _metrics_ensure(provider)
            cursor.execute(_SUCCESS_METRICS_SQL, [latency_ms, updated_at, provider.pk])
        cursor.execute(_SUCCESS_CLOSE_SQL, [provider.pk])
        if cursor.rowcount:
            _log("provider.circuit_closed", provider, reason="a request succeeded")
    return request_id


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
    agent_id: int | None = None,
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
        with connection.cursor() as cursor:
            _usage_add(
                cursor,
                started_at=request.started_at,
                provider=provider.name,
                model=model,
                agent_id=agent_id,
                outcome=ProviderRequest.Outcome.FAILURE,
                error_class=error_class,
                latency_ms=latency_ms,
                time_to_first_token_ms=None,
                tokens_in=tokens_in,
                tokens_out=0,
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


# --- traces of router calls ---

# Per message (and for the reply): a huge prompt must not bloat the database.
TRACE_TEXT_MAX_BYTES = 64 * 1024
# Lines and tabs are kept; clean_text would flatten them, so each piece between them is cleaned on its own.
_LINE_BREAKS = re.compile(r"([\n\t])")


@dataclass
class TraceContext:
    """Who a router call is made for, given to `router.complete(trace=...)`.

    The router sets `call_id` once the trace is stored, so that a caller that stores its side afterwards (a chat
    turn) can link it with `model_call_link`."""

    purpose: str = ModelCall.Purpose.OTHER
    user_id: int | None = None
    agent_id: int | None = None
    task_id: int | None = None
    upgrade_request_id: int | None = None
    upgrade_attempt: int | None = None
    call_id: int | None = field(default=None, init=False)


def trace_text(text: str) -> tuple[str, bool]:
    """`text` as a trace may store it: secrets redacted as in the event log, capped; True when it was cut."""
    text = clients.redact(clean_multiline_text(text))
    text = "".join(
        piece if piece in ("\n", "\t") else clean_text(piece, max_length=sys.maxsize)
        for piece in _LINE_BREAKS.split(text)
    )
    encoded = text.encode()
    if len(encoded) <= TRACE_TEXT_MAX_BYTES:
        return text, False
    return encoded[:TRACE_TEXT_MAX_BYTES].decode(errors="ignore"), True


def _trace_message(message: dict[str, Any]) -> dict[str, Any]:
    content, cut = trace_text(message["content"])
    stored: dict[str, Any] = {"role": clean_text(message["role"]), "kind": message["kind"], "content": content}
    if cut:
        stored["cut"] = True
    if "prompt" in message:  # the system prompt's own text, before the context appended to it
        prompt, _ = trace_text(message["prompt"])
        stored["prompt_chars"] = len(prompt) if content.startswith(prompt) else len(content)
    if "context" in message:
        pieces: list[str] = []
        size = 0
        for piece in message["context"]:
            text, _ = trace_text(piece)
            size += len(text.encode())
            if size > TRACE_TEXT_MAX_BYTES:
                break
            pieces.append(text)
        stored["context"] = pieces
        stored["context_heading"] = clean_text(message.get("context_heading", ""))
        if len(pieces) < len(message["context"]):
            stored["context_cut"] = len(message["context"]) - len(pieces)
    return stored


def _trace_attempt(attempt: dict[str, Any]) -> dict[str, Any]:
    return {**attempt, "provider": clean_text(attempt["provider"]), "reason": clean_text(attempt["reason"])}


def _existing_upgrade_request(pk: int | None) -> int | None:
    # A change request deleted while its draft runs leaves the trace without the link, rather than failing the
    # foreign key and with it the draft. Upgrade calls are few and slow: the look-up costs nothing that shows.
    if pk is None:
        return None
    return pk if UpgradeRequest.objects.filter(pk=pk).exists() else None


def model_call_record(
    *,
    trace: TraceContext | None,
    started_at: datetime,
    outcome: str,
    provider: str,
    model: str,
    latency_ms: int,
    messages: list[dict[str, Any]],
    attempts: list[dict[str, Any]],
    fitting: dict[str, Any],
    request_ids: list[int],
    reply: str = "",
    error: str = "",
    tokens_in: int = 0,
    tokens_out: int = 0,
    time_to_first_token_ms: int | None = None,
) -> ModelCall:
    """Store the trace of one router call and tie its request rows to it. `messages` are as sent, each with its
    `kind`; a system message may carry `prompt` (its own text) and `context` (the pieces appended to it)."""
    trace = trace or TraceContext()
    reply_text, reply_cut = trace_text(reply)
    with transaction.atomic():
        call = ModelCall.objects.create(
            started_at=started_at,
            purpose=trace.purpose,
            outcome=outcome,
            provider=provider,
            model=model,
            latency_ms=latency_ms,
            time_to_first_token_ms=time_to_first_token_ms,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            messages=[_trace_message(m) for m in messages],
            reply=reply_text,
            error=trace_text(error)[0],
            attempts=[_trace_attempt(a) for a in attempts],
            fitting={**fitting, "reply_cut": True} if reply_cut else fitting,
            user_id=trace.user_id,
            agent_id=trace.agent_id,
            task_id=trace.task_id,
            upgrade_request_id=_existing_upgrade_request(trace.upgrade_request_id),
            upgrade_attempt=trace.upgrade_attempt,
        )
        if request_ids:
            ProviderRequest.objects.filter(id__in=request_ids).update(model_call=call)
    trace.call_id = call.pk
    return call


def model_call_link(*, trace: TraceContext, chat_message: ChatMessage) -> None:
    """Tie a stored trace to the chat turn it answered (stored after the call, so linked afterwards)."""
    if trace.call_id is not None:
        ModelCall.objects.filter(pk=trace.call_id).update(chat_message=chat_message)


def model_calls_prune(*, older_than: datetime) -> int:
    """Delete traces started before `older_than`, in small batches; their request rows stay, unlinked."""
    removed = 0
    while True:
        with transaction.atomic():
            ids = list(
                ModelCall.objects.filter(started_at__lt=older_than)
                .order_by("id")
                .values_list("id", flat=True)[:PRUNE_BATCH]
            )
            if not ids:
                return removed
            ProviderRequest.objects.filter(model_call_id__in=ids).update(model_call=None)
            removed += ModelCall.objects.filter(id__in=ids).delete()[0]
