from django.contrib import admin
from django.http import HttpRequest

from apps.events.models import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """Read-only: the audit trail is written by services, never edited by hand."""

    list_display = ["id", "timestamp", "event_type", "source", "task_id", "agent_id", "data"]
    list_filter = ["event_type", "source"]
    search_fields = ["=task_id", "=agent_id", "=event_type", "source"]
    show_full_result_count = False
    list_per_page = 50

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False
