"""The worker's log says when a task fails: one warning line, with the task's id and the reason."""

import logging

from django.utils import timezone

from apps.agents.worker import claim_task
from apps.core.worker import Worker
from apps.swarm.models import Task
from tests.agents.conftest import all_down, personas  # noqa: F401  (fixtures)
from tests.factories import TaskFactory


def test_a_failed_task_logs_exactly_one_warning_with_its_id_and_reason(personas, all_down, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING)
    task = TaskFactory(
        description="Research the history of the Lightning Network",
        status=Task.Status.ASSIGNED,
        assigned_agent=personas["echo"],
        winning_bid_sats=80,
        assigned_at=timezone.now(),
    )
    worker = Worker(worker_id="w-test", job_sources=[("apps.agents.worker.claim_task", claim_task)])
    assert worker.run_once() == 1
    task.refresh_from_db()
    assert task.status == Task.Status.FAILED and task.failure_reason.startswith("No LLM provider answered.")
    about_the_task = [r for r in caplog.records if r.getMessage().startswith(f"task {task.pk} ")]
    assert [(r.levelno, r.name) for r in about_the_task] == [(logging.WARNING, "timmy.worker")]
    reason = " ".join(task.failure_reason.split())[:500]
    assert about_the_task[0].getMessage() == f"task {task.pk} failed: {reason}"
    assert "\n" not in about_the_task[0].getMessage()
