import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.utils import timezone

from apps.agents import prompts, selectors
from apps.agents.models import ChatMessage, ChatSession
from apps.agents.tools import TOOLS
from apps.core.leases import LeaseKeeper
from apps.events.models import EventType
from apps.events.services import clean_multiline_text, log_event
from apps.memory import services as memory
from apps.providers import router
from apps.providers import services as provider_services
from apps.providers.clients import monotonic_ms
from apps.providers.context import Prompt
from apps.providers.models import ModelCall
from apps.providers.router import Completion, RouterError, TraceContext
from apps.swarm import services as swarm_services
from apps.swarm.models import Persona, Task
from apps.upgrades import services as upgrades

logger = logging.getLogger("timmy.agents")


class ToolNotFound(LookupError):
    pass


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    value: Any
    error: str
    duration_ms: float


def tool_run(
    *, name: str, arguments: dict[str, Any], source: str, agent_id: object = None, task_id: object = None
) -> ToolResult:
    """Run a tool for an agent, between a tool.called and a tool.completed event.

    A tool that raises is reported as a failed result (the agent sees the error), not re-raised.
    """
    tool = TOOLS.get(name)
    if tool is None:
        raise ToolNotFound(f"No tool named {name!r}. Tools: {', '.join(sorted(TOOLS))}.")
    with transaction.atomic():
        log_event(
            EventType.TOOL_CALLED,
            source=source,
            agent_id=agent_id,
            task_id=task_id,
            data={"tool": name, "arguments": arguments},
        )
    started = time.monotonic()
    try:
        value, error = tool.func(**arguments), ""
    except Exception as exc:  # the tool's failure is the agent's information, and it is logged below
        value, error = None, f"{type(exc).__name__}: {exc}"
    duration_ms = round((time.monotonic() - started) * 1000, 2)
    with transaction.atomic():
        log_event(
            EventType.TOOL_COMPLETED,
            source=source,
            agent_id=agent_id,
            task_id=task_id,
            data={"tool": name, "ok": not error, "error": error, "duration_ms": duration_ms},
        )
    return ToolResult(ok=not error, value=value, error=error, duration_ms=duration_ms)


# --- Timmy's chat ---

CHAT_SOURCE = "agents.chat"
# How much of what memory finds goes into a prompt.
MEMORY_CONTEXT_TOKENS = 500
TASK_SOURCE = "agents.worker"
LLM_TOOL = "llm.complete"
MESSAGE_MAX = 8_000


class ChatError(Exception):
    pass


class InvalidChatMessage(ChatError):
    pass


class ChatSessionNotFound(ChatError):
    pass


class ChatUnavailable(ChatError):
    """No model answered (the router's message says which provider failed and why); the user's message is kept."""

    def __init__(self, reason: str, *, session_id: str, user_message: ChatMessage) -> None:
        self.reason = reason
        self.session_id = session_id
        self.user_message = user_message
        super().__init__(reason)


@dataclass(frozen=True)
class ChatReply:
    response: str
    provider: str
    model: str
    session_id: str
    user_message: ChatMessage
    reply_message: ChatMessage
    stopped: bool = False


SERVE_SOURCE = "agents.serve"


MEMORY_HEADING = "What you remember that may help (from memory; it may be incomplete or out of date)"
TASK_MEMORY_HEADING = "Similar past tasks and facts (from memory; it may be incomplete or out of date)"


def _memories(text: str, *, user: User | AnonymousUser, public_only: bool = False) -> list[str]:
    """What the memories `user` may see say about `text`, best first, one piece each, for the router to fit
    (public_only: only the memories marked public, for a stranger)."""
    found = memory.get_memory_context(text, user=user, max_tokens=MEMORY_CONTEXT_TOKENS, public_only=public_only)
    return [line for line in found.splitlines() if line.strip()]


def _timmy_prompt(
    text: str, *, user: User | AnonymousUser, history: list[dict[str, str]] | None = None, public_only: bool = False
) -> Prompt:
    return Prompt(
        messages=[{"role": ChatMessage.Role.USER, "content": text}],
        system=prompts.TIMMY,
        context=_memories(text, user=user, public_only=public_only),
        context_heading=MEMORY_HEADING,
        history=history or [],
    )


class ServeUnavailable(ChatError):
    """No model answered a paid request (the router's message says why)."""


@dataclass(frozen=True)
class ServedReply:
    response: str
    provider: str
    model: str


