"""Semantic memory (ADR-019): store, search by meaning and keywords, pack context for a prompt, forget.

Visibility: a memory belongs to its owner, or to everyone when it has none (shared). Every search is scoped
inside the index query (apps.memory.index), so nobody is shown another user's private memory, and a limit of 5
returns 5 visible memories.
"""

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from apps.events.services import clean_multiline_text, log_event
from apps.memory import index
from apps.memory.embeddings import get_embedder
from apps.memory.models import MemoryEntry

User = AbstractBaseUser | AnonymousUser
CONTENT_MAX = 20_000
# Reciprocal rank fusion: each list adds 1 / (RRF_K + rank); 60 is the customary constant.
RRF_K = 60
SEARCH_LIMIT_MAX = 50
REASON_MAX = 300


class MemoryError(Exception):
    pass


class InvalidMemory(MemoryError, ValueError):
    pass


class MemoryNotFound(MemoryError, LookupError):
    pass


class MemoryAlreadyForgotten(MemoryError):
    pass


@dataclass(frozen=True)
class NewMemory:
    content: str
    context_type: str
    source: str
    owner: Any = None  # a user, or None for a shared memory
    agent_id: int | None = None
    task_id: int | None = None
    session_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stored:
    memory: MemoryEntry
    created: bool
    # "" for a new memory; "exact" or "near" when an existing one was bumped instead.
    duplicate: str = ""


@dataclass(frozen=True)
class Hit:
    memory: MemoryEntry
    # Fused rank score (higher is better); similarity is the cosine of the query and the memory, if it was a
    # vector match.
    score: float
    similarity: float | None


def _normalise(content: str) -> str:
    text = clean_multiline_text(content).strip()
    if not text:
        raise InvalidMemory("The memory is empty.")
    if len(text) > CONTENT_MAX:
        raise InvalidMemory(f"The memory is {len(text)} characters; the limit is {CONTENT_MAX}.")
    return text


def content_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()


def _owner_key(owner: Any) -> int:
    return owner.pk if owner is not None else index.SHARED


def visible_owner_ids(user: User, *, all_users: bool = False) -> tuple[int, ...] | None:
    """The owners whose memories `user` may see: their own and the shared ones; None (everyone's) only for
    staff who ask for it."""
    if all_users and getattr(user, "is_staff", False):
        return None
    if user.is_authenticated and user.pk is not None:
        return (int(user.pk), index.SHARED)
    return (index.SHARED,)


@dataclass(frozen=True)
class _Duplicate:
    """What a new item duplicates: a stored memory, or an earlier item of the same batch."""

    kind: str  # "exact" or "near"
    target: MemoryEntry | int


def store_memories(items: Sequence[NewMemory], *, keep_both: bool = False) -> list[Stored]:
    """Store memories, embedding them in one batch and writing them in one transaction. An exact duplicate (same
    content, same owner) or a near one (cosine ≥ MEMORY_NEAR_DUPLICATE to a memory of the same owner, stored
    before or earlier in the batch) bumps that memory's access count instead, unless keep_both."""
    texts = [_normalise(item.content) for item in items]
    for item in items:
        if item.context_type not in MemoryEntry.ContextType.values:
            raise InvalidMemory(
                f"Unknown context type {item.context_type!r}; one of {', '.join(MemoryEntry.ContextType.values)}."
            )
    if not items:
        return []
    embedder = get_embedder()
    vectors = embedder.embed(texts)
    digests = [content_hash(text) for text in texts]
    now = timezone.now()
    with transaction.atomic():
        duplicates = [None] * len(items) if keep_both else _find_duplicates(items, vectors, digests)
        new = [i for i, duplicate in enumerate(duplicates) if duplicate is None]
        created = MemoryEntry.objects.bulk_create(
            [
                MemoryEntry(
                    content=texts[i],
                    source=items[i].source,
                    context_type=items[i].context_type,
                    agent_id=items[i].agent_id,
                    task_id=items[i].task_id,
                    session_id=items[i].session_id,
                    metadata=items[i].metadata,
                    timestamp=now,
                    owner=items[i].owner,
                    embedding_model=embedder.name,
                    embedding_dimensions=len(vectors[i]),
                    content_hash=digests[i],
                )
                for i in new
            ]
        )
        memories: dict[int, MemoryEntry] = dict(zip(new, created, strict=True))
        index.index_add(
            [
                index.IndexRow(m.pk, vectors[i], m.content, m.owner_id, m.context_type, m.agent_id)
                for i, m in memories.items()
            ]
        )
        for memory in created:
            # The content stays out of the event: the audit trail is seen by every staff user, a memory may be
            # private.
            log_event(
                "memory.stored",
                source=memory.source,
                agent_id=memory.agent_id,
                task_id=memory.task_id,
                data={
                    "memory_id": memory.pk,
                    "context_type": memory.context_type,
                    "shared": memory.is_shared,
                    "characters": len(memory.content),
                    "embedding_model": memory.embedding_model,
                },
            )
        bumps: dict[int, int] = {}
        for i, duplicate in enumerate(duplicates):
            if duplicate is not None:
                target = duplicate.target
                memories[i] = target if isinstance(target, MemoryEntry) else memories[target]
                bumps[memories[i].pk] = bumps.get(memories[i].pk, 0) + 1
        for pk, times in bumps.items():
            MemoryEntry.objects.filter(pk=pk).update(access_count=F("access_count") + times, last_accessed_at=now)
    bumped = MemoryEntry.objects.in_bulk(list(bumps))
    return [
        Stored(memories[i], created=True)
        if duplicate is None
        else Stored(bumped.get(memories[i].pk, memories[i]), created=False, duplicate=duplicate.kind)
        for i, duplicate in enumerate(duplicates)
    ]


