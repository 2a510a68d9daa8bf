from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

from apps.swarm import services
from apps.swarm.models import Agent, Bid, Task


class BidInline(admin.TabularInline):
    model = Bid
    extra = 0
    can_delete = False
    readonly_fields = ["agent", "amount_sats", "match", "created_at"]

    def has_add_permission(self, request: HttpRequest, obj: Task | None = None) -> bool:
        return False


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ["id", "status", "short_description", "assigned_agent", "winning_bid_sats", "created_at"]
    list_filter = ["status", "assigned_agent"]
    search_fields = ["description", "=id"]
    readonly_fields = [
        "status", "posted_by", "assigned_agent", "winning_bid_sats", "result", "failure_reason", "created_at",
        "auction_closes_at", "auction_extensions", "assigned_at", "started_at", "finished_at", "claimed_by",
        "lease_expires_at", "attempts",
    ]  # fmt: skip
    inlines = [BidInline]
    actions = ["fail_tasks"]
    show_full_result_count = False

    @admin.display(description="description")
    def short_description(self, obj: Task) -> str:
        return obj.description[:80]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tasks are posted on /swarm/ or through the API, which open the auction

    @admin.action(description="Fail the selected open tasks", permissions=["change"])
    def fail_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> TemplateResponse | None:
        open_tasks = list(queryset.exclude(status__in=Task.TERMINAL))
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": "Fail tasks?",
                "opts": self.model._meta,
                "tasks": open_tasks,
                "skipped": queryset.count() - len(open_tasks),
                "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            }
            return TemplateResponse(request, "admin/swarm/task/fail_confirmation.html", context)
        reason = request.POST.get("reason", "").strip() or "no reason given"
        failed = 0
        for task in open_tasks:
            try:
                services.task_fail(
                    task_id=task.pk, reason=f"Failed by {request.user.get_username()} in the admin: {reason}"
                )
            except services.TaskWrongState:
                continue
            failed += 1
        self.message_user(request, f"Failed {failed} task(s).", messages.SUCCESS)
        return None


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "persona", "status", "base_bid_sats", "bid_jitter_sats", "last_seen"]
    list_filter = ["persona", "status"]
    search_fields = ["name", "description", "profile"]
    readonly_fields = ["status", "last_seen", "created_at"]
    fieldsets = [
        (None, {"fields": ["name", "persona", "status", "bids_on_tasks", "last_seen", "created_at"]}),
        (
            "What it does (tasks are matched with this by meaning)",
            {"fields": ["description", "capabilities", "keywords", "profile"]},
        ),
        ("Bids", {"fields": ["base_bid_sats", "bid_jitter_sats", "off_topic_multiplier"]}),
    ]


@admin.register(Bid)
class BidAdmin(admin.ModelAdmin):
    list_display = ["task", "agent", "amount_sats", "match", "created_at"]
    list_filter = ["agent"]
    search_fields = ["=task__id"]
    list_select_related = ["task", "agent"]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Bid | None = None) -> bool:
        return False
