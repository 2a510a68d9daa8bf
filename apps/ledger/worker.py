"""Ledger steps of the worker (see WORKER_STEPS)."""

from datetime import datetime, timedelta

from apps.ledger import services
from apps.ledger.backends.base import BackendError

RECONCILE_EVERY = timedelta(seconds=60)
_last_reconcile: dict[str, datetime] = {}


def pay_completed_tasks(now: datetime) -> int:
    """Pay the winner of each newly completed task its bid, one payment at a time (never inside a transaction)."""
    paid = 0
    for task in services.tasks_to_pay(limit=5):
        try:
            services.pay_task(task=task)
        except services.AlreadyPaid:
            continue  # another worker got there first
        except (BackendError, services.InvalidPayment):
            # The node refused or is down: the task stays unpaid (and visible as such) until the next cycle.
            break
        paid += 1
    return paid


def expire_invoices(now: datetime) -> int:
    return services.expire_invoices(now=now)


def reconcile_pending(now: datetime) -> int:
    # Asking the node about every pending row each second would be a load for nothing: once a minute.
    last = _last_reconcile.get("at")
    if last is not None and now - last < RECONCILE_EVERY:
        return 0
    _last_reconcile["at"] = now
    report = services.reconcile()
    return report.settled + report.failed + report.expired
