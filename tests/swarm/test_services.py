from datetime import timedelta

import pytest
from django.db import IntegrityError
from django.utils import timezone

from apps.events.models import Event, EventType
from apps.swarm.models import Agent, Bid, Task
from apps.swarm.services import (
    DESCRIPTION_MAX,
    BidRejected,
    InvalidTask,
    TaskNotFound,
    TaskWrongState,
    agent_join,
    agent_leave,
    auction_close,
    auctions_close_due,
    bid_submit,
    task_complete,
    task_fail,
    task_post,
    task_start,
)
from tests.factories import AgentFactory, BidFactory, StaffFactory, TaskFactory
from tests.swarm.helpers import after_auction, event_types, events_of


@pytest.fixture
def agents(db):
    """Two idle agents whose bids are predictable: no jitter, one a researcher, one a coder."""
    return {
        "ada": AgentFactory(
            name="ada", description="Research: finds and summarises sources.", keywords=["research"], base_bid_sats=50
        ),
        "bob": AgentFactory(
            name="bob",
            description="Code: writes and fixes programs.",
            capabilities=["coding"],
            keywords=["code"],
            base_bid_sats=40,
        ),
    }


def assigned(task: Task) -> Task:
    return auction_close(task_id=task.pk, now=after_auction(task))


# --- posting and bidding ---


def test_posting_a_task_opens_its_auction_for_auction_seconds(agents, settings):
    settings.AUCTION_SECONDS = 42
    before = timezone.now()
    task = task_post(description="  Research lightning channels  ")
    assert task.status == Task.Status.BIDDING
    assert task.description == "Research lightning channels"
    assert task.auction_closes_at is not None
    assert before + timedelta(seconds=42) <= task.auction_closes_at <= timezone.now() + timedelta(seconds=42)


def test_posting_a_task_logs_created_bidding_and_every_bid(agents):
    task = task_post(description="Research lightning channels")
    assert event_types(task) == [
        EventType.TASK_CREATED,
        EventType.TASK_BIDDING,
        EventType.BID_SUBMITTED,
        EventType.BID_SUBMITTED,
    ]
    bid_events = {e.data["agent"]: e for e in events_of(task, EventType.BID_SUBMITTED)}
    # The researcher matches best and bids its base; the coder more than its base (40), up to three times it.
    amounts = {name: e.data["amount_sats"] for name, e in bid_events.items()}
    assert amounts["ada"] == 50
    assert 50 < amounts["bob"] <= 120
    assert bid_events["ada"].data["rank"] == 1 and bid_events["bob"].data["rank"] == 2
    assert bid_events["ada"].data["match"] > bid_events["bob"].data["match"]
    assert bid_events["ada"].agent_id == str(agents["ada"].pk)
    assert events_of(task, EventType.TASK_BIDDING)[0].data["auction_seconds"] > 0


def test_posting_records_who_posted_the_task(agents):
    user = StaffFactory(username="operator")
    task = task_post(description="Research lightning channels", posted_by=user)
    assert task.posted_by == user
    assert events_of(task, EventType.TASK_CREATED)[0].data["posted_by"] == "operator"


def test_every_idle_agent_bids_and_offline_agents_do_not(agents):
    AgentFactory(name="sleeper", status=Agent.Status.OFFLINE)
    task = task_post(description="Research lightning channels")
    assert set(task.bids.values_list("agent__name", flat=True)) == {"ada", "bob"}


def test_an_agent_busy_running_a_task_does_not_bid_on_new_ones(agents):
    AgentFactory(name="worn-out", status=Agent.Status.BUSY)
    task = task_post(description="Research lightning channels")
    assert set(task.bids.values_list("agent__name", flat=True)) == {"ada", "bob"}


def test_a_task_posted_while_no_agent_is_online_has_no_bids(db):
    Agent.objects.update(status=Agent.Status.OFFLINE)
    task = task_post(description="Research lightning channels")
    assert task.status == Task.Status.BIDDING
    assert not task.bids.exists()


