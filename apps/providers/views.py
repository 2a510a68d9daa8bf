from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST, require_safe

from apps.core.decorators import staff_required
from apps.core.types import HtmxHttpRequest
from apps.providers import selectors, services
from apps.providers.models import ModelCall, Provider

REFRESH_SECONDS = 5


def _status_context() -> dict[str, object]:
    status = selectors.router_status(now=timezone.now())
    chart = {
        "labels": [start.isoformat() for start in status.bucket_starts],
        "bucket_seconds": status.bucket_seconds,
        "providers": {
            p.name: {"successes": [b.successes for b in p.buckets], "failures": [b.failures for b in p.buckets]}
            for p in status.providers
        },
    }
    return {
        "status": status,
        "chart": chart,
        "refresh_seconds": REFRESH_SECONDS,
    }


@staff_required
@require_safe
def status(request: HtmxHttpRequest) -> HttpResponse:
    template = "providers/_status.html" if request.htmx else "providers/status.html"
    return render(request, template, _status_context())


def _provider(pk: int) -> Provider:
    provider = selectors.provider_by_id(pk)
    if provider is None:
        raise Http404(f"Provider {pk} not found.")
    return provider


@staff_required
@require_POST
def health_check(request: HttpRequest, pk: int) -> HttpResponse:
    provider = _provider(pk)
    check = services.provider_health_check(provider, actor=request.user)
    message = selectors.text_for_display(check.message)
    if check.ok:
        messages.success(request, f"Health check of {provider.name} passed in {check.latency_ms} ms: {message}")
    else:
        messages.error(request, f"Health check of {provider.name} failed ({check.error_class or 'error'}): {message}")
    return redirect("providers:status")


@staff_required
@require_POST
def reset(request: HttpRequest, pk: int) -> HttpResponse:
    provider = _provider(pk)
    if services.breaker_reset(provider, actor=request.user):
        messages.success(request, f"The breaker of {provider.name} is closed again; its failure count is zero.")
    else:
        messages.info(request, f"The breaker of {provider.name} was already closed with no failures.")
    return redirect("providers:status")


# --- usage ---


@staff_required
@require_safe
def usage(request: HttpRequest) -> HttpResponse:
    windows = [(value, label) for value, (label, _) in selectors.USAGE_WINDOWS.items()]
    try:
        window = selectors.usage_window(request.GET.get("window", selectors.USAGE_DEFAULT_WINDOW))
    except selectors.UnknownWindow as error:
        return render(request, "providers/usage.html", {"error": str(error), "windows": windows}, status=400)
    figures = selectors.usage_over(window=window, now=timezone.now())
    chart = {
        "days": [line.label for line in figures.days],
        "tokens": figures.provider_tokens_per_day,
        "latency_p50": [line.latency_p50 for line in figures.days],
        "latency_p95": [line.latency_p95 for line in figures.days],
        "ttft_p50": [line.ttft_p50 for line in figures.days],
        "ttft_p95": [line.ttft_p95 for line in figures.days],
    }
    return render(
        request,
        "providers/usage.html",
        {
            "usage": figures,
            "windows": windows,
            "chart": chart,
            "retention_days": settings.PROVIDER_REQUEST_RETENTION_DAYS,
        },
    )


# --- traces ---


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


@login_required
@require_safe
def traces(request: HttpRequest) -> HttpResponse:
    query = request.GET
    outcome = query.get("outcome", "")
    filters = selectors.TraceFilters(
        outcome=outcome if outcome in ModelCall.Outcome.values else "",
        provider=query.get("provider", "").strip(),
        agent=query.get("agent", "").strip(),
        task_id=_int_or_none(query.get("task")),
        before=_int_or_none(query.get("before")),
    )
    calls, next_before = selectors.model_calls_recent(user=request.user, filters=filters)
    params = query.copy()
    params.pop("before", None)
    return render(
        request,
        "providers/traces.html",
        {
            "calls": calls,
            "filters": filters,
            "outcomes": ModelCall.Outcome.choices,
            "providers": selectors.provider_names() if request.user.is_staff else [],
            "next_before": next_before,
            "filter_query": params.urlencode(),
            "retention_days": settings.TRACE_RETENTION_DAYS,
        },
    )


@login_required
@require_safe
def trace(request: HttpRequest, pk: int) -> HttpResponse:
    call = selectors.model_call_for(user=request.user, pk=pk)
    if call is None:
        raise Http404(f"Trace {pk} not found.")
    return render(
        request,
        "providers/trace.html",
        {"call": call, "messages_sent": selectors.trace_messages_for_display(call)},
    )


@login_required
@require_safe
def trace_of_chat_message(request: HttpRequest, message_id: int) -> HttpResponse:
    pk = selectors.model_call_of_chat_message(user=request.user, message_id=message_id)
    if pk is None:
        raise Http404(
            f"No trace of this chat turn: traces are kept {settings.TRACE_RETENTION_DAYS} days "
            "(TRACE_RETENTION_DAYS), and only for the chat's owner and staff."
        )
    return redirect("providers:trace", pk=pk)
