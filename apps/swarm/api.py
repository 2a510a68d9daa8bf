from datetime import datetime
from typing import Annotated, Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status
from ninja.errors import HttpError

from apps.core.api_contract import VISIBLE_TEXT, Id, SchemaName, errors
from apps.core.auth import require_staff
from apps.swarm import selectors, services
from apps.swarm.models import Agent, Task

router = Router(tags=["swarm"])
TaskStatus = Annotated[Task.Status, SchemaName("TaskStatus")]
AgentStatus = Annotated[Agent.Status, SchemaName("AgentStatus")]


class TaskIn(Schema):
    description: str = Field(..., min_length=1, max_length=services.DESCRIPTION_MAX, json_schema_extra=VISIBLE_TEXT)


class BidOut(Schema):
    agent_id: int
    agent: str = Field(..., alias="agent.name")
    amount_sats: int
    match: float | None = Field(
        None, description="How well the task matched the agent's profile when it bid (cosine similarity, -1 to 1)"
    )
    created_at: datetime


class TaskOut(Schema):
    id: int
    description: str
    status: TaskStatus
    assigned_agent_id: int | None
    winning_bid_sats: int | None
    result: str
    failure_reason: str
    created_at: datetime
    auction_closes_at: datetime | None
    assigned_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class TaskDetailOut(TaskOut):
    bids: list[BidOut]

    @staticmethod
    def resolve_bids(obj: Task) -> list[Any]:
        return list(obj.bids.all())


class AgentOut(Schema):
    id: int
    name: str
    persona: str
    description: str
    capabilities: list[str]
    keywords: list[str]
    profile: str
    status: AgentStatus
    base_bid_sats: int
    bid_jitter_sats: int
    last_seen: datetime | None
    wins: int


@router.post("/tasks", response={201: TaskOut, **errors(400)}, summary="Post a task; its auction opens at once")
def post_task(request: HttpRequest, payload: TaskIn) -> Status[Task]:
    user = require_staff(request)
    try:
        task = services.task_post(description=payload.description, posted_by=user)
    except services.InvalidTask as exc:
        raise HttpError(422, str(exc)) from exc
    return Status(201, task)


@router.get("/tasks", response={200: list[TaskOut], **errors()}, summary="Tasks, newest first")
def list_tasks(
    request: HttpRequest,
    status: TaskStatus | None = None,
    limit: int = Query(50, ge=1, le=500),
) -> list[Task]:
    require_staff(request)
    return selectors.tasks_list(status=status, limit=limit)


@router.get("/tasks/{int:task_id}", response={200: TaskDetailOut, **errors(404)}, summary="One task with its bids")
def get_task(request: HttpRequest, task_id: Id) -> Task:
    require_staff(request)
    task = selectors.task_with_bids(task_id)
    if task is None:
        raise HttpError(404, f"Task {task_id} not found.")
    return task


@router.get("/agents", response={200: list[AgentOut], **errors()}, summary="The agent registry")
def list_agents(request: HttpRequest) -> list[Agent]:
    require_staff(request)
    return list(selectors.agents_with_wins())
