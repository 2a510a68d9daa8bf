import uuid

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Substr

from apps.agents.models import ChatMessage, ChatSession
from apps.swarm.models import Agent, Persona, Task

# The chat page shows the end of a long conversation, not all of it.
PAGE_MESSAGES = 200
# Past conversations listed beside the chat, and how much of each one's first message they show.
PAGE_CONVERSATIONS = 30
PREVIEW_CHARS = 120


def _uuid(value: object) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def chat_session_for(*, user: AbstractBaseUser | AnonymousUser, session_id: object) -> ChatSession | None:
    """The session with this id if it belongs to `user`; another user's session is as unknown as a missing one."""
    pk = _uuid(session_id) if session_id else None
    if pk is None or not user.is_authenticated:
        return None
    return ChatSession.objects.filter(pk=pk, owner_id=user.pk).first()


def chat_history(*, session: ChatSession, limit: int) -> list[dict[str, str]]:
    """The last `limit` messages of the conversation as the router takes them, oldest first.

    A user message that got no answer is left out: the model should see the exchanges that happened.
    """
    rows = (
        ChatMessage.objects.filter(session=session, error="")
        .order_by("-id")
        .values_list("role", "content")[: max(0, limit)]
    )
    return [{"role": role, "content": content} for role, content in reversed(rows)]


def chat_messages_recent(*, session: ChatSession, limit: int = PAGE_MESSAGES) -> list[ChatMessage]:
    return list(reversed(ChatMessage.objects.filter(session=session).order_by("-id")[:limit]))


def chat_sessions_recent(
    *, user: AbstractBaseUser | AnonymousUser, limit: int = PAGE_CONVERSATIONS
) -> QuerySet[ChatSession]:
    """The user's own conversations, the latest first, each with `preview` (its first message) and `message_count`."""
    if not user.is_authenticated:
        return ChatSession.objects.none()
    first = ChatMessage.objects.filter(session=OuterRef("pk"), role=ChatMessage.Role.USER).order_by("id")
    return (
        ChatSession.objects.filter(owner_id=user.pk)
        .annotate(
            preview=Substr(Subquery(first.values("content")[:1]), 1, PREVIEW_CHARS),
            message_count=Count("messages"),
        )
        .order_by("-updated_at")[:limit]
    )


def timmy_agent_id() -> int | None:
    return Agent.objects.filter(persona=Persona.TIMMY).order_by("pk").values_list("pk", flat=True).first()


def tasks_assigned_ids(*, limit: int = 10) -> list[int]:
    """Assigned tasks, the longest waiting first."""
    return list(
        Task.objects.filter(status=Task.Status.ASSIGNED)
        .order_by("assigned_at", "id")
        .values_list("id", flat=True)[:limit]
    )


def task_is_claimed_by(*, task_id: int, worker_id: str) -> bool:
    return Task.objects.filter(pk=task_id, status=Task.Status.RUNNING, claimed_by=worker_id).exists()


def user_for_cli(username: str | None) -> User | None:
    """The named active user, or without a name the first superuser (the one `ensure_admin` creates)."""
    users = get_user_model().objects.filter(is_active=True)
    if username:
        return users.filter(username=username).first()
    return users.filter(is_superuser=True).order_by("pk").first()
