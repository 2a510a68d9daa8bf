"""Real worker processes with a slow model: the loop keeps its rhythm, and no task is lost or run twice to timing."""

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from apps.core.models import WorkerHeartbeat
from apps.events.models import Event, EventType
from apps.ledger.models import LedgerEntry
from apps.providers.models import Provider
from apps.swarm.models import Agent, Task
from apps.swarm.services import task_post
from tests.factories import AgentFactory, TaskFactory
from tests.ledger.helpers import fund_wallet
from tests.llm_servers import OllamaServer
from tests.providers.factories import ProviderFactory

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class WorkerProcess:
    def __init__(self, worker_id: str, env: dict[str, str]) -> None:
        self.worker_id = worker_id
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "run_worker", "--worker-id", worker_id],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout = self.stderr = ""

    def finish(self, timeout: float = 30) -> int:
        self.stdout, self.stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


@pytest.fixture
def slow_model(transactional_db: None) -> Iterator[OllamaServer]:
    """The only provider: Ollama's protocol, answering each call after `delay` seconds."""
    with OllamaServer(mode="slow", delay=8) as server:
        ProviderFactory(
            name="ollama",
            kind=Provider.Kind.OLLAMA,
            base_url=server.url,
            model=server.models[0],
            priority=1,
            read_timeout_seconds=60,
            # Set as an operator would in the admin, so the router does not ask /api/show (slow here too).
            context_tokens=4096,
        )
        yield server


