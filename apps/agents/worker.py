"""Agent work of the worker: running assigned tasks through their winning persona (a job source, see WORKER_JOBS)."""

from datetime import datetime
from functools import partial

from apps.agents import selectors, services
from apps.core.jobs import Job
from apps.core.services import worker_default_id
from apps.swarm import services as swarm_services
from apps.swarm.services import TaskNotFound, TaskWrongState

RELEASED = "worker {worker} stopped before the task finished; handed back to run again"


def claim_task(worker_id: str) -> Job | None:
    """Start the longest-waiting assigned task for this worker, as a job for its pool."""
    for task_id in selectors.tasks_assigned_ids():
        try:
            task = swarm_services.task_start(task_id=task_id, worker_id=worker_id)
        except (TaskWrongState, TaskNotFound):
            continue  # another worker claimed it first
        return Job(
            name=f"task {task.pk}",
            run=partial(services.task_work, task=task, worker_id=worker_id),
            release=partial(
                swarm_services.task_release,
                task_id=task.pk,
                worker_id=worker_id,
                reason=RELEASED.format(worker=worker_id),
            ),
        )
    return None


def run_assigned_tasks(now: datetime) -> int:
    """Claim and run one assigned task in this thread (the worker runs them in its pool: see claim_task).
    Returns 1 if it ran one."""
    job = claim_task(worker_default_id())
    if job is None:
        return 0
    job.run()
    return 1
