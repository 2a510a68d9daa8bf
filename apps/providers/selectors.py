import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Max, QuerySet, Sum
from django.utils import timezone

from apps.providers.clients import CONFIGURATION_ERRORS, redact
from apps.providers.models import (
    HISTOGRAM_BOUNDS,
    LATENCY_COLUMNS,
    TTFT_COLUMNS,
    CircuitState,
    ModelCall,
    Provider,
    ProviderMetrics,
    ProviderRequest,
    UsageDay,
)
from apps.swarm.models import Agent

STATUS_WINDOW_SECONDS = 3600
STATUS_BUCKET_SECONDS = 300
# The user:password@ of a URL: scheme://, then anything up to an @ before the host.


def providers_in_order(*, enabled_only: bool = True) -> QuerySet[Provider]:
    """Providers in the order the router tries them, with their metrics."""
    providers = Provider.objects.select_related("metrics").order_by("priority", "name")
    return providers.filter(enabled=True) if enabled_only else providers


def provider_requests_recent(*, provider: Provider, now: datetime, seconds: int = 3600) -> QuerySet[ProviderRequest]:
    return ProviderRequest.objects.filter(provider=provider, started_at__gte=now - timedelta(seconds=seconds))


@dataclass(frozen=True)
class ProviderHealth:
    name: str
    circuit_state: str
    circuit_label: str
    last_error: str
    last_error_at: datetime | None


def providers_health() -> list[ProviderHealth]:
    """Each enabled provider's breaker and last error, in router order (one query), for the home page."""
    health = []
    for provider in providers_in_order():
        metrics = _metrics(provider)
        health.append(
            ProviderHealth(
                name=provider.name,
                circuit_state=metrics.circuit_state,
                circuit_label=str(CircuitState(metrics.circuit_state).label),
                last_error=text_for_display(metrics.last_error),
                last_error_at=metrics.last_error_at,
            )
        )
    return health


def provider_by_id(pk: int) -> Provider | None:
    return Provider.objects.filter(pk=pk).first()


def provider_by_name(name: str) -> Provider | None:
    return Provider.objects.filter(name=name).first()


def provider_circuit_state(provider: Provider) -> str:
    state = ProviderMetrics.objects.filter(provider=provider).values_list("circuit_state", flat=True).first()
    return state or CircuitState.CLOSED  # no metrics row yet: never used, closed


def url_without_credentials(url: str) -> str:
    """`url` as it may be shown: without user:password@, query or fragment (where keys hide), nor the API key."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return text_for_display(urlunsplit((parts.scheme, netloc, parts.path, "", "")))


def text_for_display(text: str) -> str:
    """An error message as it may be shown: without the API key, nor the user:password@ of any URL in it.

    Stored errors are redacted already; this also covers the reasons of a failed call, which are not stored,
    and a key set after an error that contains it was stored.
    """
    return redact(text)


def percentile(sorted_values: list[int], p: float) -> int | None:
    """Nearest-rank percentile of values sorted ascending: the smallest value with at least p% at or below it."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class Bucket:
    start: datetime
    successes: int
    failures: int


@dataclass(frozen=True)
class ProviderStatus:
    id: int
    name: str
    kind: str
    kind_label: str
    enabled: bool
    enable_hint: str
    priority: int
    model: str
    base_url: str
    circuit_state: str
    consecutive_failures: int
    opened_at: datetime | None
    # Only while open: how long until the router lets one probe request through (0: the next request probes).
    seconds_until_half_open: int | None
    requests: int
    successes: int
    failures: int
    success_rate: float | None
    p50_ms: int | None
    p95_ms: int | None
    last_error: str
    last_error_at: datetime | None
    last_error_class: str
    # A bad key or an unknown model, with no success since: it will not heal by waiting.
    configuration_error: bool
    buckets: list[Bucket]
    # The window prompts are fitted to, and where it came from (apps.providers.windows); None before first use.
    context_tokens: int | None = None
    context_source: str = ""
    # Tokens generated per second of generation (after the first token) over the window's successful requests.
    tokens_per_second: float | None = None
    # The embedded model host, as it says of itself (None: not running, or not this kind).
    host: "EmbeddedHost | None" = None

    @property
    def circuit_label(self) -> str:
        return str(CircuitState(self.circuit_state).label)

    @property
    def success_percent(self) -> float | None:
        return None if self.success_rate is None else self.success_rate * 100


