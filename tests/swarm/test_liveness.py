"""Swarm liveness: a task posted while no agent could bid waits for one instead of failing (issue 14)."""

import random
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.events.models import EventType
from apps.swarm.models import Agent, Task
from apps.swarm.services import (
    TaskWrongState,
    agent_bid_open_auctions,
    agent_join,
    agents_bring_online,
    auction_close,
    auctions_close_due,
    bid_submit,
    task_complete,
    task_fail,
    task_post,
    task_start,
)
from tests.factories import AgentFactory, TaskFactory
from tests.swarm.helpers import after_auction, events_of

NO_AGENT_ONLINE = "no agent was online to bid (is the worker running?)"


@pytest.fixture
def nobody_online(db, settings):
    """The persona agents as they are before any worker started: all offline."""
    settings.AUCTION_SECONDS = 15
    settings.AUCTION_MAX_EXTENSIONS = 3
    Agent.objects.update(status=Agent.Status.OFFLINE)


def close(task: Task) -> Task:
    return auction_close(task_id=task.pk, now=after_auction(task))


def bidders(task: Task) -> set[str]:
    return set(task.bids.values_list("agent__name", flat=True))


# --- no agent online: extended, then the first agent to come online wins ---


def test_an_auction_closing_while_no_agent_is_online_is_extended_with_an_event_saying_why(nobody_online):
    posted = task_post(description="Research lightning channels")
    closed_at = after_auction(posted)
    task = auction_close(task_id=posted.pk, now=closed_at)
    assert task.status == Task.Status.BIDDING
    assert task.auction_extensions == 1
    assert task.auction_closes_at == closed_at + timedelta(seconds=15)
    task.refresh_from_db()
    assert (task.status, task.auction_extensions) == (Task.Status.BIDDING, 1)
    assert task.auction_closes_at == closed_at + timedelta(seconds=15)
    extension = events_of(task, EventType.TASK_BIDDING)[-1]
    assert extension.data == {
        "extended": True,
        "extension": 1,
        "of": 3,
        "reason": NO_AGENT_ONLINE,
        "closes_at": task.auction_closes_at.isoformat(),
    }
    assert not events_of(task, EventType.TASK_FAILED)


def test_agents_coming_online_bid_at_once_on_an_extended_auction_which_then_closes_with_the_winner(nobody_online):
    task = close(task_post(description="Research lightning channels"))
    assert task.status == Task.Status.BIDDING
    # The worker starts: it brings the persona agents online.
    agents_bring_online(source="worker:w1")
    assert bidders(task) == {"echo", "forge", "seer", "quill", "helm", "mace"}  # not Timmy, who orchestrates
    task = close(task)
    assert task.status == Task.Status.ASSIGNED
    assert task.assigned_agent is not None and task.assigned_agent.name == "echo"  # the researcher bids lowest
    assert task.auction_extensions == 1
    [assignment] = events_of(task, EventType.TASK_ASSIGNED)
    assert assignment.data["bids"] == 6


def test_an_agent_coming_online_bids_on_an_auction_that_has_not_closed_yet(nobody_online):
    task = task_post(description="Research lightning channels")
    echo = Agent.objects.get(name="echo")
    assert agent_join(agent=echo, source="worker:w1", rng=random.Random(1))
    [bid] = task.bids.all()
    assert bid.agent == echo
    [event] = events_of(task, EventType.BID_SUBMITTED)
    # Alone online, echo is the best match there is: rank 1.
    assert event.data == {"agent": "echo", "amount_sats": bid.amount_sats, "match": bid.match, "rank": 1}
    assert close(task).assigned_agent == echo


def test_an_agent_coming_online_bids_on_an_auction_past_its_time_that_no_worker_closed(nobody_online):
    # Posted while no worker ran: nobody closed it, so the agents of the first worker to start still get to bid.
    overdue = task_post(description="Research lightning channels")
    Task.objects.filter(pk=overdue.pk).update(auction_closes_at=timezone.now() - timedelta(minutes=5))
    echo = Agent.objects.get(name="echo")
    assert agent_join(agent=echo)
    assert bidders(overdue) == {"echo"}
    assert close(overdue).assigned_agent == echo


