from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.text import Truncator

from apps.memory import selectors, services
from apps.memory.models import MemoryEntry


class SharedFilter(admin.SimpleListFilter):
    title = "visibility"
    parameter_name = "visibility"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("shared", "shared"), ("public", "public (paid chat)"), ("private", "private")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[MemoryEntry]) -> QuerySet[MemoryEntry]:
        if self.value() == "shared":
            return queryset.filter(owner__isnull=True)
        if self.value() == "public":
            return queryset.filter(public=True)
        if self.value() == "private":
            return queryset.filter(owner__isnull=False)
        return queryset


class ForgottenFilter(admin.SimpleListFilter):
    title = "forgotten"
    parameter_name = "forgotten"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("no", "live"), ("yes", "forgotten")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[MemoryEntry]) -> QuerySet[MemoryEntry]:
        if self.value() in ("yes", "no"):
            return queryset.filter(deleted_at__isnull=self.value() == "no")
        return queryset


@admin.register(MemoryEntry)
class MemoryEntryAdmin(admin.ModelAdmin):
    """Staff see their own and the shared memories; everyone's only with the permission to read other users'
    private memories (superusers have it)."""

    list_display = [
        "id", "preview", "context_type", "owner_or_shared", "public", "agent", "source", "access_count",
        "timestamp", "forgotten",
    ]  # fmt: skip
    list_filter = ["context_type", SharedFilter, ForgottenFilter, "embedding_model", "agent"]
    list_select_related = ["owner", "agent"]
    raw_id_fields = ["task"]
    search_fields = ["content"]
    show_full_result_count = False
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "content",
                    "context_type",
                    "owner",
                    "public",
                    "agent",
                    "task",
                    "source",
                    "session_id",
                    "metadata",
                ]
            },
        ),
        ("Index", {"fields": ["content_hash", "embedding_model", "embedding_dimensions", "timestamp"]}),
        ("Use", {"fields": ["access_count", "last_accessed_at"]}),
        ("Forgotten", {"fields": ["deleted_at", "deleted_reason"]}),
    ]
    # The content and the scope (type, owner, public, agent) are copied into the search index when a memory is
    # stored: an edit here would desynchronise it, and a changed owner would leak the memory (public is changed by
    # the actions, which update the index). The audit columns are kept by the services.
    readonly_fields = [
        "content", "context_type", "owner", "public", "agent", "content_hash", "embedding_model",
        "embedding_dimensions", "timestamp", "access_count", "last_accessed_at", "deleted_at", "deleted_reason",
    ]  # fmt: skip
    actions = ["forget_memories", "make_public", "make_not_public"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[MemoryEntry]:
        # Every view of this admin (list, search, change page, history, actions) starts here.
        return selectors.memories_for_admin(super().get_queryset(request), request.user)

    @admin.display(description="content")
    def preview(self, obj: MemoryEntry) -> str:
        return Truncator(" ".join(obj.content.split())).chars(80)

    @admin.display(description="owner", ordering="owner__username")
    def owner_or_shared(self, obj: MemoryEntry) -> str:
        return obj.owner.get_username() if obj.owner is not None else "shared"

    @admin.display(description="forgotten", boolean=True, ordering="deleted_at")
    def forgotten(self, obj: MemoryEntry) -> bool:
        return obj.is_deleted

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # stored through the services (the chat, the worker, the page, the API), which index them

    def has_delete_permission(self, request: HttpRequest, obj: MemoryEntry | None = None) -> bool:
        return False  # forgetting keeps the memory with the reason and takes it out of the index

    @admin.action(description="Forget selected memories", permissions=["change"])
    def forget_memories(self, request: HttpRequest, queryset: QuerySet[MemoryEntry]) -> TemplateResponse | None:
        selected = list(queryset.select_related("owner").order_by("id"))
        already = [m for m in selected if m.is_deleted]
        # services.forget lets a user forget their own memories and, staff, the shared ones: never someone else's.
        others = [m for m in selected if not m.is_deleted and not services.memory_visible(m, request.user)]
        live = [m for m in selected if not m.is_deleted and services.memory_visible(m, request.user)]
        reason = request.POST.get("reason", "").strip()
        if request.POST.get("confirm") != "yes" or not reason:
            context = {
                **self.admin_site.each_context(request),
                "title": "Forget memories?",
                "opts": self.model._meta,
                "memories": live,
                "already": already,
                "others": others,
                "reason_max": services.REASON_MAX,
                "reason_missing": request.POST.get("confirm") == "yes",
                "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            }
            return TemplateResponse(request, "admin/memory/memoryentry/forget_confirmation.html", context)
        forgotten = 0
        for memory in live:
            try:
                services.forget(memory_id=memory.pk, actor=request.user, reason=reason)
            except services.MemoryAlreadyForgotten:
                already.append(memory)  # forgotten by someone else since the confirmation page
                continue
            forgotten += 1
        self.message_user(request, f"Forgot {forgotten} memory(ies).", messages.SUCCESS)
        if already:
            self.message_user(request, f"{len(already)} memory(ies) were already forgotten.", messages.INFO)
        if others:
            self.message_user(
                request,
                f"{len(others)} memory(ies) are other users' private memories and were left: only their owner "
                "can forget them.",
                messages.WARNING,
            )
        return None

    @admin.action(description="Mark selected memories public (the paid chat may use them)", permissions=["change"])
    def make_public(self, request: HttpRequest, queryset: QuerySet[MemoryEntry]) -> TemplateResponse | None:
        return self._set_public(request, queryset, public=True)

    @admin.action(description="Mark selected memories not public", permissions=["change"])
    def make_not_public(self, request: HttpRequest, queryset: QuerySet[MemoryEntry]) -> TemplateResponse | None:
        return self._set_public(request, queryset, public=False)

    def _set_public(
        self, request: HttpRequest, queryset: QuerySet[MemoryEntry], *, public: bool
    ) -> TemplateResponse | None:
        selected = list(queryset.select_related("owner").order_by("id"))
        private = [m for m in selected if not m.is_shared]
        forgotten = [m for m in selected if m.is_shared and m.is_deleted]
        live = [m for m in selected if m.is_shared and not m.is_deleted]
        already = [m for m in live if m.public == public]
        changing = [m for m in live if m.public != public]
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": "Mark memories public?" if public else "Mark memories not public?",
                "opts": self.model._meta,
                "public": public,
                "memories": changing,
                "already": already,
                "private": private,
                "forgotten": forgotten,
                "action": "make_public" if public else "make_not_public",
                "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            }
            return TemplateResponse(request, "admin/memory/memoryentry/public_confirmation.html", context)
        changed = 0
        for memory in changing:
            try:
                services.memory_set_public(memory_id=memory.pk, public=public, actor=request.user)
            except (services.MemoryUnchanged, services.MemoryAlreadyForgotten):
                already.append(memory)  # changed by someone else since the confirmation page
                continue
            changed += 1
        what = "public: the paid chat may draw on them" if public else "not public"
        self.message_user(request, f"Marked {changed} memory(ies) {what}.", messages.SUCCESS)
        if already:
            self.message_user(
                request,
                f"{len(already)} memory(ies) were already {'public' if public else 'not public'} or forgotten since.",
                messages.INFO,
            )
        if private:
            self.message_user(
                request,
                f"{len(private)} memory(ies) are private and were left: only a shared memory can be public.",
                messages.WARNING,
            )
        if forgotten:
            self.message_user(request, f"{len(forgotten)} memory(ies) are forgotten and were left.", messages.WARNING)
        return None
