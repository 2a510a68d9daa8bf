from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST, require_safe

from apps.core.decorators import staff_required
from apps.core.types import HtmxHttpRequest
from apps.providers import selectors, services
from apps.providers.models import Provider

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
