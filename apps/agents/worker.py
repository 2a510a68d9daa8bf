"""Agent steps of the worker (see WORKER_STEPS). Each takes the time and returns how many items it handled."""

from datetime import datetime

from apps.agents import selectors, services
from apps.core.services import worker_default_id
from apps.swarm.services import TaskNotFound, TaskWrongState


def run_assigned_tasks(now: datetime) -> int:
    """Run one assigned task through its winning persona (one per call, so the loop stays responsive between
    model calls and several workers share the queue). Returns 1 if it ran one."""
    # The step is not told its worker's name: the process's default id (host:pid) is what the lease records.
    worker_id = worker_default_id()
    for task_id in selectors.tasks_assigned_ids():
        try:
            services.task_run(task_id=task_id, worker_id=worker_id)
        except (TaskWrongState, TaskNotFound):
            continue  # another worker claimed it first
        return 1
    return 0
