import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.core.jobs import Job
from apps.core.models import WorkerHeartbeat
from apps.core.services import worker_register
from apps.core.worker import Worker
from apps.events.models import Event, EventType
from apps.swarm import worker as swarm_worker
from apps.swarm.models import Agent, Task
from tests.factories import AgentFactory, BidFactory, TaskFactory
from tests.llm_servers import refused_url

ROOT = Path(__file__).resolve().parents[2]


class ModelServerDown(Exception):
    pass


def unreachable_model_server(now: datetime) -> int:
    raise ModelServerDown("connection refused by 127.0.0.1:11434")


def due_auction(**bids: int) -> Task:
    task = TaskFactory(status=Task.Status.BIDDING, auction_closes_at=timezone.now() - timedelta(seconds=1))
    for name, amount in bids.items():
        agent = Agent.objects.filter(name=name).first() or AgentFactory(name=name)
        BidFactory(task=task, agent=agent, amount_sats=amount)
    return task


# --- the Worker class ---


def test_a_failing_step_logs_a_system_error_and_the_other_steps_still_run(db, caplog):
    task = due_auction(ada=30, bob=20)
    worker = Worker(
        worker_id="w-test",
        steps=[
            ("unreachable_model_server", unreachable_model_server),
            ("apps.swarm.worker.close_due_auctions", swarm_worker.close_due_auctions),
        ],
    )
    assert worker.run_once() == 1
    task.refresh_from_db()
    assert task.status == Task.Status.ASSIGNED
    assert task.assigned_agent is not None and task.assigned_agent.name == "bob"
    [error] = Event.objects.filter(event_type=EventType.SYSTEM_ERROR)
    assert error.source == "worker:w-test"
    assert error.data == {
        "step": "unreachable_model_server",
        "error": "ModelServerDown",
        "message": "connection refused by 127.0.0.1:11434",
    }
    assert "worker step unreachable_model_server failed" in caplog.text


def test_a_step_that_keeps_failing_is_logged_every_cycle_and_never_stops_the_worker(db):
    worker = Worker(worker_id="w-test", steps=[("boom", unreachable_model_server)])
    for _ in range(3):
        assert worker.run_once() == 0
    assert Event.objects.filter(event_type=EventType.SYSTEM_ERROR).count() == 3


def test_a_worker_asked_to_stop_runs_no_further_steps(db):
    calls: list[str] = []
    worker = Worker(worker_id="w-test")

    def first(now: datetime) -> int:
        calls.append("first")
        worker.stop_event.set()
        return 1

    def second(now: datetime) -> int:
        calls.append("second")
        return 1

    worker.steps = [("first", first), ("second", second)]
    assert worker.run_once() == 1
    assert calls == ["first"]


def test_the_worker_runs_the_steps_named_in_settings(settings):
    settings.WORKER_STEPS = ["apps.swarm.worker.close_due_auctions"]
    worker = Worker.from_settings("w-test")
    assert worker.steps == [("apps.swarm.worker.close_due_auctions", swarm_worker.close_due_auctions)]


def test_a_worker_beats_its_heartbeat_while_it_runs(transactional_db, settings):
    # run_forever closes old connections each cycle, which a test inside a transaction cannot allow.
    settings.WORKER_HEARTBEAT_SECONDS = 0
    settings.WORKER_POLL_SECONDS = 0
    worker = Worker(worker_id="w-beat")
    cycles = 0

    def three_cycles(now: datetime) -> int:
        nonlocal cycles
        cycles += 1
        if cycles == 3:
            worker.stop_event.set()
        return 0

    worker.steps = [("three_cycles", three_cycles)]
    worker.start()
    registered = WorkerHeartbeat.objects.get(worker_id="w-beat")
    worker.run_forever()
    beat = WorkerHeartbeat.objects.get(worker_id="w-beat")
    assert beat.cycles == 3
    assert beat.last_beat_at > registered.last_beat_at
    assert beat.is_alive()


def test_agents_join_when_a_worker_starts_and_leave_when_the_last_worker_stops(db):
    first, second = Worker(worker_id="w-1"), Worker(worker_id="w-2")
    first.start()
    second.start()
    names = set(Agent.objects.values_list("name", flat=True))
    assert set(Agent.objects.values_list("status", flat=True)) == {Agent.Status.IDLE}
    joined = Event.objects.filter(event_type=EventType.AGENT_JOINED)
    assert sorted(e.data["agent"] for e in joined) == sorted(names)
    assert {e.source for e in joined} == {"worker:w-1"}

    first.stop()
    assert set(Agent.objects.values_list("status", flat=True)) == {Agent.Status.IDLE}
    assert not Event.objects.filter(event_type=EventType.AGENT_LEFT).exists()

    second.stop()
    assert set(Agent.objects.values_list("status", flat=True)) == {Agent.Status.OFFLINE}
    left = Event.objects.filter(event_type=EventType.AGENT_LEFT)
    assert sorted(e.data["agent"] for e in left) == sorted(names)
    assert {e.source for e in left} == {"worker:w-2"}


