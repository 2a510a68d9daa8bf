import logging
import random
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from apps.events.models import EventType
from apps.events.services import clean_multiline_text, log_event
from apps.swarm import matching
from apps.swarm.matching import Match
from apps.swarm.models import Agent, Bid, Task

# The worker's log (tasks fail there, mostly): one warning for each task that fails, in task_fail.
logger = logging.getLogger("timmy.worker")
SOURCE = "swarm.coordinator"
DESCRIPTION_MAX = 10_000
OPEN_AUCTIONS_BID_LIMIT = 100


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


def _transition(
    task_id: int, expected: tuple[str, ...], *, where: dict[str, Any] | None = None, **changes: Any
) -> Task:
    """Conditional update: moves the task only if it is still in an expected state (and matches `where`), else
    raises."""
    updated = Task.objects.filter(pk=task_id, status__in=expected, **(where or {})).update(**changes)
    current = Task.objects.select_related("assigned_agent").filter(pk=task_id).first()
    if current is None:
        raise TaskNotFound(f"task {task_id} does not exist")
    if not updated:
        raise TaskWrongState(task_id, current.status, expected)
    return current


def _preview(text: str, length: int = 200) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


# --- agents ---


def persona_bid_amount(agent: Agent, match: Match, rng: random.Random) -> int:
    """The agent's bid on a task it matches as `match` says (apps.swarm.matching): its base price when it is the
    best match, up to base x off_topic_multiplier when it clearly is not, plus jitter."""
    amount = matching.bid_amount(
        base_sats=agent.base_bid_sats, match=match, off_topic_multiplier=agent.off_topic_multiplier
    )
    return max(1, amount + rng.randint(-agent.bid_jitter_sats, agent.bid_jitter_sats))


def agent_join(*, agent: Agent, source: str = SOURCE, rng: random.Random | None = None, bid_now: bool = True) -> bool:
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
    # Tasks posted before the agents came online (before the worker started) would otherwise never get a bid.
    if bid_now:
        agent_bid_open_auctions(agent=agent, rng=rng)
    return True


def agent_bid_open_auctions(*, agent: Agent, rng: random.Random | None = None) -> int:
    """Bid on every open auction this agent has not bid on yet, the oldest first (at most OPEN_AUCTIONS_BID_LIMIT),
    if it is idle and bids on tasks. Returns how many bids it made."""
    bidder = Agent.objects.filter(pk=agent.pk, status=Agent.Status.IDLE, bids_on_tasks=True).first()
    if bidder is None:
        return 0
    rng = rng or random.Random()
    # Past its closing time but not closed yet counts as open: nobody was there to close it (no worker ran), and
    # the first close after this sees the bid instead of failing a task it never gave an agent the chance to take.
    open_auctions = (
        Task.objects.filter(status=Task.Status.BIDDING)
        .exclude(bids__agent=bidder)
        .order_by("id")[:OPEN_AUCTIONS_BID_LIMIT]
    )
    tasks = list(open_auctions)
    # Every description in one batch, before any write: embedding takes a while and holds no lock.
    matches = matching.task_matches([task.description for task in tasks], matching.competitors([bidder]))
    made = 0
    for task, task_match in zip(tasks, matches, strict=True):
        match = task_match[bidder.pk]
        try:
            amount = persona_bid_amount(bidder, match, rng)
            bid_submit(task=task, agent=bidder, amount_sats=amount, match=match, until_closed=True)
        except BidRejected:
            continue  # the auction closed meanwhile, or another process already made this agent bid on it
        made += 1
    return made


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
    if still_running:
        return
    if Agent.objects.filter(pk=agent_id, status=Agent.Status.BUSY).update(status=Agent.Status.IDLE):
        # With several tasks running at once every agent may have been busy when a task was posted.
        agent_bid_open_auctions(agent=Agent.objects.get(pk=agent_id))


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
    # The task is embedded once for all the bidders, and before the transaction: that takes a while.
    bidders = list(Agent.objects.filter(status=Agent.Status.IDLE, bids_on_tasks=True))
    [matches] = matching.task_matches([description], matching.competitors(bidders)) if bidders else [{}]
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
        for agent in bidders:
            match = matches[agent.pk]
            bid_submit(task=task, agent=agent, amount_sats=persona_bid_amount(agent, match, rng), match=match)
    return task