@pytest.mark.parametrize("description", ["", "   ", "\n\t"])
def test_an_empty_description_is_refused(agents, description):
    with pytest.raises(InvalidTask, match="empty"):
        task_post(description=description)
    assert not Task.objects.exists()
    assert not Event.objects.exists()


def test_an_oversized_description_is_refused_with_its_length(agents):
    with pytest.raises(InvalidTask, match=f"{DESCRIPTION_MAX + 1} characters; the limit is {DESCRIPTION_MAX}"):
        task_post(description="x" * (DESCRIPTION_MAX + 1))
    assert not Task.objects.exists()


def test_a_description_of_exactly_the_limit_is_accepted(agents):
    assert task_post(description="x" * DESCRIPTION_MAX).status == Task.Status.BIDDING


def test_an_agent_bids_only_once_per_task(agents):
    task = task_post(description="Research lightning channels")
    with pytest.raises(BidRejected, match="already bid"):
        bid_submit(task=task, agent=agents["ada"], amount_sats=1)
    assert task.bids.filter(agent=agents["ada"]).count() == 1
    assert len(events_of(task, EventType.BID_SUBMITTED)) == 2


def test_the_database_itself_refuses_a_second_bid_by_the_same_agent(agents):
    bid = BidFactory(agent=agents["ada"])
    with pytest.raises(IntegrityError):
        Bid.objects.create(task=bid.task, agent=agents["ada"], amount_sats=5)