def test_a_worker_that_stops_beside_a_dead_one_takes_the_agents_offline(db, settings):
    stale = Worker(worker_id="w-crashed")
    stale.start()
    WorkerHeartbeat.objects.filter(worker_id="w-crashed").update(
        last_beat_at=timezone.now() - timedelta(seconds=settings.WORKER_STALE_SECONDS + 1)
    )
    live = Worker(worker_id="w-live")
    live.start()
    live.stop()
    assert set(Agent.objects.values_list("status", flat=True)) == {Agent.Status.OFFLINE}


# --- the heartbeat on the home page ---


def test_a_live_worker_is_shown_up_on_the_home_page(staff_client):
    worker_register(worker_id="host:1")
    html = staff_client.get("/").content.decode()
    assert '<span class="badge up">up</span> The background worker is running.' in html
    assert '<code>host:1</code> <span class="badge up">up</span>' in html


def test_a_stopped_worker_is_shown_down_on_the_home_page(staff_client):
    worker = Worker(worker_id="host:2")
    worker.start()
    worker.stop()
    assert WorkerHeartbeat.objects.get(worker_id="host:2").stopped_at is not None
    html = staff_client.get("/").content.decode()
    assert '<span class="badge down">down</span> No worker has sent a heartbeat recently' in html
    assert '<code>host:2</code> <span class="badge down">stopped</span>' in html


def test_a_worker_whose_last_beat_is_too_old_is_shown_down(staff_client, settings):
    settings.WORKER_STALE_SECONDS = 30
    worker_register(worker_id="host:3")
    WorkerHeartbeat.objects.update(last_beat_at=timezone.now() - timedelta(seconds=31))
    html = staff_client.get("/").content.decode()
    assert '<span class="badge down">down</span> No worker has sent a heartbeat recently' in html
    assert '<code>host:3</code> <span class="badge down">down</span>' in html


def test_the_home_page_says_down_when_no_worker_ever_ran(staff_client):
    html = staff_client.get("/").content.decode()
    assert '<span class="badge down">down</span>' in html
    assert "python manage.py run_worker" in html


def test_the_home_page_shows_task_counts_agents_and_latest_events(staff_client):
    task = due_auction(ada=30)
    Worker(worker_id="w-home", steps=[("close", swarm_worker.close_due_auctions)]).run_once()
    html = staff_client.get("/").content.decode()
    assert '<span class="badge status-assigned">assigned 1</span>' in html
    assert '<li>ada <span class="badge agent-idle">idle</span> <span class="muted">1 win</span></li>' in html
    assert f"task #{task.pk}</a>" in html
    assert 'data-type="task.assigned"' in html and "Assigned for 30 sats" in html


# --- manage.py run_worker ---


def test_run_worker_once_closes_due_auctions_runs_a_winner_and_writes_a_heartbeat(
    db, restore_signal_handlers, settings, monkeypatch
):
    # No LLM is reachable: the providers the worker creates at start point where nothing listens.
    settings.OLLAMA_HOST = refused_url()
    settings.AIRLLM_MODEL_PATH = ""
    settings.OPENAI_BASE_URL = ""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cheap = due_auction(ada=30, bob=20)
    empty = due_auction()
    out = StringIO()
    call_command("run_worker", "--once", "--worker-id", "once-1", stdout=out)
    cheap.refresh_from_db()
    empty.refresh_from_db()
    # bob won the auction, then the worker ran his task: no model answered, so it failed with the router's reason.
    assert cheap.assigned_agent is not None and cheap.assigned_agent.name == "bob"
    assert cheap.status == Task.Status.FAILED
    assert cheap.failure_reason.startswith(
        f"No LLM provider answered. ollama: cannot connect to Ollama at {settings.OLLAMA_HOST}"
    )
    assert "airllm: disabled" in cheap.failure_reason
    assert cheap.attempts == 1
    # Nobody bid while no worker ran: the agents that came online with this one bid on it before it closed.
    assert empty.status == Task.Status.ASSIGNED
    assert empty.bids.exists() and empty.assigned_agent is not None
    lines = out.getvalue().splitlines()
    steps, jobs = len(settings.WORKER_STEPS), settings.WORKER_CONCURRENCY
    assert lines[0] == f"Worker once-1 running {steps} step(s), up to {jobs} job(s) at once."
    assert "Handled 3 item(s)." in lines
    assert lines[-1] == "Worker stopped."
    beat = WorkerHeartbeat.objects.get(worker_id="once-1")
    assert beat.stopped_at is not None
    assert not beat.is_alive()


