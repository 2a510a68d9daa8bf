from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from apps.agents.models import ChatMessage, ChatSession
from apps.memory import services as memory


class ChatMessageInline(admin.TabularInline):
    model = ChatMessage
    extra = 0
    fields = ["created_at", "role", "content", "error", "provider", "model", "latency_ms", "tokens_in", "tokens_out"]
    readonly_fields = ["created_at", "role", "content", "error", "provider", "model", "latency_ms", "tokens_in"]
    readonly_fields += ["tokens_out"]
    ordering = ["id"]

    def has_add_permission(self, request: HttpRequest, obj: ChatSession | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ChatSession | None = None) -> bool:
        return False


@admin.register(ChatSession)
class ChatSessionAdmin(admin.ModelAdmin):
    """Conversations are written by the chat; here they can be read and deleted, not edited. Like private memories,
    another user's conversations are shown only to those who may read other users' private memories."""

    list_display = ["id", "owner", "message_count", "created_at", "updated_at"]
    search_fields = ["=id", "owner__username"]
    readonly_fields = ["id", "owner", "created_at", "updated_at"]
    inlines = [ChatMessageInline]
    show_full_result_count = False
    list_select_related = ["owner"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ChatSession]:
        sessions = super().get_queryset(request).annotate(message_count=Count("messages"))
        if memory.can_read_private(request.user):
            return sessions
        return sessions.filter(owner_id=request.user.pk)

    def get_list_filter(self, request: HttpRequest) -> tuple[str, ...]:
        # The owner filter lists every user: of use only to those who may read everyone's conversations.
        return ("owner",) if memory.can_read_private(request.user) else ()

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, obj: ChatSession) -> int:
        return obj.message_count  # type: ignore[attr-defined]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ChatSession | None = None) -> bool:
        return False