def bid_submit(
    *, task: Task, agent: Agent, amount_sats: int, match: Match | None = None, until_closed: bool = False
) -> Bid:
    """`until_closed`: the auction takes the bid until a worker closes it, even past its closing time. `match`: how
    well the task matched the agent, recorded with the bid and in its event."""
    if amount_sats < 1:
        raise BidRejected("A bid must be at least 1 sat.")
    now = timezone.now()
    with transaction.atomic():
        taking = Task.objects.filter(pk=task.pk, status=Task.Status.BIDDING)
        if not until_closed:
            taking = taking.filter(auction_closes_at__gt=now)
        if not taking.exists():
            raise BidRejected(f"Task {task.pk} is not taking bids.")
        if agent.status == Agent.Status.OFFLINE:
            raise BidRejected(f"Agent {agent.name} is offline.")
        try:
            with transaction.atomic():
                bid = Bid.objects.create(
                    task=task,
                    agent=agent,
                    amount_sats=amount_sats,
                    match=None if match is None else match.similarity,
                    created_at=now,
                )
        except IntegrityError as exc:
            raise BidRejected(f"Agent {agent.name} already bid on task {task.pk}.") from exc
        log_event(
            EventType.BID_SUBMITTED,
            source=SOURCE,
            task_id=task.pk,
            agent_id=agent.pk,
            data={
                "agent": agent.name,
                "amount_sats": amount_sats,
                **({} if match is None else {"match": round(match.similarity, 3), "rank": match.rank}),
            },
        )
    return bid


def _not_closable(task_id: int) -> SwarmError:
    current = Task.objects.filter(pk=task_id).first()
    if current is None:
        return TaskNotFound(f"task {task_id} does not exist")
    return TaskWrongState(task_id, current.status, (Task.Status.BIDDING,))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def auction_close(*, task_id: int, now: datetime | None = None) -> Task:
    """Close a due auction: the lowest bid wins (ties go to the earliest). With no bid, the auction is extended by
    AUCTION_SECONDS while no agent could have bid (none online, or all busy) and AUCTION_MAX_EXTENSIONS allows;
    otherwise the task fails, saying which.

    Safe to race: only one caller's conditional update moves (or extends) the task; the others get TaskWrongState.
    """
    now = now or timezone.now()
    with transaction.atomic():
        task = Task.objects.filter(pk=task_id, status=Task.Status.BIDDING, auction_closes_at__lte=now).first()
        if task is None:
            raise _not_closable(task_id)
        bids = list(
            Bid.objects.filter(task_id=task_id).select_related("agent").order_by("amount_sats", "created_at", "id")
        )
        if not bids:
            return _auction_close_unbid(task=task, now=now)
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


def _auction_close_unbid(*, task: Task, now: datetime) -> Task:
    bidders = Agent.objects.filter(bids_on_tasks=True).aggregate(
        idle=Count("pk", filter=Q(status=Agent.Status.IDLE)),
        busy=Count("pk", filter=Q(status=Agent.Status.BUSY)),
    )
    idle, busy = bidders["idle"], bidders["busy"]
    # Only this round of the auction: a caller that lost the race sees it moved on and gets TaskWrongState.
    this_round = Task.objects.filter(pk=task.pk, status=Task.Status.BIDDING, auction_closes_at=task.auction_closes_at)
    if not idle and task.auction_extensions < settings.AUCTION_MAX_EXTENSIONS:
        why = (
            f"every agent was busy with another task ({_plural(busy, 'agent')} online)"
            if busy
            else "no agent was online to bid (is the worker running?)"
        )
        closes_at = now + timedelta(seconds=settings.AUCTION_SECONDS)
        extension = task.auction_extensions + 1
        if not this_round.update(auction_closes_at=closes_at, auction_extensions=extension):
            raise _not_closable(task.pk)
        log_event(
            EventType.TASK_BIDDING,
            source=SOURCE,
            task_id=task.pk,
            data={
                "extended": True,
                "extension": extension,
                "of": settings.AUCTION_MAX_EXTENSIONS,
                "reason": why,
                "closes_at": closes_at.isoformat(),
            },
        )
        task.auction_closes_at, task.auction_extensions = closes_at, extension
        return task

    auctions = task.auction_extensions + 1
    waited = _plural(max(0, round((now - task.created_at).total_seconds())), "second")
    if idle:
        reason = (
            f"No agent bid on this task although {_plural(idle, 'agent')} {'was' if idle == 1 else 'were'} idle "
            "when its auction closed."
        )
    elif busy:
        reason = (
            f"Every agent was still busy with other tasks after {_plural(auctions, 'auction')} over {waited}; "
            "post the task again when one is free."
        )
    else:
        reason = (
            f"No agent came online to bid in {_plural(auctions, 'auction')} over {waited}: is the worker running? "
            "Start one with `make run` or `python manage.py run_worker`."
        )
    if not this_round.update(status=Task.Status.FAILED, failure_reason=reason, finished_at=now):
        raise _not_closable(task.pk)
    log_event(EventType.TASK_FAILED, source=SOURCE, task_id=task.pk, data={"reason": reason, "auctions": auctions})
    logger.warning("task %s failed: %s", task.pk, reason)
    task.status, task.failure_reason, task.finished_at = Task.Status.FAILED, reason, now
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