@dataclass(frozen=True)
class EmbeddedHost:
    running: bool
    model: str = ""
    loaded: bool = False
    loading: bool = False
    error: str = ""
    load_seconds: float | None = None
    context_tokens: int | None = None
    tokens_per_second: float | None = None
    waiting: int = 0
    requests: int = 0
    device: str = ""
    loading_seconds: float | None = None


def embedded_host() -> EmbeddedHost:
    from apps.providers import embedded  # the status page only: asks the host over its socket, within half a second

    health = embedded.host_health()
    if health is None:
        return EmbeddedHost(running=False)
    return EmbeddedHost(
        running=True,
        model=str(health.get("model") or ""),
        loaded=bool(health.get("loaded")),
        loading=bool(health.get("loading")),
        error=str(health.get("error") or ""),
        load_seconds=health.get("load_seconds"),
        context_tokens=health.get("n_ctx"),
        tokens_per_second=health.get("tokens_per_second"),
        waiting=int(health.get("waiting") or 0),
        requests=int(health.get("requests") or 0),
    )


def airllm_host(model: str) -> EmbeddedHost:
    """AirLLM's model `model` (a directory) in the model host: loaded (in how long, how fast it generates), loading,
    or what stops it from loading."""
    from apps.providers import embedded

    health = embedded.airllm_health(model)
    if health is None:
        return EmbeddedHost(running=False, model=model)
    loaded = health.get("model_loaded") or {}
    loading = bool(model) and health.get("loading") == model
    return EmbeddedHost(
        running=True,
        model=model,
        loaded=bool(loaded),
        loading=loading,
        error=str(health.get("problem") or ""),
        load_seconds=loaded.get("load_seconds"),
        context_tokens=loaded.get("n_ctx"),
        tokens_per_second=loaded.get("tokens_per_second"),
        waiting=int(health.get("waiting") or 0),
        requests=int(health.get("requests") or 0),
        device=str(loaded.get("device") or ""),
        loading_seconds=health.get("loading_seconds") if loading else None,
    )


def _host(provider: Provider, embedded: EmbeddedHost | None) -> EmbeddedHost | None:
    if provider.kind == Provider.Kind.EMBEDDED:
        return embedded
    if provider.kind == Provider.Kind.AIRLLM and provider.enabled:
        return airllm_host(provider.model)
    return None


@dataclass(frozen=True)
class RouterStatus:
    now: datetime
    window_start: datetime
    window_seconds: int
    bucket_seconds: int
    threshold: int
    recovery_seconds: int
    bucket_starts: list[datetime]
    providers: list[ProviderStatus]


@dataclass
class _Window:
    """One provider's request rows in the window, gathered from the single query over all providers."""

    bucket_successes: list[int]
    bucket_failures: list[int]
    latencies: list[int] = field(default_factory=list)
    tokens_out: int = 0
    generating_ms: int = 0

    @classmethod
    def empty(cls, bucket_count: int) -> "_Window":
        return cls([0] * bucket_count, [0] * bucket_count)


