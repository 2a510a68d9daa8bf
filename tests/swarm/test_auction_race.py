"""Two workers racing on the same due auctions: each task is assigned exactly once."""

import re
from collections import Counter
from datetime import timedelta

from django.utils import timezone

from apps.core.models import WorkerHeartbeat
from apps.events.models import Event, EventType
from apps.swarm.models import Agent, Task
from tests.factories import AgentFactory, BidFactory, TaskFactory
from tests.gated import gated
from tests.llm_servers import refused_url

TASKS = 80  # under the 100 auctions one pass of the worker closes
TIMEOUT = 60

# Runs manage.py once stdin says go. Django is set up before that, so both racers leave the starting line together
# instead of whichever imported faster doing all the work before the other has started.
STARTING_GATE = (
    "import os, runpy, sys\n"
    "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'timmy_site.settings')\n"
    "import django\n"
    "django.setup()\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "sys.argv = ['manage.py', *sys.argv[1:]]\n"
    "runpy.run_path('manage.py', run_name='__main__')\n"
)


def test_two_workers_racing_on_the_same_due_auctions_assign_each_task_exactly_once(transactional_db, subprocess_env):
    agents = [AgentFactory(name=f"racer-agent-{i}", status=Agent.Status.OFFLINE) for i in range(3)]
    due = timezone.now() - timedelta(seconds=1)
    expected_winner = {}
    for n in range(TASKS):
        task = TaskFactory(status=Task.Status.BIDDING, auction_closes_at=due)
        for i, agent in enumerate(agents):
            # A different agent is cheapest on each task, so a wrong winner would show.
            BidFactory(task=task, agent=agent, amount_sats=10 + 10 * ((i - n) % len(agents)))
        expected_winner[task.pk] = agents[n % len(agents)].pk

    commands = [["-c", STARTING_GATE, "run_worker", "--once", "--worker-id", f"racer-{i}"] for i in range(2)]
    # Each racer also runs one assigned task after closing auctions; no model answers here, so it fails.
    env = {**subprocess_env, "OLLAMA_HOST": refused_url(), "AIRLLM_MODEL_PATH": "", "OPENAI_BASE_URL": ""}
    env["OPENAI_API_KEY"] = ""
    with gated(commands, env=env) as racers:
        racers.wait_ready()
        racers.release()
        outputs = racers.finish(timeout=TIMEOUT)

    for stdout, stderr, returncode in outputs:
        assert returncode == 0, stderr
        assert "database is locked" not in stderr
        assert "Traceback" not in stderr
        assert "Worker stopped." in stdout

    # Both were at work at once: each started before the other stopped.
    beats = list(WorkerHeartbeat.objects.filter(worker_id__startswith="racer-"))
    assert len(beats) == 2
    assert all(beat.stopped_at is not None for beat in beats)
    assert max(beat.started_at for beat in beats) < min(beat.stopped_at for beat in beats if beat.stopped_at)

    # Each worker counts only the auctions it closed itself, and the one task it ran.
    handled = [re.findall(r"Handled (\d+) item", stdout) for stdout, _, _ in outputs]
    assert all(len(counts) == 1 for counts in handled)
    assert sum(int(counts[0]) for counts in handled) == TASKS + 2

    tasks = list(Task.objects.all())
    assert len(tasks) == TASKS
    assert Counter(task.status for task in tasks) == {Task.Status.ASSIGNED: TASKS - 2, Task.Status.FAILED: 2}
    ran = [task for task in tasks if task.status == Task.Status.FAILED]
    assert all(task.failure_reason.startswith("No LLM provider answered.") for task in ran)
    assert all(task.attempts == 1 for task in ran)
    assert {task.pk: task.assigned_agent_id for task in tasks} == expected_winner
    assert all(task.winning_bid_sats == 10 for task in tasks)
    assigned_events = Counter(
        Event.objects.filter(event_type=EventType.TASK_ASSIGNED).values_list("task_id", flat=True)
    )
    assert assigned_events == {str(task.pk): 1 for task in tasks}

    # The agents came online with the workers and left with the last of them.
    assert set(Agent.objects.values_list("status", flat=True)) == {Agent.Status.OFFLINE}
    for agent in agents:
        joined = Event.objects.filter(event_type=EventType.AGENT_JOINED, agent_id=str(agent.pk)).count()
        left = Event.objects.filter(event_type=EventType.AGENT_LEFT, agent_id=str(agent.pk)).count()
        assert joined == left >= 1
