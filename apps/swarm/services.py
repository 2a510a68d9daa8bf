import random
import re
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from apps.events.models import EventType
from apps.events.services import clean_multiline_text, log_event
from apps.swarm.models import Agent, Bid, Task

SOURCE = "swarm.coordinator"
DESCRIPTION_MAX = 10_000
NO_BIDS_REASON = "No agent bid on this task before its auction closed (are the agents online? is the worker running?)."


class SwarmError(Exception):
    pass


class InvalidTask(SwarmError):
    pass


class TaskNotFound(SwarmError):
    pass


class TaskWrongState(SwarmError):
    def __init__(self, task_id: int, status: str, expected: tuple[str, ...]) -> None:
        self.task_id, self.status, self.expected = task_id, status, expected
        super().__init__(f"task {task_id} is {status}, expected {' or '.join(expected)}")


class BidRejected(SwarmError):
    pass


def _transition(task_id: int, expected: tuple[str, ...], **changes: Any) -> Task:
    """Conditional update: moves the task only if it is still in an expected state, else raises."""
    updated = Task.objects.filter(pk=task_id, status__in=expected).update(**changes)
    current = Task.objects.select_related("assigned_agent").filter(pk=task_id).first()
    if current is None:
        raise TaskNotFound(f"task {task_id} does not exist")
    if not updated:
        raise TaskWrongState(task_id, current.status, expected)
    return current


def _preview(text: str, length: int = 200) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


# --- agents ---


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def persona_bid_amount(agent: Agent, description: str, rng: random.Random) -> int:
    # A keyword matches the start of a word ("summar" matches "summarise"); "look up" matches the phrase.
    text = " " + _words(description)
    keywords = [_words(keyword) for keyword in agent.keywords]
    matches = any(f" {keyword}" in text for keyword in keywords if keyword)
    base = agent.base_bid_sats if matches else agent.base_bid_sats * agent.off_topic_multiplier
    return max(1, base + rng.randint(-agent.bid_jitter_sats, agent.bid_jitter_sats))


def agent_join(*, agent: Agent, source: str = SOURCE) -> bool:
    now = timezone.now()
    with transaction.atomic():
        if not Agent.objects.filter(pk=agent.pk, status=Agent.Status.OFFLINE).update(
            status=Agent.Status.IDLE, last_seen=now
        ):
            return False
        log_event(
            EventType.AGENT_JOINED,
            source=source,
            agent_id=agent.pk,
            data={"agent": agent.name, "persona": agent.persona},
        )
    agent.status = Agent.Status.IDLE
    return True


def agent_leave(*, agent: Agent, source: str = SOURCE) -> bool:
    with transaction.atomic():
        if (
            not Agent.objects.filter(pk=agent.pk)
            .exclude(status=Agent.Status.OFFLINE)
            .update(status=Agent.Status.OFFLINE, last_seen=timezone.now())
        ):
            return False
        log_event(EventType.AGENT_LEFT, source=source, agent_id=agent.pk, data={"agent": agent.name})
    agent.status = Agent.Status.OFFLINE
    return True


def agents_touch(*, agent_ids: list[int]) -> None:
    Agent.objects.filter(pk__in=agent_ids).exclude(status=Agent.Status.OFFLINE).update(last_seen=timezone.now())


def _agent_release(agent_id: int | None) -> None:
    if agent_id is None:
        return
    still_running = Task.objects.filter(assigned_agent_id=agent_id, status=Task.Status.RUNNING).exists()
    if not still_running:
        Agent.objects.filter(pk=agent_id, status=Agent.Status.BUSY).update(status=Agent.Status.IDLE)


# --- tasks and auctions ---


