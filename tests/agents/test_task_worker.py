"""The worker step that runs assigned tasks through the winning persona and the router."""

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from apps.agents import prompts
from apps.agents.services import TASK_SOURCE, task_run
from apps.agents.worker import run_assigned_tasks
from apps.core.services import worker_default_id
from apps.events.models import Event, EventType
from apps.swarm.models import Agent, Task
from apps.swarm.services import TaskWrongState, task_fail, task_release, task_start, tasks_recover_stale
from apps.upgrades.models import UpgradeRequest
from tests.factories import TaskFactory
from tests.swarm.helpers import event_types, events_of


def assigned(agent: Agent, description: str = "Research the history of the Lightning Network") -> Task:
    return TaskFactory(
        description=description,
        status=Task.Status.ASSIGNED,
        assigned_agent=agent,
        winning_bid_sats=80,
        assigned_at=timezone.now(),
    )


def status_of(agent: Agent) -> str:
    return Agent.objects.get(pk=agent.pk).status


def test_the_step_runs_an_assigned_task_to_completed_with_the_reply(personas, ollama):
    task = assigned(personas["echo"])
    assert run_assigned_tasks(timezone.now()) == 1
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED
    assert task.result == "Echo: Research the history of the Lightning Network"
    assert task.claimed_by == worker_default_id()
    assert task.attempts == 1
    assert task.lease_expires_at is None
    assert task.finished_at is not None


def test_the_winning_personas_prompt_and_the_task_go_to_the_model(personas, ollama):
    assigned(personas["quill"], "Write the release notes of the pager fix")
    run_assigned_tasks(timezone.now())
    [sent] = ollama.chats
    assert sent["messages"] == [
        {"role": "system", "content": prompts.PERSONAS["quill"]},
        {"role": "user", "content": "Write the release notes of the pager fix"},
    ]


def test_forges_code_task_becomes_a_change_request_and_waits_on_it_running_with_forge_busy(personas, ollama, settings):
    task = assigned(personas["forge"], "Fix the off-by-one bug in the pager")
    assert run_assigned_tasks(timezone.now()) == 1
    task.refresh_from_db()
    request = UpgradeRequest.objects.get(task=task)
    assert (request.instruction, request.status) == ("Fix the off-by-one bug in the pager", "queued")
    # Not completed (nor paid) until the request proposes an upgrade: held by the request, with no lease to run out.
    assert (task.status, task.result) == (Task.Status.RUNNING, "")
    assert (task.claimed_by, task.lease_expires_at) == (f"change-request {request.pk}", None)
    assert status_of(personas["forge"]) == Agent.Status.BUSY
    assert tasks_recover_stale(now=timezone.now() + timedelta(days=1)) == 0
    assert not task_release(task_id=task.pk, worker_id=worker_default_id(), reason="stopping")
    assert Task.objects.get(pk=task.pk).status == Task.Status.RUNNING
    assert ollama.chats == []  # the self-modify loop asks the model, in its own step
    settings.FORGE_PROPOSES_UPGRADES = False
    assigned(personas["forge"], "Fix the pager again")
    run_assigned_tasks(timezone.now())
    assert ollama.chats[0]["messages"][0]["content"] == prompts.PERSONAS["forge"]


def test_a_task_is_given_what_echo_learned_on_a_similar_earlier_task(personas, ollama):
    assigned(personas["echo"], "Research the history of the Lightning Network")
    run_assigned_tasks(timezone.now())
    assigned(personas["quill"], "Write a short history of the Lightning Network")
    run_assigned_tasks(timezone.now())
    system = ollama.chats[1]["messages"][0]["content"]
    assert system.startswith(prompts.PERSONAS["quill"])
    assert "Similar past tasks and facts" in system
    assert "Result: Echo: Research the history of the Lightning Network" in system


def test_events_are_started_tool_called_tool_completed_completed_in_order(personas, ollama):
    echo = personas["echo"]
    task = assigned(echo)
    run_assigned_tasks(timezone.now())
    # Echo's research is remembered once the task is done.
    assert event_types(task) == ["task.started", "tool.called", "tool.completed", "task.completed", "memory.stored"]
    [called] = events_of(task, EventType.TOOL_CALLED)
    assert (called.source, called.agent_id) == (TASK_SOURCE, str(echo.pk))
    assert called.data == {
        "tool": "llm.complete",
        "agent": "echo",
        "persona": "echo",
        "worker": worker_default_id(),
        "attempt": 1,
    }
    [completed] = events_of(task, EventType.TOOL_COMPLETED)
    assert completed.agent_id == str(echo.pk)
    assert completed.data["ok"] is True
    assert (completed.data["provider"], completed.data["model"]) == ("ollama", "llama3.2")
    assert completed.data["tokens_in"] > 0 and completed.data["tokens_out"] > 0
    assert completed.data["latency_ms"] >= 0
    [done] = events_of(task, EventType.TASK_COMPLETED)
    assert done.data["result"] == "Echo: Research the history of the Lightning Network"


def test_the_agent_is_busy_while_the_model_works_and_idle_after(transactional_db, personas, ollama):
    echo = personas["echo"]
    seen: list[str] = []

    def reply(messages: list[dict[str, Any]]) -> str:
        # On the server's thread, with its own database connection.
        seen.append(status_of(echo))
        connections.close_all()
        return "Done."

    ollama.reply = reply
    assigned(echo)
    assert run_assigned_tasks(timezone.now()) == 1
    assert seen == [Agent.Status.BUSY]
    assert status_of(echo) == Agent.Status.IDLE