def test_an_agent_coming_online_leaves_closed_auctions_and_those_it_bid_on_alone(nobody_online):
    nova = AgentFactory(name="nova", status=Agent.Status.OFFLINE)
    assigned = TaskFactory(status=Task.Status.ASSIGNED, auction_closes_at=timezone.now() + timedelta(seconds=30))
    already = task_post(description="Research one")
    Agent.objects.filter(pk=nova.pk).update(status=Agent.Status.IDLE)
    bid_submit(task=already, agent=Agent.objects.get(pk=nova.pk), amount_sats=7)
    Agent.objects.filter(pk=nova.pk).update(status=Agent.Status.OFFLINE)
    fresh = task_post(description="Research two")

    assert agent_join(agent=nova)
    assert bidders(assigned) == set()
    assert list(already.bids.values_list("agent__name", "amount_sats")) == [("nova", 7)]
    assert len(events_of(already, EventType.BID_SUBMITTED)) == 1
    assert bidders(fresh) == {"nova"}


def test_an_agent_that_does_not_bid_on_tasks_stays_out_of_open_auctions_when_it_comes_online(nobody_online):
    task = task_post(description="Research lightning channels")
    assert agent_join(agent=Agent.objects.get(name="timmy"))
    assert bidders(task) == set()


def test_an_agent_coming_online_bids_on_the_100_oldest_open_auctions_only(nobody_online):
    closes = timezone.now() + timedelta(minutes=5)
    tasks = [TaskFactory(status=Task.Status.BIDDING, auction_closes_at=closes) for _ in range(101)]
    nova = AgentFactory(name="nova", status=Agent.Status.OFFLINE)
    assert agent_join(agent=nova)
    bid_on = set(nova.bids.values_list("task_id", flat=True))
    assert bid_on == {task.pk for task in tasks[:100]}
    # What is left waits for the next time it is free (or the auction's extension).
    assert agent_bid_open_auctions(agent=nova) == 1
    assert nova.bids.count() == 101


# --- extensions run out, or agents were idle ---


def test_when_the_extensions_run_out_the_task_fails_saying_no_agent_came_online(nobody_online, settings):
    settings.AUCTION_MAX_EXTENSIONS = 2
    task = task_post(description="Research lightning channels")
    task = close(close(task))
    assert (task.status, task.auction_extensions) == (Task.Status.BIDDING, 2)
    now = after_auction(task)
    task = auction_close(task_id=task.pk, now=now)
    assert task.status == Task.Status.FAILED
    waited = round((now - task.created_at).total_seconds())
    assert waited >= 30
    reason = (
        f"No agent came online to bid in 3 auctions over {waited} seconds: is the worker running? "
        "Start one with `make run` or `python manage.py run_worker`."
    )
    task.refresh_from_db()
    assert task.status == Task.Status.FAILED
    assert task.failure_reason == reason
    assert task.finished_at == now
    assert [e.data.get("extension") for e in events_of(task, EventType.TASK_BIDDING)] == [None, 1, 2]
    [failed] = events_of(task, EventType.TASK_FAILED)
    assert failed.data == {"reason": reason, "auctions": 3}


def test_with_no_extensions_allowed_a_task_no_agent_could_bid_on_fails_at_the_first_close(nobody_online, settings):
    settings.AUCTION_MAX_EXTENSIONS = 0
    task = close(task_post(description="Research lightning channels"))
    assert task.status == Task.Status.FAILED
    assert task.failure_reason.startswith("No agent came online to bid in 1 auction over ")


def test_idle_agents_online_that_did_not_bid_fail_the_task_at_once_even_with_extensions_left(nobody_online):
    task = task_post(description="Research lightning channels")
    # Idle, yet they never bid (they were marked idle without coming online through agent_join).
    Agent.objects.filter(name__in=["echo", "forge"]).update(status=Agent.Status.IDLE)
    task = close(task)
    assert task.status == Task.Status.FAILED
    assert task.auction_extensions == 0
    assert task.failure_reason == "No agent bid on this task although 2 agents were idle when its auction closed."


