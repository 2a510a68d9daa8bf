"""Ledger steps of the worker (see WORKER_STEPS)."""

from datetime import datetime, timedelta

from apps.core.worker import at_most_every
from apps.ledger import services
from apps.ledger.backends.base import BackendError


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


# Asking the node about every pending row each second would be a load for nothing: once a minute.
@at_most_every(timedelta(seconds=60))
def reconcile_pending(now: datetime) -> int:
    # The totals check scans the whole ledger and nobody reads the worker's report: it is for ledger_reconcile.
    report = services.reconcile(check_totals=False)
    return report.settled + report.failed + report.expired