def task_post(
    *,
    description: str,
    posted_by: User | AnonymousUser | None = None,
    auction_seconds: int | None = None,
    rng: random.Random | None = None,
) -> Task:
    """Create a task, open its auction and collect a bid from every idle agent."""
    # Shown on pages and sent to models: no terminal escapes or control characters, whoever posted it.
    description = clean_multiline_text(description).strip()
    if not description:
        raise InvalidTask("The task description is empty.")
    if len(description) > DESCRIPTION_MAX:
        raise InvalidTask(f"The task description is {len(description)} characters; the limit is {DESCRIPTION_MAX}.")
    seconds = settings.AUCTION_SECONDS if auction_seconds is None else auction_seconds
    user = posted_by if posted_by is not None and posted_by.is_authenticated else None
    rng = rng or random.Random()
    with transaction.atomic():
        task = Task.objects.create(description=description, posted_by=user)
        log_event(
            EventType.TASK_CREATED,
            source=SOURCE,
            task_id=task.pk,
            data={"description": _preview(description), "posted_by": user.get_username() if user else None},
        )
        task = _transition(
            task.pk,
            (Task.Status.PENDING,),
            status=Task.Status.BIDDING,
            auction_closes_at=timezone.now() + timedelta(seconds=seconds),
        )
        log_event(
            EventType.TASK_BIDDING,
            source=SOURCE,
            task_id=task.pk,
            data={"auction_seconds": seconds, "closes_at": task.auction_closes_at.isoformat()},  # type: ignore[union-attr]
        )
        bidders = Agent.objects.filter(status=Agent.Status.IDLE, bids_on_tasks=True)
        for agent in bidders:
            bid_submit(task=task, agent=agent, amount_sats=persona_bid_amount(agent, description, rng))
    return task


def bid_submit(*, task: Task, agent: Agent, amount_sats: int) -> Bid:
    if amount_sats < 1:
        raise BidRejected("A bid must be at least 1 sat.")
    now = timezone.now()
    with transaction.atomic():
        if not Task.objects.filter(pk=task.pk, status=Task.Status.BIDDING, auction_closes_at__gt=now).exists():
            raise BidRejected(f"Task {task.pk} is not taking bids.")
        if agent.status == Agent.Status.OFFLINE:
            raise BidRejected(f"Agent {agent.name} is offline.")
        try:
            with transaction.atomic():
                bid = Bid.objects.create(task=task, agent=agent, amount_sats=amount_sats, created_at=now)
        except IntegrityError as exc:
            raise BidRejected(f"Agent {agent.name} already bid on task {task.pk}.") from exc
        log_event(
            EventType.BID_SUBMITTED,
            source=SOURCE,
            task_id=task.pk,
            agent_id=agent.pk,
            data={"agent": agent.name, "amount_sats": amount_sats},
        )
    return bid


def auction_close(*, task_id: int, now: datetime | None = None) -> Task:
    """Close a due auction: the lowest bid wins (ties go to the earliest); no bids fails the task.

    Safe to race: only one caller's conditional update moves the task; the others get TaskWrongState.
    """
    now = now or timezone.now()
    with transaction.atomic():
        due = Task.objects.filter(pk=task_id, status=Task.Status.BIDDING, auction_closes_at__lte=now)
        if not due.exists():
            current = Task.objects.filter(pk=task_id).first()
            if current is None:
                raise TaskNotFound(f"task {task_id} does not exist")
            raise TaskWrongState(task_id, current.status, (Task.Status.BIDDING,))
        bids = list(
            Bid.objects.filter(task_id=task_id).select_related("agent").order_by("amount_sats", "created_at", "id")
        )
        if not bids:
            task = _transition(
                task_id,
                (Task.Status.BIDDING,),
                status=Task.Status.FAILED,
                failure_reason=NO_BIDS_REASON,
                finished_at=now,
            )
            log_event(EventType.TASK_FAILED, source=SOURCE, task_id=task_id, data={"reason": NO_BIDS_REASON})
            return task
        winner = bids[0]
        task = _transition(
            task_id,
            (Task.Status.BIDDING,),
            status=Task.Status.ASSIGNED,
            assigned_agent=winner.agent,
            winning_bid_sats=winner.amount_sats,
            assigned_at=now,
        )
        log_event(
            EventType.TASK_ASSIGNED,
            source=SOURCE,
            task_id=task_id,
            agent_id=winner.agent_id,
            data={"agent": winner.agent.name, "amount_sats": winner.amount_sats, "bids": len(bids)},
        )
    return task


def auctions_close_due(*, now: datetime | None = None, limit: int = 100) -> int:
    now = now or timezone.now()
    due_ids = list(
        Task.objects.filter(status=Task.Status.BIDDING, auction_closes_at__lte=now)
        .order_by("auction_closes_at", "id")
        .values_list("id", flat=True)[:limit]
    )
    closed = 0
    for task_id in due_ids:
        try:
            auction_close(task_id=task_id, now=now)
        except TaskWrongState:
            continue  # another worker closed it first
        closed += 1
    return closed


