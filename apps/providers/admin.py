from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

from apps.providers import services
from apps.providers.models import ModelCall, Provider, ProviderMetrics, ProviderRequest, UsageDay


def _metrics(provider: Provider) -> ProviderMetrics:
    try:
        return provider.metrics
    except ProviderMetrics.DoesNotExist:
        return ProviderMetrics(provider=provider)  # never used yet: closed, all zero


class ProviderMetricsInline(admin.StackedInline):
    model = ProviderMetrics
    verbose_name_plural = "health (kept by the router; read-only)"
    can_delete = False
    readonly_fields = (
        "circuit_state", "consecutive_failures", "opened_at", "probe_started_at", "total_requests",
        "successful_requests", "failed_requests", "average_latency_ms", "last_error_at", "last_error",
        "context_tokens", "context_source", "updated_at",
    )  # fmt: skip
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest, obj: Provider | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Provider | None = None) -> bool:
        return False


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = [
        "name", "kind", "enabled", "priority", "model", "circuit_state", "consecutive_failures", "total_requests",
        "average_latency",
    ]  # fmt: skip
    list_editable = ["enabled", "priority"]
    list_filter = ["enabled", "kind", "metrics__circuit_state"]
    list_select_related = ["metrics"]
    search_fields = ["name", "model"]
    fields = [
        "name", "kind", "enabled", "priority", "model", "base_url", "context_tokens", "connect_timeout_seconds",
        "read_timeout_seconds", "created_at", "updated_at",
    ]  # fmt: skip
    readonly_fields = ["created_at", "updated_at"]
    inlines = [ProviderMetricsInline]
    # Local servers speak plain HTTP; a bare host name should not become https://.
    formfield_overrides = {models.URLField: {"assume_scheme": "http"}}
    actions = ["reset_breaker"]

    @admin.display(description="circuit")
    def circuit_state(self, obj: Provider) -> str:
        return _metrics(obj).get_circuit_state_display()

    @admin.display(description="consecutive failures")
    def consecutive_failures(self, obj: Provider) -> int:
        return _metrics(obj).consecutive_failures

    @admin.display(description="requests")
    def total_requests(self, obj: Provider) -> int:
        return _metrics(obj).total_requests

    @admin.display(description="mean latency (ms)")
    def average_latency(self, obj: Provider) -> str:
        return f"{_metrics(obj).average_latency_ms:.0f}"

    def get_readonly_fields(self, request: HttpRequest, obj: Provider | None = None) -> list[str]:
        # The name is how the router and the events refer to a provider: fixed once created.
        return [*self.readonly_fields, "name", "kind"] if obj else list(self.readonly_fields)

    @admin.action(description="Reset the circuit breaker of the selected providers", permissions=["change"])
    def reset_breaker(self, request: HttpRequest, queryset: QuerySet[Provider]) -> TemplateResponse | None:
        providers = list(queryset.select_related("metrics"))
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": "Reset circuit breakers?",
                "opts": self.model._meta,
                "providers": [
                    {
                        "name": p.name,
                        "state": _metrics(p).get_circuit_state_display(),
                        "failures": _metrics(p).consecutive_failures,
                    }
                    for p in providers
                ],
                "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            }
            return TemplateResponse(request, "admin/providers/provider/reset_breaker_confirmation.html", context)
        reset = sum(services.breaker_reset(provider, actor=request.user) for provider in providers)
        self.message_user(request, f"Reset the breaker of {reset} provider(s).", messages.SUCCESS)
        return None


class WrittenByTheRouter(admin.ModelAdmin):
    """Records the router writes alone: read-only here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return False


@admin.register(ProviderRequest)
class ProviderRequestAdmin(WrittenByTheRouter):
    list_display = [
        "started_at",
        "provider",
        "model",
        "outcome",
        "error_class",
        "latency_ms",
        "tokens_in",
        "tokens_out",
    ]
    list_filter = ["provider", "outcome", "error_class"]
    list_select_related = ["provider"]
    date_hierarchy = "started_at"
    show_full_result_count = False


@admin.register(ModelCall)
class ModelCallAdmin(WrittenByTheRouter):
    """Traces (the trace page shows them readably)."""

    list_display = [
        "id", "started_at", "purpose", "outcome", "provider", "model", "agent", "task", "user", "tokens_in",
        "tokens_out", "time_to_first_token_ms", "latency_ms",
    ]  # fmt: skip
    list_filter = ["outcome", "purpose", "provider"]
    list_select_related = ["agent", "task", "user"]
    search_fields = ["provider", "model", "user__username", "agent__name"]
    date_hierarchy = "started_at"
    show_full_result_count = False
    raw_id_fields = ["user", "agent", "task", "chat_message", "upgrade_request"]


@admin.register(UsageDay)
class UsageDayAdmin(WrittenByTheRouter):
    """The daily rollup behind /router/usage (a row deleted here comes back with `usage_rebuild`)."""

    list_display = [
        "day", "provider", "model", "agent_pk", "calls", "ok", "caller_errors", "provider_failures", "tokens_in",
        "tokens_out",
    ]  # fmt: skip
    list_filter = ["provider"]
    date_hierarchy = "day"
    show_full_result_count = False
