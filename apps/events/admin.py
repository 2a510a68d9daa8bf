from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from apps.events import registry
from apps.events.models import Event
from apps.events.selectors import with_agent_names
from apps.events.templatetags.event_tags import event_json


class FamilyFilter(admin.SimpleListFilter):
    title = "family"
    parameter_name = "family"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(group.family, group.name) for group in registry.grouped()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Event]) -> QuerySet[Event]:
        family = self.value()
        if family in registry.FAMILIES:
            return queryset.filter(event_type__in=registry.types_of_family(family))
        return queryset


class EventChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        # The page's events, read once here, keep their agents' names for the summaries (one query).
        with_agent_names(list(self.result_list))


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """Read-only: the audit trail is written by services, never edited by hand."""

    list_display = ["id", "timestamp", "event_type", "source", "task_id", "agent_id", "what_happened"]
    list_filter = [FamilyFilter, "event_type", "source"]
    search_fields = ["=task_id", "=agent_id", "=event_type", "source"]
    show_full_result_count = False
    list_per_page = 50

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return EventChangeList

    @admin.display(description="What happened")
    def what_happened(self, obj: Event) -> SafeString:
        # format_html escapes both: the summary is plain text and the data is whatever the row holds.
        return format_html(
            '<details class="event-data"><summary>{}</summary><code>{}</code></details>',
            obj.summary,
            event_json(obj.data),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False