def task_start(*, task_id: int, worker_id: str, lease_seconds: int | None = None) -> Task:
    now = timezone.now()
    lease = settings.TASK_LEASE_SECONDS if lease_seconds is None else lease_seconds
    with transaction.atomic():
        task = _transition(
            task_id,
            (Task.Status.ASSIGNED,),
            status=Task.Status.RUNNING,
            claimed_by=worker_id,
            lease_expires_at=now + timedelta(seconds=lease),
            started_at=now,
            attempts=F("attempts") + 1,
        )
        if task.assigned_agent_id is not None:
            Agent.objects.filter(pk=task.assigned_agent_id).update(status=Agent.Status.BUSY, last_seen=now)
        log_event(
            EventType.TASK_STARTED,
            source=SOURCE,
            task_id=task_id,
            agent_id=task.assigned_agent_id,
            data={"worker": worker_id, "attempt": task.attempts},
        )
    return task


def task_lease_renew(*, task_id: int, worker_id: str, lease_seconds: int | None = None) -> bool:
    lease = settings.TASK_LEASE_SECONDS if lease_seconds is None else lease_seconds
    return bool(
        Task.objects.filter(pk=task_id, status=Task.Status.RUNNING, claimed_by=worker_id).update(
            lease_expires_at=timezone.now() + timedelta(seconds=lease)
        )
    )


def task_complete(*, task_id: int, result: str) -> Task:
    now = timezone.now()
    with transaction.atomic():
        task = _transition(
            task_id,
            (Task.Status.RUNNING,),
            status=Task.Status.COMPLETED,
            result=result,
            finished_at=now,
            lease_expires_at=None,
        )
        _agent_release(task.assigned_agent_id)
        log_event(
            EventType.TASK_COMPLETED,
            source=SOURCE,
            task_id=task_id,
            agent_id=task.assigned_agent_id,
            data={"result": _preview(result), "winning_bid_sats": task.winning_bid_sats},
        )
    return task


def task_fail(*, task_id: int, reason: str) -> Task:
    now = timezone.now()
    open_states = tuple(s for s in Task.Status.values if s not in Task.TERMINAL)
    with transaction.atomic():
        task = _transition(
            task_id,
            open_states,
            status=Task.Status.FAILED,
            failure_reason=reason,
            finished_at=now,
            lease_expires_at=None,
        )
        _agent_release(task.assigned_agent_id)
        log_event(
            EventType.TASK_FAILED,
            source=SOURCE,
            task_id=task_id,
            agent_id=task.assigned_agent_id,
            data={"reason": _preview(reason, 500)},
        )
    return task


def tasks_recover_stale(*, now: datetime | None = None) -> int:
    """Give back tasks whose worker stopped renewing its lease: retried if attempts remain, else failed."""
    now = now or timezone.now()
    stale = list(
        Task.objects.filter(status=Task.Status.RUNNING, lease_expires_at__lt=now).values_list(
            "id", "claimed_by", "attempts", "assigned_agent_id"
        )[:100]
    )
    recovered = 0
    for task_id, worker, attempts, agent_id in stale:
        why = f"worker {worker or '?'} stopped renewing its lease"
        with transaction.atomic():
            claim = Task.objects.filter(pk=task_id, status=Task.Status.RUNNING, lease_expires_at__lt=now)
            if attempts < settings.TASK_MAX_ATTEMPTS:
                if not claim.update(status=Task.Status.ASSIGNED, claimed_by="", lease_expires_at=None):
                    continue
                _agent_release(agent_id)
                log_event(
                    EventType.TASK_ASSIGNED,
                    source=SOURCE,
                    task_id=task_id,
                    agent_id=agent_id,
                    data={"recovered": True, "reason": f"{why}; will retry", "attempts": attempts},
                )
            else:
                reason = f"{why} after {attempts} attempts"
                if not claim.update(
                    status=Task.Status.FAILED,
                    failure_reason=reason,
                    finished_at=now,
                    claimed_by="",
                    lease_expires_at=None,
                ):
                    continue
                _agent_release(agent_id)
                log_event(
                    EventType.TASK_FAILED,
                    source=SOURCE,
                    task_id=task_id,
                    agent_id=agent_id,
                    data={"recovered": True, "reason": reason},
                )
        recovered += 1
    return recovered


def agents_bring_online(*, source: str) -> int:
    """The worker hosts the local persona agents: they join when it starts."""
    return sum(agent_join(agent=agent, source=source) for agent in Agent.objects.filter(status=Agent.Status.OFFLINE))


def agents_take_offline(*, source: str) -> int:
    return sum(agent_leave(agent=agent, source=source) for agent in Agent.objects.exclude(status=Agent.Status.OFFLINE))