def router_status(
    *, now: datetime, window_seconds: int = STATUS_WINDOW_SECONDS, bucket_seconds: int = STATUS_BUCKET_SECONDS
) -> RouterStatus:
    """Every provider in router order (disabled ones too) with its breaker and its requests over the window.

    Two queries whatever the number of providers and requests (three while a configuration error is shown):
    the providers with their metrics, and the window's request rows, from which the counts, the percentiles of
    successful requests' latencies and the per-bucket counts are computed here, alike on SQLite and PostgreSQL.
    """
    start = now - timedelta(seconds=window_seconds)
    bucket_starts = [start + timedelta(seconds=s) for s in range(0, window_seconds, bucket_seconds)]
    providers = list(providers_in_order(enabled_only=False))
    windows = _windows(start=start, now=now, bucket_seconds=bucket_seconds, bucket_count=len(bucket_starts))
    metrics = {provider.pk: _metrics(provider) for provider in providers}
    host = embedded_host() if any(p.kind == Provider.Kind.EMBEDDED for p in providers) else None
    last_success = _last_success(
        [pk for pk, m in metrics.items() if m.last_error_class in CONFIGURATION_ERRORS and m.last_error_at]
    )
    recovery = settings.CIRCUIT_BREAKER_RECOVERY_SECONDS
    return RouterStatus(
        now=now,
        window_start=start,
        window_seconds=window_seconds,
        bucket_seconds=bucket_seconds,
        threshold=settings.CIRCUIT_BREAKER_THRESHOLD,
        recovery_seconds=recovery,
        bucket_starts=bucket_starts,
        providers=[
            _provider_status(
                provider,
                metrics=metrics[provider.pk],
                window=windows.get(provider.pk) or _Window.empty(len(bucket_starts)),
                bucket_starts=bucket_starts,
                last_success_at=last_success.get(provider.pk),
                until_half_open=_seconds_until_half_open(metrics[provider.pk], now=now, recovery_seconds=recovery),
                host=_host(provider, host),
            )
            for provider in providers
        ],
    )