def store_memory(
    *,
    content: str,
    context_type: str,
    source: str,
    owner: Any = None,
    agent_id: int | None = None,
    task_id: int | None = None,
    session_id: str = "",
    metadata: dict[str, Any] | None = None,
    keep_both: bool = False,
) -> Stored:
    item = NewMemory(content, context_type, source, owner, agent_id, task_id, session_id, metadata or {})
    return store_memories([item], keep_both=keep_both)[0]


def _find_duplicates(items: Sequence[NewMemory], vectors: Any, digests: list[str]) -> list[_Duplicate | None]:
    """For each item, what it duplicates among the live memories of its owner and the earlier items."""
    stored = {
        (m.content_hash, m.owner_id): m
        for m in MemoryEntry.objects.filter(content_hash__in=set(digests), deleted_at__isnull=True)
    }
    threshold = settings.MEMORY_NEAR_DUPLICATE
    found: list[_Duplicate | None] = []
    first: dict[tuple[str, int | None], int] = {}
    for i, item in enumerate(items):
        owner_id = item.owner.pk if item.owner is not None else None
        key = (digests[i], owner_id)
        if key in stored:
            found.append(_Duplicate("exact", stored[key]))
            continue
        if key in first:
            found.append(_Duplicate("exact", first[key]))
            continue
        first[key] = i
        similar: list[int] = np.flatnonzero(vectors[:i] @ vectors[i] >= threshold).tolist() if i else []
        earlier = [j for j in similar if found[j] is None and _owner_key(items[j].owner) == _owner_key(item.owner)]
        if earlier:
            found.append(_Duplicate("near", int(earlier[0])))
            continue
        nearest = index.vector_search(vectors[i], scope=index.Scope(owner_ids=(_owner_key(item.owner),)), k=1)
        same = None
        if nearest and nearest[0][1] >= threshold:
            same = MemoryEntry.objects.filter(pk=nearest[0][0], deleted_at__isnull=True).first()
        found.append(_Duplicate("near", same) if same is not None else None)
    return found


def search_memories(
    query: str,
    *,
    user: User,
    agent_id: int | None = None,
    context_type: str | None = None,
    limit: int = 5,
    all_users: bool = False,
) -> list[Hit]:
    """The memories `user` may see that best match `query`, by meaning and by keywords (reciprocal rank
    fusion), best first."""
    query = clean_multiline_text(query).strip()
    limit = max(1, min(limit, SEARCH_LIMIT_MAX))
    if not query:
        return []
    scope = index.Scope(
        owner_ids=visible_owner_ids(user, all_users=all_users), context_type=context_type, agent_id=agent_id
    )
    depth = max(limit * 4, 20)
    by_vector = index.vector_search(get_embedder().embed_one(query), scope=scope, k=depth)
    by_keyword = index.keyword_search(query, scope=scope, k=depth)
    scores: dict[int, float] = {}
    for ranked in (by_vector, by_keyword):
        for rank, (memory_id, _) in enumerate(ranked, start=1):
            scores[memory_id] = scores.get(memory_id, 0.0) + 1.0 / (RRF_K + rank)
    best = sorted(scores, key=lambda m: (-scores[m], -m))[:limit]
    similarity = dict(by_vector)
    memories = MemoryEntry.objects.filter(pk__in=best, deleted_at__isnull=True).in_bulk()
    hits = [Hit(memories[m], scores[m], similarity.get(m)) for m in best if m in memories]
    if hits:
        MemoryEntry.objects.filter(pk__in=[h.memory.pk for h in hits]).update(
            access_count=F("access_count") + 1, last_accessed_at=timezone.now()
        )
    return hits