def test_with_all_providers_down_the_task_fails_with_the_routers_reason(personas, all_down):
    echo = personas["echo"]
    task = assigned(echo)
    assert run_assigned_tasks(timezone.now()) == 1
    task.refresh_from_db()
    assert task.status == Task.Status.FAILED
    assert task.failure_reason.startswith("No LLM provider answered. local: ")
    assert "; backup: " in task.failure_reason and "500" in task.failure_reason
    assert task.result == ""
    assert status_of(echo) == Agent.Status.IDLE
    assert event_types(task) == ["task.started", "tool.called", "tool.completed", "task.failed"]
    [completed] = events_of(task, EventType.TOOL_COMPLETED)
    assert completed.data["ok"] is False
    assert completed.data["error"] == task.failure_reason
    [failed] = events_of(task, EventType.TASK_FAILED)
    assert failed.data["reason"] == task.failure_reason


def test_an_empty_reply_fails_the_task_rather_than_completing_it_with_nothing(personas, ollama):
    ollama.reply = "   "
    task = assigned(personas["quill"])
    run_assigned_tasks(timezone.now())
    task.refresh_from_db()
    assert task.status == Task.Status.FAILED
    assert task.failure_reason == "ollama (llama3.2) sent an empty reply."


def test_without_assigned_tasks_the_step_finds_no_work(personas, ollama):
    bidding = TaskFactory(status=Task.Status.BIDDING)
    assert run_assigned_tasks(timezone.now()) == 0
    bidding.refresh_from_db()
    assert bidding.status == Task.Status.BIDDING
    assert not ollama.chats


def test_each_call_runs_one_task_the_longest_waiting_first(personas, ollama):
    first = assigned(personas["echo"], "first task")
    second = assigned(personas["quill"], "second task")
    assert run_assigned_tasks(timezone.now()) == 1
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (Task.Status.COMPLETED, Task.Status.ASSIGNED)
    assert run_assigned_tasks(timezone.now()) == 1
    assert run_assigned_tasks(timezone.now()) == 0
    second.refresh_from_db()
    assert second.result == "Echo: second task"
    assert len(ollama.chats) == 2


def test_a_task_already_taken_is_refused_and_never_run_twice(personas, ollama):
    task = assigned(personas["echo"])
    task_run(task_id=task.pk, worker_id="w1")
    with pytest.raises(TaskWrongState):
        task_run(task_id=task.pk, worker_id="w2")
    assert len(ollama.chats) == 1
    assert event_types(task).count("task.started") == 1


def test_two_workers_racing_run_a_task_exactly_once(transactional_db, personas, ollama):
    ollama.mode = "slow"  # the winner is still waiting on the model while the other looks for work
    ollama.delay = 0.3
    task = assigned(personas["echo"])
    barrier = threading.Barrier(2)
    found: list[int] = []

    def worker() -> None:
        try:
            barrier.wait()
            found.append(run_assigned_tasks(timezone.now()))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(found) == [0, 1]
    assert len(ollama.chats) == 1
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED
    assert task.attempts == 1
    assert event_types(task) == ["task.started", "tool.called", "tool.completed", "task.completed", "memory.stored"]


def test_the_lease_is_renewed_while_a_slow_model_answers(transactional_db, personas, ollama, settings):
    settings.TASK_LEASE_SECONDS = 1  # renewed every third of a second
    ollama.mode = "slow"
    ollama.delay = 2.0  # twice the lease
    task = assigned(personas["echo"])
    runner = threading.Thread(target=lambda: (run_assigned_tasks(timezone.now()), connections.close_all()))
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while not Task.objects.filter(pk=task.pk, status=Task.Status.RUNNING).exists():
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.02)
        time.sleep(1.5)  # past the first lease
        assert tasks_recover_stale(now=timezone.now()) == 0
        running = Task.objects.get(pk=task.pk)
        assert running.status == Task.Status.RUNNING
        assert running.lease_expires_at is not None and running.lease_expires_at > timezone.now()
    finally:
        runner.join(timeout=30)
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED
    assert task.attempts == 1


def test_a_task_failed_by_an_operator_while_the_model_works_stays_failed(transactional_db, personas, ollama):
    task = assigned(personas["echo"])

    def operator_fails_it(messages: list[dict[str, Any]]) -> str:
        task_fail(task_id=task.pk, reason="Failed by admin in the admin: wrong question")
        connections.close_all()
        return "too late"

    ollama.reply = operator_fails_it
    assert run_assigned_tasks(timezone.now()) == 1
    task.refresh_from_db()
    assert task.status == Task.Status.FAILED
    assert task.failure_reason == "Failed by admin in the admin: wrong question"
    assert task.result == ""
    assert not Event.objects.filter(event_type=EventType.TASK_COMPLETED).exists()
    assert status_of(personas["echo"]) == Agent.Status.IDLE


def test_a_worker_that_lost_its_lease_does_not_finish_the_task_another_worker_took_over(
    transactional_db, personas, ollama
):
    task = assigned(personas["echo"])

    def stalled_past_the_lease(messages: list[dict[str, Any]]) -> str:
        Task.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
        tasks_recover_stale()
        task_start(task_id=task.pk, worker_id="w2")
        connections.close_all()
        return "stale answer"

    ollama.reply = stalled_past_the_lease
    task_run(task_id=task.pk, worker_id="w1")
    task.refresh_from_db()
    assert (task.status, task.claimed_by, task.attempts, task.result) == (Task.Status.RUNNING, "w2", 2, "")