def _windows(*, start: datetime, now: datetime, bucket_seconds: int, bucket_count: int) -> dict[int, _Window]:
    windows: dict[int, _Window] = {}
    rows = (
        ProviderRequest.objects.filter(started_at__gte=start, started_at__lte=now)
        .order_by()
        .values_list("provider_id", "started_at", "latency_ms", "outcome", "tokens_out", "time_to_first_token_ms")
    )
    for provider_id, started_at, latency_ms, outcome, tokens_out, ttft_ms in rows.iterator(chunk_size=2000):
        window = windows.get(provider_id)
        if window is None:
            window = windows[provider_id] = _Window.empty(bucket_count)
        # A request that started at `now` exactly belongs to the last bucket.
        index = min(bucket_count - 1, int((started_at - start).total_seconds() // bucket_seconds))
        if outcome == ProviderRequest.Outcome.SUCCESS:
            window.latencies.append(latency_ms)
            window.bucket_successes[index] += 1
            if ttft_ms is not None and tokens_out > 1 and latency_ms > ttft_ms:
                # Streamed: the time after the first token is generation alone.
                window.tokens_out += tokens_out - 1
                window.generating_ms += latency_ms - ttft_ms
        else:
            window.bucket_failures[index] += 1
    return windows


def _provider_status(
    provider: Provider,
    *,
    metrics: ProviderMetrics,
    window: _Window,
    bucket_starts: list[datetime],
    last_success_at: datetime | None,
    until_half_open: int | None,
    host: EmbeddedHost | None = None,
) -> ProviderStatus:
    latencies = sorted(window.latencies)
    successes = len(latencies)
    failures = sum(window.bucket_failures)
    total = successes + failures
    configuration_error = (
        metrics.last_error_class in CONFIGURATION_ERRORS
        and metrics.last_error_at is not None
        and (last_success_at is None or last_success_at < metrics.last_error_at)
    )
    return ProviderStatus(
        id=provider.pk,
        name=provider.name,
        kind=provider.kind,
        kind_label=provider.get_kind_display(),
        enabled=provider.enabled,
        enable_hint=provider.enable_hint,
        priority=provider.priority,
        model=provider.model,
        base_url=url_without_credentials(provider.base_url),
        circuit_state=metrics.circuit_state,
        consecutive_failures=metrics.consecutive_failures,
        opened_at=metrics.opened_at,
        seconds_until_half_open=until_half_open,
        requests=total,
        successes=successes,
        failures=failures,
        success_rate=round(successes / total, 4) if total else None,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        last_error=text_for_display(metrics.last_error),
        last_error_at=metrics.last_error_at,
        last_error_class=metrics.last_error_class,
        configuration_error=configuration_error,
        buckets=[Bucket(*b) for b in zip(bucket_starts, window.bucket_successes, window.bucket_failures, strict=True)],
        context_tokens=provider.context_tokens or metrics.context_tokens,
        context_source="admin" if provider.context_tokens else metrics.context_source,
        tokens_per_second=round(window.tokens_out * 1000 / window.generating_ms, 1) if window.generating_ms else None,
        host=host,
    )


def _metrics(provider: Provider) -> ProviderMetrics:
    try:
        return provider.metrics
    except ProviderMetrics.DoesNotExist:
        return ProviderMetrics(provider=provider)  # never used yet: closed, all zero


def _seconds_until_half_open(metrics: ProviderMetrics, *, now: datetime, recovery_seconds: int) -> int | None:
    if metrics.circuit_state != CircuitState.OPEN or metrics.opened_at is None:
        return None
    remaining = (metrics.opened_at + timedelta(seconds=recovery_seconds) - now).total_seconds()
    return max(0, math.ceil(remaining))


def _last_success(provider_ids: list[int]) -> dict[int, datetime]:
    """When each provider's latest successful request started (the window may not reach back that far)."""
    if not provider_ids:
        return {}
    rows = (
        ProviderRequest.objects.filter(provider_id__in=provider_ids, outcome=ProviderRequest.Outcome.SUCCESS)
        .order_by()
        .values("provider_id")
        .annotate(last=Max("started_at"))
        .values_list("provider_id", "last")
    )
    return dict(rows)


# --- traces ---

TRACES_PAGE = 50
# What a trace page shows of each kind of message.
MESSAGE_KINDS = {
    "system": "system prompt",
    "context": "memory context",
    "history": "history",
    "user": "user message",
    "message": "message",
}


def model_calls_visible_to(user: User | AnonymousUser) -> QuerySet[ModelCall]:
    """Staff see every trace; anyone else only those of their own chats."""
    if user.is_staff:
        return ModelCall.objects.all()
    if user.pk is None:
        return ModelCall.objects.none()
    return ModelCall.objects.filter(user_id=user.pk, purpose=ModelCall.Purpose.CHAT)


def model_call_for(*, user: User | AnonymousUser, pk: int) -> ModelCall | None:
    return (
        model_calls_visible_to(user)
        .select_related("agent", "task", "user", "chat_message", "upgrade_request")
        .filter(pk=pk)
        .first()
    )


def model_call_of_chat_message(*, user: User | AnonymousUser, message_id: int) -> int | None:
    return (
        model_calls_visible_to(user)
        .filter(chat_message_id=message_id)
        .order_by("-id")
        .values_list("id", flat=True)
        .first()
    )


@dataclass(frozen=True)
class TraceFilters:
    outcome: str = ""
    provider: str = ""
    agent: str = ""
    task_id: int | None = None
    before: int | None = None


def model_calls_recent(
    *, user: User | AnonymousUser, filters: TraceFilters, limit: int = TRACES_PAGE
) -> tuple[list[ModelCall], int | None]:
    """A page of traces, newest first, and the id to page on from (None on the last page)."""
    calls = (
        model_calls_visible_to(user)
        .select_related("agent", "user")
        # The list shows none of the text: leave the large columns in the database.
        .defer("messages", "reply", "error", "attempts", "fitting")
        .order_by("-id")
    )
    if filters.outcome:
        calls = calls.filter(outcome=filters.outcome)
    if filters.provider:
        calls = calls.filter(provider=filters.provider)
    if filters.agent:
        calls = calls.filter(agent__name=filters.agent)
    if filters.task_id is not None:
        calls = calls.filter(task_id=filters.task_id)
    if filters.before is not None:
        calls = calls.filter(id__lt=filters.before)
    page = list(calls[: limit + 1])
    return page[:limit], (page[limit - 1].pk if len(page) > limit else None)


@dataclass(frozen=True)
class ShownMessage:
    role: str
    kind: str
    content: str
    cut: bool = False
    # A system message with context put into it: its own text, then the pieces.
    prompt: str = ""
    context: list[str] = field(default_factory=list)
    context_heading: str = ""
    context_cut: int = 0


def trace_messages_for_display(call: ModelCall) -> list[ShownMessage]:
    shown = []
    for message in call.messages:
        kind = MESSAGE_KINDS.get(message.get("kind", ""), "message")
        content = message.get("content", "")
        if "context" in message:
            prompt = content[: message.get("prompt_chars", 0)]
            shown.append(
                ShownMessage(
                    role=message.get("role", ""),
                    kind=kind,
                    content=content,
                    cut=bool(message.get("cut")),
                    prompt=prompt,
                    context=list(message["context"]),
                    context_heading=message.get("context_heading", ""),
                    context_cut=int(message.get("context_cut", 0)),
                )
            )
        else:
            shown.append(
                ShownMessage(role=message.get("role", ""), kind=kind, content=content, cut=bool(message.get("cut")))
            )
    return shown


def provider_names() -> list[str]:
    return list(Provider.objects.order_by("priority", "name").values_list("name", flat=True))


# --- usage (read from the daily rollup, UsageDay; never from the request rows) ---

# The windows the usage page offers, as (value, label, length).
USAGE_WINDOWS = {
    "24h": ("last 24 hours", timedelta(hours=24)),
    "7d": ("last 7 days", timedelta(days=7)),
    "30d": ("last 30 days", timedelta(days=30)),
}
USAGE_DEFAULT_WINDOW = "7d"
NO_AGENT = "none/system"
_COUNTS = ("calls", "ok", "caller_errors", "provider_failures", "tokens_in", "tokens_out")
_BUCKETS = len(HISTOGRAM_BOUNDS)


class UnknownWindow(ValueError):
    pass


def usage_window(value: str) -> str:
    """The window asked for, or UnknownWindow saying which ones there are."""
    if value not in USAGE_WINDOWS:
        offered = ", ".join(USAGE_WINDOWS)
        raise UnknownWindow(f"Unknown window {value[:40]!r}: choose one of {offered}.")
    return value


def histogram_percentile(histogram: list[int], p: float) -> int | None:
    """The nearest-rank percentile of the values counted in `histogram` (HISTOGRAM_BOUNDS), as a value of the bucket
    it falls in (the geometric middle): the exact percentile is in the same bucket."""
    total = sum(histogram)
    if not total:
        return None
    rank = max(1, math.ceil(p / 100 * total))
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            low = HISTOGRAM_BOUNDS[index]
            if index + 1 == _BUCKETS:
                return low
            high = HISTOGRAM_BOUNDS[index + 1]
            return low if high - low == 1 else int(math.sqrt(low * high))
    raise AssertionError("unreachable: the counts add up to total")


def _added(histogram: list[int] | None, other: list[int]) -> list[int]:
    return list(other) if histogram is None else [a + b for a, b in zip(histogram, other, strict=True)]


@dataclass
class UsageLine:
    """The figures of one provider, model, agent or day over the window."""

    label: str
    calls: int = 0
    ok: int = 0
    caller_errors: int = 0
    provider_failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    latency: list[int] | None = None
    ttft: list[int] | None = None

    def add(self, counts: tuple[int, ...]) -> None:
        self.calls += counts[0]
        self.ok += counts[1]
        self.caller_errors += counts[2]
        self.provider_failures += counts[3]
        self.tokens_in += counts[4]
        self.tokens_out += counts[5]

    def add_histograms(self, latency: list[int], ttft: list[int]) -> None:
        self.latency = _added(self.latency, latency)
        self.ttft = _added(self.ttft, ttft)

    @property
    def success_percent(self) -> float | None:
        """Answers among the requests the provider could have answered: caller errors are left out."""
        judged = self.ok + self.provider_failures
        return self.ok * 100 / judged if judged else None

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    @property
    def latency_p50(self) -> int | None:
        return histogram_percentile(self.latency or [], 50)

    @property
    def latency_p95(self) -> int | None:
        return histogram_percentile(self.latency or [], 95)

    @property
    def ttft_p50(self) -> int | None:
        return histogram_percentile(self.ttft or [], 50)

    @property
    def ttft_p95(self) -> int | None:
        return histogram_percentile(self.ttft or [], 95)


@dataclass(frozen=True)
class Usage:
    window: str
    window_label: str
    first_day: date
    last_day: date
    days: list[UsageLine]
    total: UsageLine
    providers: list[UsageLine]
    models: list[UsageLine]
    agents: list[UsageLine]
    # Tokens in and out per day of each provider ({"in": [...], "out": [...]} in the order of `days`), for the chart.
    provider_tokens_per_day: dict[str, dict[str, list[int]]]


def usage_over(*, window: str, now: datetime) -> Usage:
    """The usage figures of the window, from the rollup: three queries whatever the number of requests (the rows of
    the window's days; their histograms summed per day, provider and model by the database; the agents' names).

    The rollup counts per day, so a window takes in whole days: from the start of the day it reaches back into."""
    label, length = USAGE_WINDOWS[usage_window(window)]
    last_day = timezone.localdate(now)
    first_day = timezone.localdate(now - length)
    days = {first_day + timedelta(days=n): UsageLine(label="") for n in range((last_day - first_day).days + 1)}
    for day, line in days.items():
        line.label = day.isoformat()
    in_window = UsageDay.objects.filter(day__gte=first_day, day__lte=last_day).order_by()
    total = UsageLine(label="all")
    providers: dict[str, UsageLine] = {}
    models: dict[tuple[str, str], UsageLine] = {}
    agents: dict[int, UsageLine] = {}
    provider_days: dict[str, dict[date, list[int]]] = {}
    for day, provider, model, agent_pk, *counts in in_window.values_list(
        "day", "provider", "model", "agent_pk", *_COUNTS
    ):
        counted = tuple(counts)
        total.add(counted)
        days[day].add(counted)
        providers.setdefault(provider, UsageLine(label=provider)).add(counted)
        models.setdefault((provider, model), UsageLine(label=f"{provider} · {model or '—'}")).add(counted)
        agents.setdefault(agent_pk, UsageLine(label="")).add(counted)
        tokens = provider_days.setdefault(provider, {}).setdefault(day, [0, 0])
        tokens[0] += counted[4]
        tokens[1] += counted[5]
    columns = (*LATENCY_COLUMNS, *TTFT_COLUMNS)
    histograms = (
        in_window.values("day", "provider", "model")
        .annotate(**{f"sum_{c}": Sum(c) for c in columns})
        .values_list("day", "provider", "model", *(f"sum_{c}" for c in columns))
    )
    for day, provider, model, *sums in histograms:
        latency, ttft = sums[:_BUCKETS], sums[_BUCKETS:]
        for line in (total, days[day], providers[provider], models[(provider, model)]):
            line.add_histograms(latency, ttft)
    names = _agent_names([pk for pk in agents if pk])
    for pk, line in agents.items():
        line.label = names.get(pk, f"agent #{pk}") if pk else NO_AGENT
    return Usage(
        window=window,
        window_label=label,
        first_day=first_day,
        last_day=last_day,
        days=list(days.values()),
        total=total,
        providers=sorted(providers.values(), key=_by_calls),
        models=sorted(models.values(), key=_by_calls),
        agents=sorted(agents.values(), key=_by_calls),
        provider_tokens_per_day={
            name: {
                "in": [provider_days[name].get(day, [0, 0])[0] for day in days],
                "out": [provider_days[name].get(day, [0, 0])[1] for day in days],
            }
            for name in sorted(provider_days)
        },
    )


def _by_calls(line: UsageLine) -> tuple[int, str]:
    return (-line.calls, line.label)


def _agent_names(pks: list[int]) -> dict[int, str]:
    if not pks:
        return {}
    return dict(Agent.objects.filter(pk__in=pks).values_list("pk", "name"))