def chat_serve(*, message: str, payment_hash: str) -> ServedReply:
    """One answer from Timmy for a paying client (L402): no conversation, and nothing remembered from it (the
    client is a stranger to this household). Only memories marked public go into the prompt: shared ones hold
    the household's work (Echo's task results, shared facts), which a stranger must not be able to ask about."""
    text = _chat_message_clean(message)
    agent_id = selectors.timmy_agent_id()
    with transaction.atomic():
        log_event(
            EventType.TOOL_CALLED,
            source=SERVE_SOURCE,
            agent_id=agent_id,
            data={"tool": LLM_TOOL, "payment_hash": payment_hash},
        )
    started = time.monotonic()
    try:
        completion = router.complete(
            _timmy_prompt(text, user=AnonymousUser(), public_only=True),
            trace=TraceContext(purpose=ModelCall.Purpose.SERVE, agent_id=agent_id),
        )
    except RouterError as exc:
        with transaction.atomic():
            log_event(
                EventType.TOOL_COMPLETED,
                source=SERVE_SOURCE,
                agent_id=agent_id,
                data={**_llm_failed_data(str(exc), started), "payment_hash": payment_hash},
            )
        raise ServeUnavailable(str(exc)) from exc
    with transaction.atomic():
        log_event(
            EventType.TOOL_COMPLETED,
            source=SERVE_SOURCE,
            agent_id=agent_id,
            data={**_llm_completed_data(completion, started), "payment_hash": payment_hash},
        )
    return ServedReply(clean_multiline_text(completion.content), completion.provider, completion.model)


def _chat_message_clean(message: str) -> str:
    # Shown on pages and terminals and sent to models: no terminal escapes or invisible controls.
    text = clean_multiline_text(message).strip()
    if not text:
        raise InvalidChatMessage("The message is empty.")
    if len(text) > MESSAGE_MAX:
        raise InvalidChatMessage(f"The message is {len(text)} characters; the limit is {MESSAGE_MAX}.")
    return text


def _llm_stream(
    prompt: Prompt,
    *,
    on_chunk: Callable[[str], None] | None,
    should_stop: Callable[[], bool] | None,
    on_failover: router.OnFailover | None,
    trace: TraceContext | None = None,
) -> Completion:
    if on_chunk is None and should_stop is None:
        return router.complete(prompt, on_failover=on_failover, trace=trace)
    stream = router.complete(prompt, stream=True, on_failover=on_failover, trace=trace)
    for chunk in stream:
        if on_chunk is not None:
            on_chunk(clean_multiline_text(chunk))
        if should_stop is not None and should_stop():
            stream.stop()  # closes the connection: the model stops generating
            break
    assert stream.completion is not None  # set once the stream is exhausted or stopped
    return stream.completion


def _llm_completed_data(completion: Completion, started: float) -> dict[str, Any]:
    data = {
        "tool": LLM_TOOL,
        "ok": True,
        "provider": completion.provider,
        "model": completion.model,
        "latency_ms": completion.latency_ms,
        "tokens_in": completion.tokens_in,
        "tokens_out": completion.tokens_out,
        "duration_ms": monotonic_ms(started),
        # What went into the prompt and what was left out to fit the model's context.
        **(completion.fitted.summary() if completion.fitted else {}),
    }
    if completion.stopped:
        data["stopped"] = True
    return data


def _llm_failed_data(reason: str, started: float) -> dict[str, Any]:
    return {"tool": LLM_TOOL, "ok": False, "error": reason, "duration_ms": monotonic_ms(started)}


def _chat_session_save(*, session: ChatSession | None, session_id: uuid.UUID, user: User, now: datetime) -> ChatSession:
    if session is None:
        return ChatSession.objects.create(id=session_id, owner=user, created_at=now, updated_at=now)
    ChatSession.objects.filter(pk=session.pk).update(updated_at=now)
    return session