def test_run_worker_once_leaves_open_auctions_alone(db, restore_signal_handlers):
    task = TaskFactory(status=Task.Status.BIDDING, auction_closes_at=timezone.now() + timedelta(seconds=30))
    out = StringIO()
    call_command("run_worker", "--once", stdout=out)
    task.refresh_from_db()
    assert task.status == Task.Status.BIDDING
    assert "Handled 0 item(s)." in out.getvalue()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_sigterm_stops_a_running_worker_promptly_and_cleanly(transactional_db, subprocess_env):
    agent = AgentFactory(name="ada", status=Agent.Status.OFFLINE)
    # A long poll: the signal must cut the wait short, not wait it out.
    env = {**subprocess_env, "WORKER_POLL_SECONDS": "60"}
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_worker", "--worker-id", "sig-1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The heartbeat is written first and the agents join after it: wait for the end of the start-up.
        wait_for(lambda: Agent.objects.get(pk=agent.pk).status == Agent.Status.IDLE, 30, "ada to come online")
        assert WorkerHeartbeat.objects.filter(worker_id="sig-1").exists()
        time.sleep(0.3)  # into the poll wait
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=15)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert took < 5
    assert "Received SIGTERM: no new work is claimed, stopping" in stdout
    assert stdout.rstrip().endswith("Worker stopped.")
    assert WorkerHeartbeat.objects.get(worker_id="sig-1").stopped_at is not None
    agent.refresh_from_db()
    assert agent.status == Agent.Status.OFFLINE
    assert Event.objects.filter(event_type=EventType.AGENT_LEFT, agent_id=str(agent.pk)).count() == 1


# --- the pool of jobs ---


def gate_source(name: str, gates: list[threading.Event], ran: list[str], released: list[str]):
    """A job source handing out jobs that run until their gate opens."""

    def source(worker_id: str) -> Job | None:
        if not gates:
            return None
        gate = gates.pop(0)
        job_name = f"{name} for {worker_id}"

        def run() -> None:
            gate.wait(10)
            ran.append(job_name)

        return Job(name=job_name, run=run, release=lambda: released.append(job_name) is None)

    return source


def test_a_worker_runs_at_most_its_concurrency_of_jobs_and_claims_the_next_when_one_ends(db):
    gates = [threading.Event() for _ in range(3)]
    ran: list[str] = []
    worker = Worker(
        worker_id="w-pool", job_sources=[("tasks", gate_source("task", list(gates), ran, []))], concurrency=2
    )
    assert worker.claim_jobs() == 2
    assert worker.claim_jobs() == 0  # full
    gates[0].set()
    assert worker.wake_event.wait(5)  # a finished job wakes the loop
    assert worker.claim_jobs() == 1
    for gate in gates:
        gate.set()
    assert worker.pool.wait(5)
    assert ran == ["task for w-pool"] * 3


def test_the_job_sources_take_turns_so_a_queue_of_tasks_does_not_starve_the_drafts(db):
    gates = [threading.Event() for _ in range(4)]
    for gate in gates:
        gate.set()
    ran: list[str] = []
    tasks = gate_source("task", gates[:3], ran, [])
    drafts = gate_source("draft", gates[3:], ran, [])
    worker = Worker(worker_id="w", job_sources=[("tasks", tasks), ("drafts", drafts)], concurrency=1)
    for _ in range(3):
        assert worker.claim_jobs() == 1
        assert worker.pool.wait(5)
    # With tasks still queued, the second place went to the draft.
    assert ran == ["task for w", "draft for w", "task for w"]


def test_stopping_waits_the_grace_period_then_hands_back_the_jobs_still_running(db, settings):
    settings.WORKER_GRACE_SECONDS = 0.3
    quick, stuck = threading.Event(), threading.Event()
    released: list[str] = []
    ran: list[str] = []
    worker = Worker(
        worker_id="w", job_sources=[("tasks", gate_source("task", [quick, stuck], ran, released))], concurrency=2
    )
    assert worker.claim_jobs() == 2
    quick.set()
    started = time.monotonic()
    assert worker.finish_jobs() == ["task for w"]
    assert 0.25 < time.monotonic() - started < 3
    assert released == ["task for w"] and ran == ["task for w"]
    stuck.set()


def test_a_second_ctrl_c_hands_the_jobs_back_without_waiting_the_grace_period(db, settings):
    settings.WORKER_GRACE_SECONDS = 30
    stuck = threading.Event()
    released: list[str] = []
    worker = Worker(worker_id="w", job_sources=[("tasks", gate_source("task", [stuck], [], released))], concurrency=1)
    worker.claim_jobs()
    worker.request_stop(hurry=True)
    started = time.monotonic()
    assert worker.finish_jobs() == ["task for w"]
    assert time.monotonic() - started < 2
    stuck.set()


def test_a_job_that_raises_is_recorded_as_a_system_error_and_frees_its_place(transactional_db):
    def broken(worker_id: str) -> Job | None:
        def run() -> None:
            raise RuntimeError("disk full")

        return Job(name="task 7", run=run, release=lambda: False)

    worker = Worker(worker_id="w-err", job_sources=[("broken", broken)], concurrency=1)
    assert worker.claim_jobs() == 1
    assert worker.pool.wait(5)
    assert worker.pool.free == 1
    [error] = Event.objects.filter(event_type=EventType.SYSTEM_ERROR)
    assert error.data == {"job": "task 7", "error": "RuntimeError", "message": "disk full"}
