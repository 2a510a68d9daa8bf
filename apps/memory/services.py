"""Semantic memory (ADR-019): store, search by meaning and keywords, pack context for a prompt, forget.

Visibility: a memory belongs to its owner, or to everyone when it has none (shared). A shared memory may also be
marked public: only public memories reach strangers (the paid chat). Reading other users' private memories needs
the permission PRIVATE_PERMISSION. Every search is scoped inside the index query (apps.memory.index), so nobody
is shown a memory outside their scope, and a limit of 5 returns 5 visible memories.
"""

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, PermissionsMixin
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from apps.events.services import clean_multiline_text, log_event
from apps.memory import index
from apps.memory.embeddings import Embedder, embed_chunks, get_embedder
from apps.memory.models import MemoryEntry

User = AbstractBaseUser | AnonymousUser
CONTENT_MAX = 20_000
# A memory holding every meaningful word of a question of two or more ("Prusa MK4", "Backblaze bucket") ranks this
# much higher than its cosine alone says: enough to lift a name or a code over memories that are merely about the
# same things, too little to lift one the embedder finds unrelated (docs/architecture.md has the measurements).
FULL_MATCH_BOOST = 0.1
SEARCH_LIMIT_MAX = 50
# Shorter memories are one chunk for every embedder (a word piece or a word is at least a character), so search
# never cuts them again to find their best passage.
PASSAGE_MIN_CHARS = 254
# Stored memories a new one is compared with whole (closeness), the nearest to its first chunk: among memories of
# several chunks, the one it duplicates may not be the very nearest.
DUPLICATE_CANDIDATES = 5
REASON_MAX = 300
# Reading other users' private memories and chats: superusers have it, other staff only when granted.
PRIVATE_PERMISSION = "memory.view_private_memories"


class MemoryError(Exception):
    pass


class InvalidMemory(MemoryError, ValueError):
    pass


class MemoryNotFound(MemoryError, LookupError):
    pass


class MemoryAlreadyForgotten(MemoryError):
    pass


class MemoryNotAllowed(MemoryError, PermissionError):
    pass


class MemoryNotShared(MemoryError):
    """Only a shared memory can be public."""


class MemoryUnchanged(MemoryError):
    """The memory already is what it was asked to become (public or not public)."""


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
    public: bool = False  # shared memories only


@dataclass(frozen=True)
class Stored:
    memory: MemoryEntry
    created: bool
    # "" for a new memory; "exact" or "near" when an existing one was bumped instead.
    duplicate: str = ""
    # A public memory that duplicated a shared one made that one public.
    published: bool = False


@dataclass(frozen=True)
class Hit:
    memory: MemoryEntry
    # The ranking score (higher is better): the similarity plus what keyword matches add (search_memories).
    score: float
    # The cosine of the query and the memory (its best chunk, for a long one).
    similarity: float
    # The chunk of a long memory that matched best (embeddings.chunk_texts), for a prompt that has no room for all
    # of it; a memory of one chunk: its content.
    passage: str = ""


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


def _same_owner_keys(owner: Any) -> tuple[int, ...]:
    """The index keys of the memories of the same owner: for a shared memory, the public ones too."""
    return (owner.pk,) if owner is not None else (index.SHARED, index.PUBLIC)


def can_read_private(user: User) -> bool:
    """Whether `user` may read other users' private memories and chat transcripts."""
    return isinstance(user, PermissionsMixin) and user.has_perm(PRIVATE_PERMISSION)


def private_permission_refusal() -> str:
    return (
        "Reading other users' private memories needs the permission “Can read other users' private memories” "
        f"({PRIVATE_PERMISSION}); an admin grants it on your user page in the admin."
    )


