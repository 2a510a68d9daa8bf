import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class ChatSession(models.Model):
    """One conversation with Timmy. It belongs to one user: nobody else may read or continue it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "chat_sessions"
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["owner", "-updated_at"], name="chatsession_owner_updated_idx")]

    def __str__(self) -> str:
        return f"Chat {self.id} of {self.owner_id}"


class ChatMessage(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField()
    # Which provider and model answered (assistant messages).
    provider = models.CharField(max_length=50, blank=True)
    model = models.CharField(max_length=300, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    tokens_in = models.PositiveIntegerField(null=True, blank=True)
    tokens_out = models.PositiveIntegerField(null=True, blank=True)
    # The user stopped the reply before the model finished: the content is what came until then.
    stopped = models.BooleanField(default=False)
    # A user message that got no answer keeps the reason, shown beside it; it is never sent to a model.
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "chat_messages"
        # The id orders a conversation: two messages stored in one transaction can share a timestamp.
        ordering = ["id"]
        indexes = [models.Index(fields=["session", "id"], name="chatmessage_session_id_idx")]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"
