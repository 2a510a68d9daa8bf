from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.core import services
from apps.core.forms import AdminLoginForm
from apps.core.models import ApiToken, LoginFailureCount, WorkerHeartbeat

admin.site.login_form = AdminLoginForm


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created with `manage.py create_api_token USERNAME` (shown once); here they are revoked."""

    list_display = ["prefix", "user", "name", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["user__username", "name", "prefix"]
    readonly_fields = ["user", "prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Revoke the selected tokens", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        tokens = list(queryset.filter(revoked_at__isnull=True))
        for token in tokens:
            services.api_token_revoke(token=token)
        self.message_user(request, f"Revoked {len(tokens)} token(s).", messages.SUCCESS)


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(admin.ModelAdmin):
    list_display = ["worker_id", "alive", "started_at", "last_beat_at", "stopped_at", "cycles"]
    readonly_fields = ["worker_id", "hostname", "pid", "started_at", "last_beat_at", "stopped_at", "cycles"]

    @admin.display(boolean=True)
    def alive(self, obj: WorkerHeartbeat) -> bool:
        return obj.is_alive()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(LoginFailureCount)
class LoginFailureCountAdmin(admin.ModelAdmin):
    """Who is being throttled at the login pages; deleting a row lifts that account's or address's lockout."""

    list_display = ["kind", "key", "failures", "window_started_at"]
    list_filter = ["kind"]
    search_fields = ["key"]
    readonly_fields = ["kind", "key", "failures", "window_started_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