def test_a_bid_after_the_auction_closed_is_refused(agents):
    task = TaskFactory(status=Task.Status.BIDDING, auction_closes_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(BidRejected, match="not taking bids"):
        bid_submit(task=task, agent=agents["ada"], amount_sats=10)


def test_a_bid_on_an_assigned_task_is_refused(agents):
    task = assigned(task_post(description="Research lightning channels"))
    newcomer = AgentFactory(name="late")
    with pytest.raises(BidRejected, match="not taking bids"):
        bid_submit(task=task, agent=newcomer, amount_sats=1)


def test_an_offline_agent_cannot_bid(agents):
    task = task_post(description="Research lightning channels")
    sleeper = AgentFactory(name="sleeper", status=Agent.Status.OFFLINE)
    with pytest.raises(BidRejected, match="offline"):
        bid_submit(task=task, agent=sleeper, amount_sats=10)


def test_a_bid_of_zero_sats_is_refused(agents):
    task = task_post(description="Research lightning channels")
    with pytest.raises(BidRejected, match="at least 1 sat"):
        bid_submit(task=task, agent=AgentFactory(name="cheap"), amount_sats=0)


# --- closing auctions ---


def test_the_lowest_bid_wins_and_the_assignment_is_logged(agents):
    task = task_post(description="Research lightning channels")  # ada 50, bob more
    task = assigned(task)
    assert task.status == Task.Status.ASSIGNED
    assert task.assigned_agent == agents["ada"]
    assert task.winning_bid_sats == 50
    assert task.assigned_at is not None
    [event] = events_of(task, EventType.TASK_ASSIGNED)
    assert event.agent_id == str(agents["ada"].pk)
    assert event.data == {"agent": "ada", "amount_sats": 50, "bids": 2}


def test_a_tie_goes_to_the_agent_that_bid_first(db):
    zed = AgentFactory(name="zed", status=Agent.Status.OFFLINE)
    abe = AgentFactory(name="abe", status=Agent.Status.OFFLINE)
    task = task_post(description="Anything at all")
    Agent.objects.update(status=Agent.Status.IDLE)
    zed.refresh_from_db()
    abe.refresh_from_db()
    bid_submit(task=task, agent=zed, amount_sats=30)
    bid_submit(task=task, agent=abe, amount_sats=30)
    assert assigned(task).assigned_agent == zed


def test_a_tie_is_decided_by_bid_time_not_by_insertion_order(agents):
    task = TaskFactory(status=Task.Status.BIDDING, auction_closes_at=timezone.now() + timedelta(seconds=5))
    now = timezone.now()
    BidFactory(task=task, agent=agents["bob"], amount_sats=30, created_at=now)
    BidFactory(task=task, agent=agents["ada"], amount_sats=30, created_at=now - timedelta(milliseconds=5))
    assert assigned(task).assigned_agent == agents["ada"]


def test_an_auction_no_idle_agent_bid_on_fails_the_task_at_once_with_a_reason(agents):
    Agent.objects.update(status=Agent.Status.OFFLINE)
    posted = task_post(description="Research lightning channels")
    AgentFactory(name="latecomer")  # idle, yet it never bid
    task = assigned(posted)
    assert task.status == Task.Status.FAILED
    reason = "No agent bid on this task although 1 agent was idle when its auction closed."
    assert task.failure_reason == reason
    assert task.finished_at is not None
    assert task.auction_extensions == 0
    [event] = events_of(task, EventType.TASK_FAILED)
    assert event.data == {"reason": reason, "auctions": 1}
    assert not events_of(task, EventType.TASK_ASSIGNED)


def test_an_auction_cannot_be_closed_before_it_is_due(agents):
    task = task_post(description="Research lightning channels")
    with pytest.raises(TaskWrongState) as caught:
        auction_close(task_id=task.pk)
    assert caught.value.task_id == task.pk
    task.refresh_from_db()
    assert task.status == Task.Status.BIDDING


def test_an_auction_is_closed_only_once(agents):
    task = assigned(task_post(description="Research lightning channels"))
    with pytest.raises(TaskWrongState) as caught:
        auction_close(task_id=task.pk, now=after_auction(task))
    assert caught.value.status == Task.Status.ASSIGNED
    assert caught.value.expected == (Task.Status.BIDDING,)
    assert "is assigned, expected bidding" in str(caught.value)
    assert len(events_of(task, EventType.TASK_ASSIGNED)) == 1


def test_closing_an_unknown_task_says_it_does_not_exist(db):
    with pytest.raises(TaskNotFound, match="task 999999 does not exist"):
        auction_close(task_id=999999)


def test_closing_due_auctions_assigns_only_those_that_are_due(agents):
    due = [task_post(description=f"Research topic {n}") for n in range(3)]
    Task.objects.filter(pk__in=[t.pk for t in due]).update(auction_closes_at=timezone.now() - timedelta(seconds=1))
    open_ = task_post(description="Research a topic that is still open")
    assert auctions_close_due() == 3
    statuses = dict(Task.objects.values_list("pk", "status"))
    assert [statuses[t.pk] for t in due] == [Task.Status.ASSIGNED] * 3
    assert statuses[open_.pk] == Task.Status.BIDDING
    assert auctions_close_due() == 0


# --- running ---


def test_the_lifecycle_runs_from_pending_to_completed_and_logs_each_step(agents):
    task = assigned(task_post(description="Research lightning channels"))
    task = task_start(task_id=task.pk, worker_id="w1")
    assert task.status == Task.Status.RUNNING
    assert task.attempts == 1
    assert task.claimed_by == "w1"
    assert task.lease_expires_at is not None and task.lease_expires_at > timezone.now()
    agents["ada"].refresh_from_db()
    assert agents["ada"].status == Agent.Status.BUSY
    task = task_complete(task_id=task.pk, result="Channels are bidirectional.")
    assert task.status == Task.Status.COMPLETED
    assert task.result == "Channels are bidirectional."
    assert task.finished_at is not None
    agents["ada"].refresh_from_db()
    assert agents["ada"].status == Agent.Status.IDLE
    assert event_types(task) == [
        EventType.TASK_CREATED,
        EventType.TASK_BIDDING,
        EventType.BID_SUBMITTED,
        EventType.BID_SUBMITTED,
        EventType.TASK_ASSIGNED,
        EventType.TASK_STARTED,
        EventType.TASK_COMPLETED,
    ]
    assert events_of(task, EventType.TASK_STARTED)[0].data == {"worker": "w1", "attempt": 1}
    assert events_of(task, EventType.TASK_COMPLETED)[0].data["result"] == "Channels are bidirectional."


def test_a_busy_agent_stays_busy_while_it_still_runs_another_task(agents):
    first = assigned(task_post(description="Research one"))
    second = assigned(task_post(description="Research two"))
    assert first.assigned_agent == second.assigned_agent == agents["ada"]
    task_start(task_id=first.pk, worker_id="w1")
    task_start(task_id=second.pk, worker_id="w1")
    task_complete(task_id=first.pk, result="done")
    agents["ada"].refresh_from_db()
    assert agents["ada"].status == Agent.Status.BUSY
    task_complete(task_id=second.pk, result="done")
    agents["ada"].refresh_from_db()
    assert agents["ada"].status == Agent.Status.IDLE


def test_a_running_task_fails_with_its_reason_and_frees_its_agent(agents):
    task = task_start(task_id=assigned(task_post(description="Research it")).pk, worker_id="w1")
    task = task_fail(task_id=task.pk, reason="The model ran out of memory.")
    assert task.status == Task.Status.FAILED
    assert task.failure_reason == "The model ran out of memory."
    assert task.lease_expires_at is None
    agents["ada"].refresh_from_db()
    assert agents["ada"].status == Agent.Status.IDLE
    assert events_of(task, EventType.TASK_FAILED)[0].data == {"reason": "The model ran out of memory."}


@pytest.mark.parametrize("status", [Task.Status.PENDING, Task.Status.BIDDING, Task.Status.ASSIGNED])
def test_an_open_task_can_be_failed_in_any_state(db, status):
    task = TaskFactory(status=status)
    assert task_fail(task_id=task.pk, reason="cancelled").status == Task.Status.FAILED


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (Task.Status.BIDDING, lambda pk: task_start(task_id=pk, worker_id="w")),
        (Task.Status.RUNNING, lambda pk: task_start(task_id=pk, worker_id="w")),
        (Task.Status.COMPLETED, lambda pk: task_start(task_id=pk, worker_id="w")),
        (Task.Status.ASSIGNED, lambda pk: task_complete(task_id=pk, result="r")),
        (Task.Status.FAILED, lambda pk: task_complete(task_id=pk, result="r")),
        (Task.Status.COMPLETED, lambda pk: task_fail(task_id=pk, reason="r")),
        (Task.Status.FAILED, lambda pk: task_fail(task_id=pk, reason="r")),
    ],
)
def test_a_transition_from_the_wrong_state_raises_and_changes_nothing(db, status, action):
    task = TaskFactory(status=status)
    events_before = Event.objects.count()
    with pytest.raises(TaskWrongState) as caught:
        action(task.pk)
    assert caught.value.status == status
    task.refresh_from_db()
    assert task.status == status
    assert Event.objects.count() == events_before


@pytest.mark.parametrize(
    "action",
    [
        lambda pk: task_start(task_id=pk, worker_id="w"),
        lambda pk: task_complete(task_id=pk, result="r"),
        lambda pk: task_fail(task_id=pk, reason="r"),
    ],
)
def test_a_transition_of_an_unknown_task_raises_task_not_found(db, action):
    with pytest.raises(TaskNotFound):
        action(424242)


# --- agents ---


def test_an_agent_joins_once_and_leaves_once_with_events(db):
    agent = AgentFactory(name="nova", status=Agent.Status.OFFLINE)
    assert agent_join(agent=agent)
    assert not agent_join(agent=agent)
    agent.refresh_from_db()
    assert agent.status == Agent.Status.IDLE
    assert agent.last_seen is not None
    assert agent_leave(agent=agent)
    assert not agent_leave(agent=agent)
    agent.refresh_from_db()
    assert agent.status == Agent.Status.OFFLINE
    logged = list(Event.objects.filter(agent_id=str(agent.pk)).order_by("id").values_list("event_type", "data"))
    assert logged == [
        (EventType.AGENT_JOINED, {"agent": "nova", "persona": "echo"}),
        (EventType.AGENT_LEFT, {"agent": "nova"}),
    ]
