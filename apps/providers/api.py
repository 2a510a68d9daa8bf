from datetime import datetime
from typing import Annotated, Any, Literal

from django.http import HttpRequest
from django.utils import timezone
from ninja import Field, Router, Schema, Status
from ninja.errors import HttpError

from apps.core.api_contract import JSON_INTEGER, errors
from apps.core.auth import require_staff
from apps.providers import router as cascade
from apps.providers import selectors, services
from apps.providers.models import ModelCall, Provider

router = Router(tags=["router"])

MESSAGES_MAX = 100
CONTENT_MAX = 32_000
MAX_TOKENS_MAX = 8192


class BucketOut(Schema):
    start: datetime
    successes: int
    failures: int


class EmbeddedHostOut(Schema):
    running: bool
    model: str
    loaded: bool
    loading: bool
    error: str
    load_seconds: float | None
    context_tokens: int | None
    tokens_per_second: float | None = Field(..., description="As the host measured it, over its recent replies.")
    waiting: int = Field(..., description="Requests waiting for the model now.")
    requests: int


class ProviderStatusOut(Schema):
    name: str
    kind: str
    enabled: bool
    priority: int
    model: str
    base_url: str = Field(..., description="Without credentials, query or fragment.")
    circuit_state: str
    seconds_until_half_open: int | None = Field(
        ..., description="While the breaker is open: seconds until one probe request is let through."
    )
    consecutive_failures: int
    requests: int
    success_rate: float | None = Field(..., description="Successful requests / requests in the window (0 to 1).")
    p50_ms: int | None = Field(..., description="Median latency of the successful requests in the window.")
    p95_ms: int | None
    last_error: str
    last_error_at: datetime | None
    last_error_class: str
    configuration_error: bool = Field(
        ..., description="The last error was a refused key or an unknown model, with no success since."
    )
    buckets: list[BucketOut]
    context_tokens: int | None = Field(
        ..., description="The context window prompts are fitted to (None until the provider is first used)."
    )
    context_source: str = Field(..., description="admin, server, server's error or default.")
    tokens_per_second: float | None = Field(
        ..., description="Tokens generated per second after the first one, over the window's streamed replies."
    )
    host: EmbeddedHostOut | None = Field(None, description="The embedded model host (embedded providers only).")


class WindowOut(Schema):
    start: datetime
    end: datetime
    seconds: int
    bucket_seconds: int


class RouterStatusOut(Schema):
    window: WindowOut
    circuit_breaker_threshold: int
    circuit_breaker_recovery_seconds: int
    providers: list[ProviderStatusOut]


class MessageIn(Schema):
    role: Literal["user", "assistant", "system"]
    content: str = Field(..., max_length=CONTENT_MAX)


class CompleteIn(Schema):
    messages: list[MessageIn] = Field(..., min_length=1, max_length=MESSAGES_MAX)
    system_prompt: str | None = Field(None, max_length=CONTENT_MAX)
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_MAX), JSON_INTEGER] | None = None


class CompletionOut(Schema):
    content: str
    provider: str
    model: str
    latency_ms: int
    tokens_in: int
    tokens_out: int


class HealthCheckOut(Schema):
    provider: str
    ok: bool
    message: str
    latency_ms: int
    error_class: str


class ResetOut(Schema):
    provider: str
    reset: bool = Field(..., description="False when the breaker was already closed with no failures.")
    circuit_state: str


def _provider(name: str) -> Provider:
    provider = selectors.provider_by_name(name)
    if provider is None:
        raise HttpError(404, f"Provider {name!r} not found.")
    return provider


@router.get(
    "/status", response={200: RouterStatusOut, **errors()}, summary="Providers, breakers and figures over the last hour"
)
def status(request: HttpRequest) -> dict[str, Any]:
    require_staff(request)
    figures = selectors.router_status(now=timezone.now())
    return {
        "window": {
            "start": figures.window_start,
            "end": figures.now,
            "seconds": figures.window_seconds,
            "bucket_seconds": figures.bucket_seconds,
        },
        "circuit_breaker_threshold": figures.threshold,
        "circuit_breaker_recovery_seconds": figures.recovery_seconds,
        "providers": figures.providers,
    }


@router.post(
    "/complete",
    response={200: CompletionOut, **errors(400)},
    summary="A completion from the first provider that answers",
)
def complete(request: HttpRequest, payload: CompleteIn) -> Any:
    user = require_staff(request)
    try:
        return cascade.complete(
            [m.model_dump() for m in payload.messages],
            system_prompt=payload.system_prompt,
            max_tokens=payload.max_tokens,
            trace=cascade.TraceContext(purpose=ModelCall.Purpose.API, user_id=user.pk),
        )
    except cascade.AllProvidersFailed as exc:
        attempts = [
            {"provider": a.provider, "reason": selectors.text_for_display(a.reason), "error_class": a.error_class}
            for a in exc.attempts
        ]
        return Status(503, {"detail": selectors.text_for_display(str(exc)), "providers": attempts})


@router.post(
    "/providers/{name}/health-check",
    response={200: HealthCheckOut, **errors(404)},
    summary="Ask a provider whether it is up",
)
def health_check(request: HttpRequest, name: str) -> dict[str, Any]:
    user = require_staff(request)
    provider = _provider(name)
    check = services.provider_health_check(provider, actor=user)
    return {
        "provider": provider.name,
        "ok": check.ok,
        "message": selectors.text_for_display(check.message),
        "latency_ms": check.latency_ms,
        "error_class": check.error_class,
    }


@router.post(
    "/providers/{name}/reset",
    response={200: ResetOut, **errors(404)},
    summary="Close a provider's circuit breaker by hand",
)
def reset(request: HttpRequest, name: str) -> dict[str, Any]:
    user = require_staff(request)
    provider = _provider(name)
    was_reset = services.breaker_reset(provider, actor=user)
    return {"provider": provider.name, "reset": was_reset, "circuit_state": selectors.provider_circuit_state(provider)}