def task_release(*, task_id: int, worker_id: str, reason: str) -> bool:
    """Hand a running task back to the queue at once (its worker is stopping): assigned again to the same winner,
    for the next worker to run; the attempt does not count against TASK_MAX_ATTEMPTS. False if the claim was no
    longer this worker's (finished, failed in the admin, or recovered)."""
    with transaction.atomic():
        claim = Task.objects.filter(pk=task_id, status=Task.Status.RUNNING, claimed_by=worker_id)
        agent_id = claim.values_list("assigned_agent_id", flat=True).first()
        if not claim.update(
            status=Task.Status.ASSIGNED, claimed_by="", lease_expires_at=None, attempts=F("attempts") - 1
        ):
            return False
        _agent_release(agent_id)
        log_event(
            EventType.TASK_ASSIGNED,
            source=SOURCE,
            task_id=task_id,
            agent_id=agent_id,
            data={"released": True, "worker": worker_id, "reason": reason},
        )
    return True


def task_wait(*, task_id: int, worker_id: str, holder: str) -> Task:
    """Keep a running task open while its deliverable is made elsewhere (Forge's change request): the claim passes
    from this worker to `holder`, with no lease, so neither stale-lease recovery nor this worker's hand-back on stop
    takes it back. Only task_complete / task_fail with `claimed_by=holder` (or a person, in the admin) end it.

    No event of its own: the caller creates what the task waits on in the same transaction and logs that (a change
    request's `upgrade.requested` names the task)."""
    return _transition(
        task_id, (Task.Status.RUNNING,), where={"claimed_by": worker_id}, claimed_by=holder, lease_expires_at=None
    )


def task_complete(*, task_id: int, result: str, claimed_by: str | None = None) -> Task:
    """`claimed_by`: only if the task is still held by that claim (a change request finishing Forge's task)."""
    now = timezone.now()
    with transaction.atomic():
        task = _transition(
            task_id,
            (Task.Status.RUNNING,),
            where={} if claimed_by is None else {"claimed_by": claimed_by},
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


def task_fail(*, task_id: int, reason: str, claimed_by: str | None = None) -> Task:
    """`claimed_by`: only a running task still held by that claim (see task_complete)."""
    now = timezone.now()
    open_states = tuple(s for s in Task.Status.values if s not in Task.TERMINAL)
    with transaction.atomic():
        task = _transition(
            task_id,
            open_states if claimed_by is None else (Task.Status.RUNNING,),
            where={} if claimed_by is None else {"claimed_by": claimed_by},
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
    logger.warning("task %s failed: %s", task_id, " ".join(reason.split())[:500] or "no reason given")
    return task


def tasks_recover_stale(*, now: datetime | None = None) -> int:
    """Give back tasks whose worker stopped renewing its lease: retried if attempts remain, else failed."""
    # A task waiting on a change request (task_wait) has no lease: it is never stale, its request ends it.
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
                logger.warning("task %s failed: %s", task_id, reason)
        recovered += 1
    return recovered


def agents_bring_online(*, source: str) -> int:
    """The worker hosts the local persona agents: they join when it starts, then bid on the open auctions."""
    # All online before any bids: a bid is priced against the online agents, and the first to join would
    # otherwise price itself as the best match for every task.
    joined = [
        agent
        for agent in Agent.objects.filter(status=Agent.Status.OFFLINE)
        if agent_join(agent=agent, source=source, bid_now=False)
    ]
    for agent in joined:
        agent_bid_open_auctions(agent=agent)
    return len(joined)


def agents_take_offline(*, source: str) -> int:
    return sum(agent_leave(agent=agent, source=source) for agent in Agent.objects.exclude(status=Agent.Status.OFFLINE))
