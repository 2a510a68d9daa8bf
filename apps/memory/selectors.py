"""Reads for the memory page and the admin. Every function takes the user and returns only the memories that user
may see (their own, the shared and the public ones, services.visible_owner_ids); the page's are live ones only:
forgotten memories are for the admin."""

from collections.abc import Sequence
from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet, prefetch_related_objects

from apps.memory import index, services
from apps.memory.models import MemoryEntry

FACTS_LIMIT = 100
RECENT_LIMIT = 20


@dataclass(frozen=True)
class AgentCount:
    agent_id: int | None  # None: memories of no agent (facts added by hand, for instance)
    name: str
    count: int


def _scope(user: services.User, *, all_users: bool = False) -> Q:
    owners = services.visible_owner_ids(user, all_users=all_users)
    if owners is None:
        return Q()
    scope = Q(owner_id__in=[pk for pk in owners if pk not in (index.SHARED, index.PUBLIC)])
    if index.SHARED in owners:
        scope |= Q(owner__isnull=True, public=False)
    if index.PUBLIC in owners:
        scope |= Q(owner__isnull=True, public=True)
    return scope


def _in_scope(user: services.User, *, all_users: bool = False) -> QuerySet[MemoryEntry]:
    """The memories `user` may see, forgotten ones included."""
    return MemoryEntry.objects.filter(_scope(user, all_users=all_users))


def memories_for_admin(queryset: QuerySet[MemoryEntry], user: services.User) -> QuerySet[MemoryEntry]:
    """The admin's memories, forgotten ones included: everyone's for those who may read other users' private
    memories, the user's own and the shared ones for the others."""
    return queryset.filter(_scope(user, all_users=services.can_read_private(user)))


def memories_visible(user: services.User, *, all_users: bool = False) -> QuerySet[MemoryEntry]:
    return _in_scope(user, all_users=all_users).filter(deleted_at__isnull=True)


def memory_exists_for(user: services.User, *, memory_id: int) -> bool:
    """Whether the memory exists and `user` may see it, forgotten or not (another user's private one: no)."""
    return _in_scope(user).filter(pk=memory_id).exists()


def memory_counts_by_type(user: services.User) -> dict[str, int]:
    """Every context type, zero included, in the order of MemoryEntry.ContextType."""
    rows = memories_visible(user).order_by().values("context_type").annotate(n=Count("id"))
    counts = dict.fromkeys(MemoryEntry.ContextType.values, 0)
    counts.update({row["context_type"]: row["n"] for row in rows})
    return counts


def memory_counts_by_agent(user: services.User) -> list[AgentCount]:
    """Most memories first; memories of no agent as one row named "no agent"."""
    rows = memories_visible(user).order_by().values("agent_id", "agent__name").annotate(n=Count("id"))
    counts = [AgentCount(row["agent_id"], row["agent__name"] or "no agent", row["n"]) for row in rows]
    return sorted(counts, key=lambda c: (-c.count, c.agent_id is None, c.name))


def facts_visible(user: services.User, *, limit: int = FACTS_LIMIT) -> list[MemoryEntry]:
    qs = memories_visible(user).filter(context_type=MemoryEntry.ContextType.FACT).select_related("agent")
    return list(qs.order_by("-id")[:limit])


def memories_recent(user: services.User, *, limit: int = RECENT_LIMIT) -> list[MemoryEntry]:
    return list(memories_visible(user).select_related("agent").order_by("-id")[:limit])


def with_relations(memories: Sequence[MemoryEntry]) -> None:
    """Load the agent and owner of memories from a search (two queries, not two per memory)."""
    prefetch_related_objects(list(memories), "agent", "owner")