def chat_send(
    *,
    user: User,
    message: str,
    session_id: str | uuid.UUID | None = None,
    on_chunk: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_failover: router.OnFailover | None = None,
) -> ChatReply:
    """Send `message` to Timmy in the user's conversation `session_id` (a new one without it) and store both sides.

    With `on_chunk`, the reply is streamed: each piece of text is passed to it as it arrives. `should_stop` is
    asked after each piece: when it says yes, generation stops and what came so far is kept as the reply, marked
    stopped. `on_failover(from, to, reason)` is told when a provider fails and the next is tried. The prompt is
    fitted to the answering model's context: the system prompt, memories, then the newest history that fits. Raises
    InvalidChatMessage, ChatSessionNotFound (also for another user's session), or ChatUnavailable when no
    model answered — the user's message is stored then, with the reason, so nothing typed is lost.
    """
    text = _chat_message_clean(message)
    session = None
    if session_id:
        session = selectors.chat_session_for(user=user, session_id=session_id)
        if session is None:
            raise ChatSessionNotFound(f"Chat session {session_id} not found.")
    new_id = session.pk if session is not None else uuid.uuid4()
    history = selectors.chat_history(session=session, limit=settings.CHAT_HISTORY_MESSAGES) if session else []
    agent_id = selectors.timmy_agent_id()
    with transaction.atomic():
        log_event(
            EventType.TOOL_CALLED,
            source=CHAT_SOURCE,
            agent_id=agent_id,
            data={"tool": LLM_TOOL, "session_id": str(new_id), "history_messages": len(history)},
        )
    # No transaction is open while the model thinks: SQLite would hold its write lock for the whole call.
    sent_at = timezone.now()
    started = time.monotonic()
    trace = TraceContext(purpose=ModelCall.Purpose.CHAT, user_id=user.pk, agent_id=agent_id)
    try:
        completion = _llm_stream(
            _timmy_prompt(text, user=user, history=history),
            on_chunk=on_chunk,
            should_stop=should_stop,
            on_failover=on_failover,
            trace=trace,
        )
    except RouterError as exc:  # nothing answered, or the answer broke off mid-stream
        reason = str(exc)
        with transaction.atomic():
            session = _chat_session_save(session=session, session_id=new_id, user=user, now=timezone.now())
            user_message = ChatMessage.objects.create(
                session=session, role=ChatMessage.Role.USER, content=text, error=reason, created_at=sent_at
            )
            provider_services.model_call_link(trace=trace, chat_message=user_message)
            log_event(
                EventType.TOOL_COMPLETED,
                source=CHAT_SOURCE,
                agent_id=agent_id,
                data={**_llm_failed_data(reason, started), "session_id": str(new_id)},
            )
        raise ChatUnavailable(reason, session_id=str(new_id), user_message=user_message) from exc
    response = clean_multiline_text(completion.content)
    now = timezone.now()
    with transaction.atomic():
        session = _chat_session_save(session=session, session_id=new_id, user=user, now=now)
        user_message = ChatMessage.objects.create(
            session=session, role=ChatMessage.Role.USER, content=text, created_at=sent_at
        )
        reply_message = ChatMessage.objects.create(
            session=session,
            role=ChatMessage.Role.ASSISTANT,
            content=response,
            provider=completion.provider,
            model=completion.model,
            latency_ms=completion.latency_ms,
            tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out,
            stopped=completion.stopped,
            created_at=now,
        )
        provider_services.model_call_link(trace=trace, chat_message=reply_message)
        log_event(
            EventType.TOOL_COMPLETED,
            source=CHAT_SOURCE,
            agent_id=agent_id,
            data={**_llm_completed_data(completion, started), "session_id": str(new_id)},
        )
    # Remembered after the answer, so it is found from the next message on (never in its own context).
    memory.store_memory(
        content=f"{user.get_username()}: {text}\nTimmy: {response}",
        context_type="conversation",
        source=CHAT_SOURCE,
        owner=user,
        agent_id=agent_id,
        session_id=str(new_id),
    )
    return ChatReply(
        response=response,
        provider=completion.provider,
        model=completion.model,
        session_id=str(new_id),
        user_message=user_message,
        reply_message=reply_message,
        stopped=completion.stopped,
    )


# --- assigned tasks, run by the worker ---


def task_run(*, task_id: int, worker_id: str, lease_seconds: int | None = None) -> Task:
    """Run an assigned task: its winning persona's prompt and the task's description go through the router.

    ASSIGNED → RUNNING (the agent busy) → COMPLETED with the reply, or FAILED with the router's reason (the agent
    idle again), with tool.called / tool.completed events around the model call. Raises TaskWrongState when
    the task is no longer assigned (another worker claimed it first).
    """
    task = swarm_services.task_start(task_id=task_id, worker_id=worker_id, lease_seconds=lease_seconds)
    return task_work(task=task, worker_id=worker_id, lease_seconds=lease_seconds)