def get_memory_context(
    query: str, *, user: User, max_tokens: int = 1000, agent_id: int | None = None, context_type: str | None = None
) -> str:
    """The best memories for `query` that fit in about `max_tokens` (four characters a token), one per line,
    ready to put in a prompt; "" when nothing relevant is remembered."""
    budget = max(0, max_tokens) * 4
    lines: list[str] = []
    used = 0
    for hit in search_memories(query, user=user, agent_id=agent_id, context_type=context_type, limit=10):
        memory = hit.memory
        prefix = f"- [{memory.context_type}, {memory.timestamp:%Y-%m-%d}] "
        room = budget - used - len(prefix) - 1
        if room < 40:
            break
        content = " ".join(memory.content.split())
        if len(content) > room:
            content = content[: room - 1].rstrip() + "…"
        lines.append(prefix + content)
        used += len(lines[-1]) + 1
    return "\n".join(lines)


def memory_visible(memory: MemoryEntry, user: User, *, all_users: bool = False) -> bool:
    owners = visible_owner_ids(user, all_users=all_users)
    return owners is None or _owner_key(memory.owner) in owners


def forget(*, memory_id: int, actor: User, reason: str) -> MemoryEntry:
    """Soft-delete a memory the actor may see (its owner, or staff for shared ones): kept with the reason, gone
    from every search."""
    reason = clean_multiline_text(reason).strip()
    if not reason:
        raise InvalidMemory("Say why this memory should be forgotten.")
    memory = MemoryEntry.objects.filter(pk=memory_id).first()
    if memory is None or not memory_visible(memory, actor):
        raise MemoryNotFound(f"Memory {memory_id} not found.")
    if memory.is_shared and not getattr(actor, "is_staff", False):
        raise MemoryNotFound(f"Memory {memory_id} is shared: only staff can forget it.")
    now = timezone.now()
    with transaction.atomic():
        if not MemoryEntry.objects.filter(pk=memory_id, deleted_at__isnull=True).update(
            deleted_at=now, deleted_reason=reason[:REASON_MAX]
        ):
            raise MemoryAlreadyForgotten(f"Memory {memory_id} was already forgotten.")
        index.index_remove([memory_id])
        log_event(
            "memory.forgotten",
            source="memory",
            agent_id=memory.agent_id,
            task_id=memory.task_id,
            data={"memory_id": memory_id, "by": actor.get_username(), "reason": reason[:REASON_MAX]},
        )
    memory.refresh_from_db()
    return memory


def reindex(
    *, batch_size: int = 64, everything: bool = False, progress: Callable[[int, int], None] | None = None
) -> int:
    """Re-embed live memories made by another embedder than the current one (or every one), in batches, so
    their vectors can be compared with new ones. Returns how many were re-embedded."""
    embedder = get_embedder()
    pending = MemoryEntry.objects.filter(deleted_at__isnull=True)
    if not everything:
        pending = pending.exclude(embedding_model=embedder.name)
    total = pending.count()
    done = 0
    last_id = 0
    while True:
        batch = list(pending.filter(pk__gt=last_id).order_by("pk").only("pk", "content")[:batch_size])
        if not batch:
            return done
        vectors = embedder.embed([memory.content for memory in batch])
        with transaction.atomic():
            index.index_replace_vectors([(memory.pk, vector) for memory, vector in zip(batch, vectors, strict=True)])
            MemoryEntry.objects.filter(pk__in=[memory.pk for memory in batch]).update(
                embedding_model=embedder.name, embedding_dimensions=embedder.dimensions
            )
        done += len(batch)
        last_id = batch[-1].pk
        if progress is not None:
            progress(done, total)
