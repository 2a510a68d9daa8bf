from datetime import timedelta

import pytest
from django.utils import timezone

from apps.events.models import EventType
from apps.swarm import worker
from apps.swarm.models import Agent, Task
from apps.swarm.services import task_lease_renew, task_start, tasks_recover_stale
from tests.factories import AgentFactory, TaskFactory
from tests.swarm.helpers import events_of


@pytest.fixture
def running(db):
    """A task that worker w1 started and then stopped renewing: its lease ran out a second ago."""
    agent = AgentFactory(name="ada")
    task = TaskFactory(status=Task.Status.ASSIGNED, assigned_agent=agent, winning_bid_sats=50)
    task_start(task_id=task.pk, worker_id="w1")
    Task.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    task.refresh_from_db()
    return task


def test_a_task_whose_worker_died_goes_back_to_assigned_with_a_recovered_event(running, settings):
    settings.TASK_MAX_ATTEMPTS = 3
    assert tasks_recover_stale() == 1
    running.refresh_from_db()
    assert running.status == Task.Status.ASSIGNED
    assert running.claimed_by == ""
    assert running.lease_expires_at is None
    assert running.assigned_agent is not None
    assert running.assigned_agent.status == Agent.Status.IDLE
    [event] = events_of(running, EventType.TASK_ASSIGNED)
    assert event.data["recovered"] is True
    assert "worker w1 stopped renewing its lease" in event.data["reason"]
    assert event.data["attempts"] == 1


def test_a_recovered_task_can_be_started_again_and_counts_its_attempts(running):
    tasks_recover_stale()
    again = task_start(task_id=running.pk, worker_id="w2")
    assert again.status == Task.Status.RUNNING
    assert again.attempts == 2
    assert again.claimed_by == "w2"


def test_a_task_that_used_up_its_attempts_fails_with_the_reason(running, settings):
    settings.TASK_MAX_ATTEMPTS = 1
    assert tasks_recover_stale() == 1
    running.refresh_from_db()
    assert running.status == Task.Status.FAILED
    assert running.failure_reason == "worker w1 stopped renewing its lease after 1 attempts"
    assert running.finished_at is not None
    assert running.assigned_agent is not None
    assert running.assigned_agent.status == Agent.Status.IDLE
    [event] = events_of(running, EventType.TASK_FAILED)
    assert event.data == {"recovered": True, "reason": running.failure_reason}


def test_a_task_whose_lease_is_still_valid_is_left_running(running):
    Task.objects.filter(pk=running.pk).update(lease_expires_at=timezone.now() + timedelta(seconds=60))
    assert tasks_recover_stale() == 0
    running.refresh_from_db()
    assert running.status == Task.Status.RUNNING
    assert running.claimed_by == "w1"


def test_the_worker_step_recovers_stale_tasks(running):
    assert worker.recover_stale_tasks(timezone.now()) == 1
    running.refresh_from_db()
    assert running.status == Task.Status.ASSIGNED


def test_the_recovery_is_judged_at_the_time_it_is_given(running):
    assert worker.recover_stale_tasks(timezone.now() - timedelta(seconds=10)) == 0
    running.refresh_from_db()
    assert running.status == Task.Status.RUNNING


def test_a_worker_that_renews_its_lease_keeps_its_task(running, settings):
    assert task_lease_renew(task_id=running.pk, worker_id="w1", lease_seconds=60)
    assert tasks_recover_stale() == 0
    running.refresh_from_db()
    assert running.status == Task.Status.RUNNING


def test_only_the_worker_running_a_task_can_renew_its_lease(running):
    assert not task_lease_renew(task_id=running.pk, worker_id="w2", lease_seconds=60)
    assert tasks_recover_stale() == 1
