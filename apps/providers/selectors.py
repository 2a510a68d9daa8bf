import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db.models import Max, QuerySet

from apps.providers.clients import CONFIGURATION_ERRORS, redact
from apps.providers.models import CircuitState, Provider, ProviderMetrics, ProviderRequest

STATUS_WINDOW_SECONDS = 3600
STATUS_BUCKET_SECONDS = 300
# The user:password@ of a URL: scheme://, then anything up to an @ before the host.


def providers_in_order(*, enabled_only: bool = True) -> QuerySet[Provider]:
    """Providers in the order the router tries them, with their metrics."""
    providers = Provider.objects.select_related("metrics").order_by("priority", "name")
    return providers.filter(enabled=True) if enabled_only else providers


def provider_requests_recent(*, provider: Provider, now: datetime, seconds: int = 3600) -> QuerySet[ProviderRequest]:
    return ProviderRequest.objects.filter(provider=provider, started_at__gte=now - timedelta(seconds=seconds))


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
                host=host if provider.kind == Provider.Kind.EMBEDDED else None,
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
