from datetime import datetime
from typing import Annotated, Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status
from ninja.errors import HttpError
from pydantic import ConfigDict

from apps.core.api_contract import ID_MAX, JSON_INTEGER, VISIBLE_TEXT, Id, errors
from apps.core.auth import require_staff
from apps.memory import services
from apps.memory.models import MemoryEntry
from apps.swarm.models import Agent

router = Router(tags=["memory"])
# Characters of a search: percent-encoded, even a query of 4-byte characters must fit in the 16 KiB that daphne allows a
# request line and its headers (past that it hangs up without an answer).
QUERY_MAX = 1000
ContextType = MemoryEntry.ContextType


class MemoryIn(Schema):
    # A public memory is shared: "public": true with "shared": false is refused (422).
    model_config = ConfigDict(
        json_schema_extra={
            "not": {
                "required": ["public", "shared"],
                "properties": {"public": {"const": True}, "shared": {"const": False}},
            }
        }
    )

    content: str = Field(..., min_length=1, max_length=services.CONTENT_MAX, json_schema_extra=VISIBLE_TEXT)
    context_type: ContextType
    agent_id: Annotated[int, Field(ge=1, le=ID_MAX), JSON_INTEGER] | None = None
    # Shared memories are seen by every user; otherwise only by the one who stored it.
    shared: bool = Field(False, strict=True)
    public: bool = Field(
        False,
        strict=True,
        description="Shared, and also given to strangers who pay for Timmy's chat (POST /api/v1/serve/chat), whose "
        "prompts get public memories only. Implies shared.",
    )


class MemoryOut(Schema):
    id: int
    content: str
    context_type: ContextType
    source: str
    shared: bool
    public: bool
    agent_id: int | None
    task_id: int | None
    session_id: str
    timestamp: datetime
    embedding_model: str
    access_count: int


class StoredOut(MemoryOut):
    created: bool
    duplicate: str


class HitOut(MemoryOut):
    score: float
    similarity: float


class ContextOut(Schema):
    context: str


class ForgetIn(Schema):
    reason: str = Field(..., min_length=1, max_length=services.REASON_MAX, json_schema_extra=VISIBLE_TEXT)


class ForgottenOut(Schema):
    id: int
    deleted_at: datetime
    deleted_reason: str


ALL_USERS = Query(
    False,
    description="Every user's memories, private ones included: needs the permission memory.view_private_memories "
    "(403 without it).",
)


def _scope(user: Any, all_users: bool) -> bool:
    if all_users and not services.can_read_private(user):
        raise HttpError(403, services.private_permission_refusal())
    return all_users


def _out(memory: MemoryEntry, **extra: object) -> dict[str, object]:
    fields = {name: getattr(memory, name) for name in MemoryOut.model_fields if name != "shared"}
    return {**fields, "shared": memory.is_shared, **extra}


@router.post(
    "", response={200: StoredOut, 201: StoredOut, **errors(400)}, summary="Remember something (200: it was known)"
)
def memory_store(request: HttpRequest, payload: MemoryIn) -> Status[dict[str, object]]:
    user = require_staff(request)
    if payload.agent_id is not None and not Agent.objects.filter(pk=payload.agent_id).exists():
        raise HttpError(422, f"Agent {payload.agent_id} not found.")
    if payload.public and "shared" in payload.model_fields_set and not payload.shared:
        raise HttpError(
            422, 'A public memory is seen by everyone, so it is shared: send "public": true without "shared": false.'
        )
    try:
        stored = services.store_memory(
            content=payload.content,
            context_type=payload.context_type,
            source="api",
            owner=None if payload.shared or payload.public else user,
            agent_id=payload.agent_id,
            public=payload.public,
        )
    except services.InvalidMemory as exc:
        raise HttpError(422, str(exc)) from exc
    body = _out(stored.memory, created=stored.created, duplicate=stored.duplicate)
    return Status(201 if stored.created else 200, body)


@router.get(
    "/search", response={200: list[HitOut], **errors()}, summary="Memories you may see that match, by meaning and words"
)
def memory_search(
    request: HttpRequest,
    q: str = Query(..., min_length=1, max_length=QUERY_MAX),
    limit: int = Query(5, ge=1, le=services.SEARCH_LIMIT_MAX),
    context_type: ContextType | None = None,
    agent_id: Id | None = None,
    all_users: bool = ALL_USERS,
) -> list[dict[str, object]]:
    user = require_staff(request)
    hits = services.search_memories(
        q, user=user, agent_id=agent_id, context_type=context_type, limit=limit, all_users=_scope(user, all_users)
    )
    return [_out(hit.memory, score=hit.score, similarity=hit.similarity) for hit in hits]


@router.get(
    "/context", response={200: ContextOut, **errors()}, summary="The best memories for a prompt, within a token budget"
)
def memory_context(
    request: HttpRequest,
    q: str = Query(..., min_length=1, max_length=QUERY_MAX),
    max_tokens: int = Query(1000, ge=1, le=8000),
    all_users: bool = ALL_USERS,
) -> dict[str, str]:
    user = require_staff(request)
    context = services.get_memory_context(q, user=user, max_tokens=max_tokens, all_users=_scope(user, all_users))
    return {"context": context}


@router.delete(
    "/{int:memory_id}",
    response={200: ForgottenOut, **errors(400, 404, 409)},
    summary="Forget a memory (kept, with the reason, unsearchable)",
    description="Your own memories and the shared ones. Another user's private memory is 404, or 403 for those "
    "allowed to read it: only its owner can forget it.",
)
def memory_forget(request: HttpRequest, memory_id: Id, payload: ForgetIn) -> MemoryEntry:
    user = require_staff(request)
    try:
        return services.forget(memory_id=memory_id, actor=user, reason=payload.reason)
    except services.MemoryNotFound as exc:
        raise HttpError(404, str(exc)) from exc
    except services.MemoryNotAllowed as exc:
        raise HttpError(403, str(exc)) from exc
    except services.MemoryAlreadyForgotten as exc:
        raise HttpError(409, str(exc)) from exc
    except services.InvalidMemory as exc:
        raise HttpError(422, str(exc)) from exc