@pytest.fixture
def workers(subprocess_env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(worker_id: str, **env: str) -> WorkerProcess:
        process = WorkerProcess(worker_id, {**subprocess_env, "PRELOAD_MODELS": "0", **env})
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def online(agent: Agent) -> bool:
    return Agent.objects.get(pk=agent.pk).status != Agent.Status.OFFLINE


def status(task: Task) -> str:
    return Task.objects.get(pk=task.pk).status


def test_a_worker_closes_auctions_on_time_while_a_slow_model_runs_its_tasks(slow_model, workers):
    # Two agents: the one that wins the first task is busy with it when the second is posted.
    agent = AgentFactory(name="ada", status=Agent.Status.OFFLINE)
    AgentFactory(name="bob", status=Agent.Status.OFFLINE)
    worker = workers("pool-1", WORKER_CONCURRENCY="2")
    wait_for(lambda: online(agent), 30, "the agent to come online")

    first = task_post(description="sum the first list", auction_seconds=1)
    wait_for(lambda: status(first) == Task.Status.RUNNING, 10, "the first task to run")
    second = task_post(description="sum the second list", auction_seconds=1)
    wait_for(lambda: status(second) != Task.Status.BIDDING, 10, "the second auction to close")

    second.refresh_from_db()
    first.refresh_from_db()
    assert second.assigned_at is not None and second.auction_closes_at is not None
    # Closed within about the loop's poll (1 s) of its due time, far sooner than the model's 8 s, while the model
    # was still busy with the first task.
    assert (second.assigned_at - second.auction_closes_at).total_seconds() < 3
    assert first.status == Task.Status.RUNNING
    # And run beside it rather than after it.
    wait_for(lambda: status(second) == Task.Status.RUNNING, 5, "the second task to run")
    assert status(first) == Task.Status.RUNNING
    wait_for(lambda: status(first) == status(second) == Task.Status.COMPLETED, 30, "both tasks to complete")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.finish() == 0, worker.stderr


def test_a_task_posted_before_any_worker_runs_completes_once_one_starts(slow_model, workers, settings):
    slow_model.delay = 0.5
    AgentFactory(name="ada", status=Agent.Status.OFFLINE)
    task = task_post(description="write a haiku", auction_seconds=1)
    time.sleep(1.5)  # its auction is over, and nobody was there to close it
    workers("late")
    wait_for(lambda: status(task) in Task.TERMINAL, 30, "the task to finish")
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED, task.failure_reason
    assert task.assigned_agent is not None and task.assigned_agent.name == "ada"


def test_sigterm_during_a_task_hands_it_to_a_second_worker_at_once_and_it_is_paid_once(slow_model, workers, tmp_path):
    fund_wallet(1000, node_dir=tmp_path / "node")  # the winner is paid only from funds the wallet holds
    agent = AgentFactory(name="ada", status=Agent.Status.OFFLINE)
    first = workers("first", WORKER_GRACE_SECONDS="1")
    wait_for(lambda: online(agent), 30, "the agent to come online")
    slow_model.delay = 60  # still thinking when it is stopped, however long the second worker takes to start
    task = task_post(description="write a haiku", auction_seconds=1)
    wait_for(lambda: status(task) == Task.Status.RUNNING, 10, "the task to run")
    workers("second")
    wait_for(lambda: WorkerHeartbeat.objects.filter(worker_id="second").exists(), 30, "the second worker to start")

    slow_model.delay = 1  # the second worker's call answers sooner
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish(timeout=15) == 0, first.stderr
    stopped = time.monotonic()
    assert "1 running job(s) get 1 s to finish" in first.stdout
    wait_for(lambda: Task.objects.get(pk=task.pk).claimed_by == "second", 5, "the second worker to take the task")
    took = time.monotonic() - stopped
    wait_for(lambda: status(task) == Task.Status.COMPLETED, 30, "the task to complete")
    wait_for(lambda: LedgerEntry.objects.filter(task=task).exists(), 10, "the winner to be paid")

    assert took < 3  # at once, not after the 300 s lease
    task.refresh_from_db()
    assert task.attempts == 1  # the handed-back attempt does not count
    released = Event.objects.get(event_type=EventType.TASK_ASSIGNED, task_id=str(task.pk), data__released=True)
    assert released.data["worker"] == "first"
    started = Event.objects.filter(event_type=EventType.TASK_STARTED, task_id=str(task.pk))
    assert [event.data["worker"] for event in started.order_by("id")] == ["first", "second"]
    assert Event.objects.filter(event_type=EventType.TASK_COMPLETED, task_id=str(task.pk)).count() == 1
    time.sleep(1.5)  # a second payment would come within a cycle
    assert LedgerEntry.objects.filter(task=task).count() == 1


def test_kill_9_during_a_task_resumes_it_once_on_another_worker_and_pays_once(slow_model, workers, tmp_path):
    fund_wallet(1000, node_dir=tmp_path / "node")  # the winner is paid only from funds the wallet holds
    agent = AgentFactory(name="ada", status=Agent.Status.OFFLINE)
    lease = {"TASK_LEASE_SECONDS": "3"}
    doomed = workers("doomed", **lease)
    wait_for(lambda: online(agent), 30, "the agent to come online")
    task = task_post(description="write a haiku", auction_seconds=1)
    wait_for(lambda: status(task) == Task.Status.RUNNING, 10, "the task to run")
    doomed.proc.kill()
    doomed.finish()
    slow_model.delay = 1

    rescuer = workers("rescuer", **lease)
    wait_for(lambda: status(task) == Task.Status.COMPLETED, 40, "the task to complete on the second worker")
    wait_for(lambda: LedgerEntry.objects.filter(task=task).exists(), 10, "the winner to be paid")
    time.sleep(1.5)

    task.refresh_from_db()
    assert task.attempts == 2
    started = Event.objects.filter(event_type=EventType.TASK_STARTED, task_id=str(task.pk)).order_by("id")
    assert [event.data["worker"] for event in started] == ["doomed", "rescuer"]
    assert Event.objects.filter(event_type=EventType.TASK_COMPLETED, task_id=str(task.pk)).count() == 1
    assert LedgerEntry.objects.filter(task=task).count() == 1
    rescuer.proc.send_signal(signal.SIGTERM)
    assert rescuer.finish() == 0, rescuer.stderr


TASKS = 200


def test_three_workers_share_200_tasks_and_run_each_exactly_once(transactional_db, workers):
    agents = [AgentFactory(name=f"agent-{i}", status=Agent.Status.OFFLINE) for i in range(3)]
    tasks = [
        TaskFactory(
            status=Task.Status.ASSIGNED, assigned_agent=agents[n % 3], winning_bid_sats=10, description=f"task {n}"
        )
        for n in range(TASKS)
    ]
    with OllamaServer(mode="slow", delay=0.02) as server:
        ProviderFactory(
            name="ollama", kind=Provider.Kind.OLLAMA, base_url=server.url, model=server.models[0], context_tokens=4096
        )
        running = [workers(f"share-{i}", WORKER_CONCURRENCY="2", EMBEDDING_BACKEND="hashed") for i in range(3)]
        wait_for(
            lambda: Task.objects.filter(status=Task.Status.COMPLETED).count() == TASKS, 120, "every task to complete"
        )
        for process in running:
            process.proc.send_signal(signal.SIGTERM)
        for process in running:
            assert process.finish() == 0, process.stderr
            assert "Traceback" not in process.stderr
        asked = Counter(chat["messages"][-1]["content"] for chat in server.chats)

    assert asked == {task.description: 1 for task in tasks}
    started = Event.objects.filter(event_type=EventType.TASK_STARTED)
    assert Counter(started.values_list("task_id", flat=True)) == {str(task.pk): 1 for task in tasks}
    # Shared: every worker ran some of them.
    assert set(started.values_list("data__worker", flat=True)) == {"share-0", "share-1", "share-2"}
    assert set(Task.objects.values_list("attempts", flat=True)) == {1}