def visible_owner_ids(user: User, *, all_users: bool = False, public_only: bool = False) -> tuple[int, ...] | None:
    """The index owner keys whose memories `user` may see: their own, the shared and the public ones; None
    (everyone's) when they ask for it and hold PRIVATE_PERMISSION (MemoryNotAllowed otherwise); only the public
    ones with public_only (for strangers: the paid chat)."""
    if public_only:
        return (index.PUBLIC,)
    if all_users:
        if not can_read_private(user):
            raise MemoryNotAllowed(private_permission_refusal())
        return None
    if user.is_authenticated and user.pk is not None:
        return (int(user.pk), index.SHARED, index.PUBLIC)
    return (index.SHARED, index.PUBLIC)


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
        if item.public and item.owner is not None:
            raise InvalidMemory("A public memory is seen by everyone: it must be shared, not someone's own.")
    if not items:
        return []
    embedder = get_embedder()
    # Every chunk of every memory in one embed() call: a batch of short memories is embedded as it always was.
    chunks = embed_chunks(embedder, texts)
    digests = [content_hash(text) for text in texts]
    now = timezone.now()
    with transaction.atomic():
        duplicates = [None] * len(items) if keep_both else _find_duplicates(items, chunks, digests)
        new = [i for i, duplicate in enumerate(duplicates) if duplicate is None]
        # A public item that duplicates a shared one makes that one public: it is what was asked to be public.
        public = {i for i in new if items[i].public}
        publish: dict[int, MemoryEntry] = {}
        for i in range(len(items)):
            if not items[i].public or duplicates[i] is None:
                continue
            first = i
            while (duplicate := duplicates[first]) is not None and not isinstance(duplicate.target, MemoryEntry):
                first = duplicate.target  # an earlier item of the batch, itself perhaps a duplicate
            if duplicate is None:
                public.add(first)
            elif isinstance(duplicate.target, MemoryEntry) and not duplicate.target.public:
                publish[i] = duplicate.target
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
                    public=i in public,
                    embedding_model=embedder.name,
                    embedding_dimensions=chunks[i].shape[1],
                    content_hash=digests[i],
                )
                for i in new
            ]
        )
        memories: dict[int, MemoryEntry] = dict(zip(new, created, strict=True))
        index.index_add(
            [
                index.IndexRow(
                    m.pk,
                    chunks[i][0],
                    m.content,
                    m.owner_id,
                    m.context_type,
                    m.agent_id,
                    m.public,
                    chunks=tuple(chunks[i][1:]),
                )
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
                    "public": memory.public,
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
        published = {i for i, m in publish.items() if _publish(m, public=True, source=items[i].source)}
    bumped = MemoryEntry.objects.in_bulk(list(bumps))
    return [
        Stored(memories[i], created=True)
        if duplicate is None
        else Stored(
            bumped.get(memories[i].pk, memories[i]),
            created=False,
            duplicate=duplicate.kind,
            published=i in published,
        )
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
    public: bool = False,
    keep_both: bool = False,
) -> Stored:
    item = NewMemory(content, context_type, source, owner, agent_id, task_id, session_id, metadata or {}, public)
    return store_memories([item], keep_both=keep_both)[0]


def closeness(a: np.ndarray, b: np.ndarray) -> float:
    """How alike two memories are, from their chunks' vectors (rows): the cosine of the chunk, of either memory,
    least like any chunk of the other. For two memories of one chunk each, their cosine."""
    similarity = a @ b.T
    return float(min(similarity.max(axis=1).min(), similarity.max(axis=0).min()))


def _find_duplicates(
    items: Sequence[NewMemory], chunks: Sequence[np.ndarray], digests: list[str]
) -> list[_Duplicate | None]:
    """For each item, what it duplicates among the live memories of its owner and the earlier items.

    A near duplicate is a whole memory alike (closeness at least MEMORY_NEAR_DUPLICATE): every chunk of each has a
    chunk of the other about as close. Neither the first chunks alone nor the means of the chunks will do: two long
    diaries that began with the same four days have the same first chunk, and the means of two that share only
    their style and subjects are 0.97 alike (tests/memory/test_long_memories.py), so the second one would be lost.
    Such a duplicate has a chunk at least that close to the new memory's first chunk, so the candidates are the
    memories nearest to it."""
    stored = {
        (m.content_hash, m.owner_id): m
        for m in MemoryEntry.objects.filter(content_hash__in=set(digests), deleted_at__isnull=True)
    }
    threshold = settings.MEMORY_NEAR_DUPLICATE
    # Every chunk of the batch, the item each belongs to, and where each item's chunks begin.
    rows = np.concatenate(chunks)
    item_of_row = np.repeat(np.arange(len(chunks)), [len(c) for c in chunks])
    first_row = np.cumsum([0, *(len(c) for c in chunks)])
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
        head = chunks[i][0]
        before = first_row[i]
        near = np.unique(item_of_row[:before][rows[:before] @ head >= threshold]).tolist() if before else []
        earlier = [
            j
            for j in near
            if found[j] is None
            and _owner_key(items[j].owner) == _owner_key(item.owner)
            and closeness(chunks[j], chunks[i]) >= threshold
        ]
        if earlier:
            found.append(_Duplicate("near", int(earlier[0])))
            continue
        nearest = index.vector_search(
            head, scope=index.Scope(owner_ids=_same_owner_keys(item.owner)), k=DUPLICATE_CANDIDATES
        )
        # A memory's closeness is at most its best chunk's cosine to the first chunk: only those may qualify.
        possible = [m for m, similarity in nearest if similarity >= threshold]
        alike = {m: closeness(v, chunks[i]) for m, v in index.index_vectors(possible).items()}
        best = max(alike, key=lambda m: (alike[m], -m), default=None)
        same = None
        if best is not None and alike[best] >= threshold:
            same = MemoryEntry.objects.filter(pk=best, deleted_at__isnull=True).first()
        found.append(_Duplicate("near", same) if same is not None else None)
    return found


def similarity_floor(embedder: Embedder) -> float:
    """The cosine below which a memory is not relevant to a query: MEMORY_SIMILARITY_FLOOR, or the embedder's."""
    floor: float | None = settings.MEMORY_SIMILARITY_FLOOR
    return embedder.similarity_floor if floor is None else floor


def search_memories(
    query: str,
    *,
    user: User,
    agent_id: int | None = None,
    context_type: str | None = None,
    limit: int = 5,
    all_users: bool = False,
    public_only: bool = False,
) -> list[Hit]:
    """The memories `user` may see (visible_owner_ids) that best match `query`, best first, none below the
    embedder's similarity floor.

    Candidates come from both the vectors and the keywords, and are ranked by their cosine to the query, to
    which a keyword match adds the embedder's keyword_weight (times its relevance relative to the best keyword
    match), and a match of every meaningful word FULL_MATCH_BOOST. Whatever the keywords say, a memory whose
    cosine is below the floor is left out: sharing a word with the question ("phone number") does not make a
    memory about something else relevant."""
    owner_ids = visible_owner_ids(user, all_users=all_users, public_only=public_only)
    query = clean_multiline_text(query).strip()
    limit = max(1, min(limit, SEARCH_LIMIT_MAX))
    if not query:
        return []
    scope = index.Scope(owner_ids=owner_ids, context_type=context_type, agent_id=agent_id)
    depth = max(limit * 4, 20)
    embedder = get_embedder()
    vector = embedder.embed_one(query)
    similarity = dict(index.vector_search(vector, scope=scope, k=depth))
    by_keyword = index.keyword_search(query, scope=scope, k=depth)
    unseen = [m for m, _ in by_keyword if m not in similarity]
    similarity.update(index.index_similarity(unseen, vector))
    by_keyword = [(m, relevance) for m, relevance in by_keyword if m in similarity]
    scores = dict(similarity)
    best_relevance = by_keyword[0][1] if by_keyword else 0.0
    if embedder.keyword_weight and best_relevance > 0:
        for m, relevance in by_keyword:
            scores[m] += embedder.keyword_weight * relevance / best_relevance
    if len(index.keyword_terms(query)) > 1 and by_keyword:
        among = [m for m, _ in by_keyword]
        for m, _ in index.keyword_search(query, scope=scope, k=len(among), every_word=True, among=among):
            scores[m] += FULL_MATCH_BOOST
    floor = similarity_floor(embedder)
    best = sorted((m for m in scores if similarity[m] >= floor), key=lambda m: (-scores[m], -m))[:limit]
    memories = MemoryEntry.objects.filter(pk__in=best, deleted_at__isnull=True).in_bulk()
    passages = _best_passages([memories[m] for m in best if m in memories], vector, embedder)
    hits = [Hit(memories[m], scores[m], similarity[m], passages[m]) for m in best if m in memories]
    if hits:
        MemoryEntry.objects.filter(pk__in=[h.memory.pk for h in hits]).update(
            access_count=F("access_count") + 1, last_accessed_at=timezone.now()
        )
    return hits


def _best_passages(memories: Sequence[MemoryEntry], vector: Any, embedder: Embedder) -> dict[int, str]:
    """Each memory's chunk nearest the query vector: cut again the way it was indexed, matched by position with its
    stored chunk vectors. A memory short enough to be one chunk costs nothing here; one whose stored chunks no
    longer match its cut (indexed before chunking, awaiting `memory_reindex`) gives its whole content."""
    passages = {memory.pk: memory.content for memory in memories}
    long = [memory for memory in memories if len(memory.content) > PASSAGE_MIN_CHARS]
    if not long:
        return passages
    stored = index.index_vectors([memory.pk for memory in long])
    for memory, chunks in zip(long, embedder.chunk_texts([memory.content for memory in long]), strict=True):
        vectors = stored.get(memory.pk)
        if len(chunks) > 1 and vectors is not None and len(vectors) == len(chunks):
            passages[memory.pk] = chunks[int(np.argmax(vectors @ vector))]
    return passages


def get_memory_context(
    query: str,
    *,
    user: User,
    max_tokens: int = 1000,
    agent_id: int | None = None,
    context_type: str | None = None,
    all_users: bool = False,
    public_only: bool = False,
) -> str:
    """The best memories for `query` that fit in about `max_tokens` (four characters a token), one per line,
    ready to put in a prompt; "" when nothing relevant is remembered. Scoped as search_memories."""
    budget = max(0, max_tokens) * 4
    lines: list[str] = []
    used = 0
    hits = search_memories(
        query,
        user=user,
        agent_id=agent_id,
        context_type=context_type,
        limit=10,
        all_users=all_users,
        public_only=public_only,
    )
    for hit in hits:
        memory = hit.memory
        prefix = f"- [{memory.context_type}, {memory.timestamp:%Y-%m-%d}] "
        room = budget - used - len(prefix) - 1
        if room < 40:
            break
        content = " ".join(memory.content.split())
        if len(content) > room and hit.passage and hit.passage != memory.content:
            # A long memory that does not fit: the part that matched the query, not its beginning.
            content = "…" + " ".join(hit.passage.split())
        if len(content) > room:
            content = content[: room - 1].rstrip() + "…"
        lines.append(prefix + content)
        used += len(lines[-1]) + 1
    return "\n".join(lines)


def memory_visible(memory: MemoryEntry, user: User, *, all_users: bool = False) -> bool:
    owners = visible_owner_ids(user, all_users=all_users)
    return owners is None or index.owner_key(memory.owner_id, memory.public) in owners


def forget(*, memory_id: int, actor: User, reason: str) -> MemoryEntry:
    """Soft-delete a memory of the actor's own, or a shared one (staff): kept with the reason, gone from every
    search. Another user's private memory is not found, or, for those allowed to read it, not theirs to forget."""
    reason = clean_multiline_text(reason).strip()
    if not reason:
        raise InvalidMemory("Say why this memory should be forgotten.")
    memory = MemoryEntry.objects.filter(pk=memory_id).first()
    if memory is None:
        raise MemoryNotFound(f"Memory {memory_id} not found.")
    if not memory_visible(memory, actor):
        if can_read_private(actor):
            raise MemoryNotAllowed(
                f"Memory {memory_id} is another user's private memory: only its owner can forget it."
            )
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


def _publish(memory: MemoryEntry, *, public: bool, source: str, by: str = "") -> bool:
    """Mark a live shared memory public or not, in its row and in the index, with its event (in the caller's
    transaction); False when it was not (forgotten, private, or already so). `by`: the user, when known."""
    changed = MemoryEntry.objects.filter(
        pk=memory.pk, owner__isnull=True, deleted_at__isnull=True, public=not public
    ).update(public=public)
    if not changed:
        return False
    index.index_set_owner([memory.pk], index.PUBLIC if public else index.SHARED)
    log_event(
        "memory.published" if public else "memory.unpublished",
        source=source,
        agent_id=memory.agent_id,
        task_id=memory.task_id,
        data={"memory_id": memory.pk, "public": public, **({"by": by} if by else {})},
    )
    memory.public = public
    return True


def memory_set_public(*, memory_id: int, public: bool, actor: User) -> MemoryEntry:
    """Mark a shared memory public, so the paid chat (strangers) may draw on it, or not public again. Staff only.

    Raises MemoryNotFound, MemoryNotAllowed (not staff), MemoryNotShared (a private memory),
    MemoryAlreadyForgotten, or MemoryUnchanged when it already is.
    """
    if not getattr(actor, "is_staff", False):
        raise MemoryNotAllowed("Only staff can make a memory public or not public.")
    memory = MemoryEntry.objects.filter(pk=memory_id).first()
    if memory is None or not memory_visible(memory, actor, all_users=can_read_private(actor)):
        raise MemoryNotFound(f"Memory {memory_id} not found.")
    with transaction.atomic():
        if _publish(memory, public=public, source="memory", by=actor.get_username()):
            return memory
    memory.refresh_from_db()
    if not memory.is_shared:
        raise MemoryNotShared(f"Memory {memory_id} is private: only a shared memory can be public.")
    if memory.is_deleted:
        raise MemoryAlreadyForgotten(f"Memory {memory_id} was forgotten.")
    raise MemoryUnchanged(f"Memory {memory_id} is already {'public' if public else 'not public'}.")


def reindex(
    *, batch_size: int = 64, everything: bool = False, progress: Callable[[int, int], None] | None = None
) -> int:
    """Re-embed live memories made by another embedder than the current one, or stored before long memories were
    cut into chunks (marked so by migration 0004), or every one, every chunk of each, in batches, so their vectors
    can be compared with new ones. Returns how many were re-embedded."""
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
        chunks = embed_chunks(embedder, [memory.content for memory in batch])
        with transaction.atomic():
            index.index_replace_vectors([(memory.pk, c) for memory, c in zip(batch, chunks, strict=True)])
            MemoryEntry.objects.filter(pk__in=[memory.pk for memory in batch]).update(
                embedding_model=embedder.name, embedding_dimensions=embedder.dimensions
            )
        done += len(batch)
        last_id = batch[-1].pk
        if progress is not None:
            progress(done, total)