def task_work(*, task: Task, worker_id: str, lease_seconds: int | None = None) -> Task:
    """The model call and outcome of a task this worker started (swarm task_start), renewing its lease meanwhile."""
    lease = settings.TASK_LEASE_SECONDS if lease_seconds is None else lease_seconds
    agent = task.assigned_agent
    persona = agent.persona if agent is not None else Persona.TIMMY
    if persona == Persona.FORGE and settings.FORGE_PROPOSES_UPGRADES:
        return _task_hand_to_change_request(task, worker_id=worker_id)
    with transaction.atomic():
        log_event(
            EventType.TOOL_CALLED,
            source=TASK_SOURCE,
            task_id=task.pk,
            agent_id=task.assigned_agent_id,
            data={
                "tool": LLM_TOOL,
                "agent": agent.name if agent is not None else None,
                "persona": persona,
                "worker": worker_id,
                "attempt": task.attempts,
            },
        )
    started = time.monotonic()
    try:
        renew = partial(swarm_services.task_lease_renew, task_id=task.pk, worker_id=worker_id, lease_seconds=lease)
        with LeaseKeeper(renew, lease_seconds=lease, name=f"lease-task-{task.pk}"):
            completion = router.complete(
                Prompt(
                    messages=[{"role": "user", "content": task.description}],
                    system=prompts.persona_prompt(persona),
                    # Task memories are shared (every task is on the swarm board for all staff to see).
                    context=_memories(task.description, user=AnonymousUser()),
                    context_heading=TASK_MEMORY_HEADING,
                ),
                trace=TraceContext(purpose=ModelCall.Purpose.TASK, agent_id=task.assigned_agent_id, task_id=task.pk),
            )
    except RouterError as exc:
        reason = str(exc)
        _task_llm_completed(task, _llm_failed_data(reason, started))
        return _task_finish(task, worker_id=worker_id, reason=reason)
    _task_llm_completed(task, _llm_completed_data(completion, started))
    result = clean_multiline_text(completion.content).strip()
    if not result:
        return _task_finish(
            task, worker_id=worker_id, reason=f"{completion.provider} ({completion.model}) sent an empty reply."
        )
    finished = _task_finish(task, worker_id=worker_id, result=result)
    if persona == Persona.ECHO and finished.status == Task.Status.COMPLETED:
        # Echo's research is remembered, shared, for the tasks that come after.
        memory.store_memory(
            content=f"Task: {task.description}\nResult: {result}",
            context_type="conversation",
            source=TASK_SOURCE,
            agent_id=task.assigned_agent_id,
            task_id=task.pk,
        )
    return finished


def _task_hand_to_change_request(task: Task, *, worker_id: str) -> Task:
    """Forge's work is code: it becomes a change request, drafted and tested by the self-modify loop and proposed on
    the upgrade queue, where a person approves it before anything is merged. The task stays running (Forge busy)
    and is completed or failed with the request's outcome (upgrades.upgrade_request_finish): only a proposed upgrade
    is delivered work, and only delivered work is paid."""
    try:
        with transaction.atomic():
            request = upgrades.upgrade_request_create(instruction=task.description, actor=None, task=task)
            # In the same transaction: a request is never queued for a task this worker no longer holds.
            task = swarm_services.task_wait(
                task_id=task.pk, worker_id=worker_id, holder=upgrades.request_task_claim(request.pk)
            )
    except upgrades.InvalidUpgrade as exc:
        return _task_finish(task, worker_id=worker_id, reason=f"Not a change request Forge can draft: {exc}")
    except swarm_services.TaskWrongState as exc:
        logger.warning("task %s changed before its change request was queued (%s); none is queued", task.pk, exc)
        task.refresh_from_db()
        return task
    return task


def _task_llm_completed(task: Task, data: dict[str, Any]) -> None:
    with transaction.atomic():
        log_event(
            EventType.TOOL_COMPLETED, source=TASK_SOURCE, task_id=task.pk, agent_id=task.assigned_agent_id, data=data
        )


def _task_finish(task: Task, *, worker_id: str, result: str = "", reason: str = "") -> Task:
    # Failed in the admin while the model was thinking, or given back to the queue after this worker stalled
    # past its lease (and perhaps started by another): that decision stands and this answer is dropped.
    if not selectors.task_is_claimed_by(task_id=task.pk, worker_id=worker_id):
        task.refresh_from_db()
        logger.warning("task %s is %s and no longer this worker's; its answer is dropped", task.pk, task.status)
        return task
    try:
        if reason:
            return swarm_services.task_fail(task_id=task.pk, reason=reason)
        return swarm_services.task_complete(task_id=task.pk, result=result)
    except swarm_services.TaskWrongState as exc:  # the same, between the check and the write
        logger.warning("task %s changed while it ran (%s); its answer is dropped", task.pk, exc)
        task.refresh_from_db()
        return task