# --- every agent busy (several tasks running at once) ---


def test_an_auction_closing_while_every_agent_is_busy_is_extended_saying_so(nobody_online):
    AgentFactory(name="ada", status=Agent.Status.BUSY)
    AgentFactory(name="bob", status=Agent.Status.BUSY)
    task = task_post(description="Research lightning channels")
    assert bidders(task) == set()
    task = close(task)
    assert (task.status, task.auction_extensions) == (Task.Status.BIDDING, 1)
    extension = events_of(task, EventType.TASK_BIDDING)[-1]
    assert extension.data["reason"] == "every agent was busy with another task (2 agents online)"


def test_busy_agents_that_stay_busy_fail_the_task_when_the_extensions_run_out(nobody_online, settings):
    settings.AUCTION_MAX_EXTENSIONS = 1
    AgentFactory(name="ada", status=Agent.Status.BUSY)
    task = close(close(task_post(description="Research lightning channels")))
    assert task.status == Task.Status.FAILED
    assert task.failure_reason.startswith("Every agent was still busy with other tasks after 2 auctions over ")
    assert task.failure_reason.endswith("; post the task again when one is free.")


@pytest.mark.parametrize(
    "finish",
    [
        lambda pk: task_complete(task_id=pk, result="Channels are bidirectional."),
        lambda pk: task_fail(task_id=pk, reason="The model ran out of memory."),
    ],
    ids=["completed", "failed"],
)
def test_an_agent_that_finishes_its_task_bids_at_once_on_auctions_opened_while_it_was_busy(nobody_online, finish):
    ada = AgentFactory(name="ada", keywords=["research"], base_bid_sats=50)
    first = close(task_post(description="Research one"))
    task_start(task_id=first.pk, worker_id="w1")
    waiting = task_post(description="Research two")
    assert bidders(waiting) == set()  # ada was busy
    finish(first.pk)
    ada.refresh_from_db()
    assert ada.status == Agent.Status.IDLE
    assert list(waiting.bids.values_list("agent__name", "amount_sats")) == [("ada", 50)]
    assert close(waiting).assigned_agent == ada


def test_an_agent_still_running_another_task_does_not_bid_yet(nobody_online):
    ada = AgentFactory(name="ada")
    first = close(task_post(description="Research one"))
    second = close(task_post(description="Research two"))
    task_start(task_id=first.pk, worker_id="w1")
    task_start(task_id=second.pk, worker_id="w2")
    waiting = task_post(description="Research three")
    task_complete(task_id=first.pk, result="done")
    assert bidders(waiting) == set()
    task_complete(task_id=second.pk, result="done")
    assert bidders(waiting) == {ada.name}


# --- several workers closing the same auctions ---


def test_an_auction_is_extended_once_when_two_workers_close_it_at_the_same_moment(nobody_online):
    task = task_post(description="Research lightning channels")
    now = after_auction(task)
    auction_close(task_id=task.pk, now=now)
    with pytest.raises(TaskWrongState) as caught:
        auction_close(task_id=task.pk, now=now)
    assert caught.value.status == Task.Status.BIDDING
    task.refresh_from_db()
    assert task.auction_extensions == 1
    assert len(events_of(task, EventType.TASK_BIDDING)) == 2  # opened, extended once


def test_closing_due_auctions_counts_an_extension_as_handled(nobody_online):
    due = task_post(description="Research lightning channels")
    Task.objects.filter(pk=due.pk).update(auction_closes_at=timezone.now() - timedelta(seconds=1))
    assert auctions_close_due() == 1
    due.refresh_from_db()
    assert (due.status, due.auction_extensions) == (Task.Status.BIDDING, 1)
    assert auctions_close_due() == 0  # not due again until the extension runs out
