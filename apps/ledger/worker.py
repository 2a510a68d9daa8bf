"""Ledger steps of the worker (see WORKER_STEPS)."""

import logging
from datetime import datetime, timedelta

from apps.core.worker import at_most_every
from apps.ledger import services
from apps.ledger.backends.base import BackendError, BackendUnavailable

logger = logging.getLogger("timmy.ledger")

PAYMENTS_PER_CYCLE = 5
# Payments that wait for funds are looked at each cycle too (cheaply: no invoice is made for them), so a few old
# waiting ones never hide the newly completed tasks behind them.
CANDIDATES_PER_CYCLE = 50
# The last reason logged for each task whose payment the node refused, in this worker process.
_not_sent: dict[int, str] = {}


def _log_not_sent(level: int, task_id: int, exc: Exception) -> None:
    # Tried again each cycle: logged when the reason is new, not once a second while it lasts.
    if _not_sent.get(task_id) != str(exc):
        logger.log(level, "payment for task %s not sent: %s; will retry", task_id, exc)
        _not_sent[task_id] = str(exc)


def pay_completed_tasks(now: datetime) -> int:
    """Pay the winner of each completed task its bid, oldest first, as far as the funds go, one payment at a time
    (never inside a transaction). A payment the balance cannot cover waits, with a `payment.waiting` event the
    first time, until an incoming payment brings the funds."""
    paid = 0
    for task in services.tasks_to_pay(limit=CANDIDATES_PER_CYCLE):
        if paid >= PAYMENTS_PER_CYCLE:
            break
        try:
            services.pay_task(task=task)
        except services.PaymentWaiting as exc:
            if services.payment_waiting_record(task=task, waiting=exc):
                logger.warning("payment for task %s waits for funds: %s", task.pk, exc)
            continue
        except services.AlreadyPaid:
            continue  # another worker got there first
        except BackendUnavailable as exc:
            # The node is down: every task stays unpaid (and visible as such) until a later cycle reaches it.
            _log_not_sent(logging.INFO, task.pk, exc)
            break
        except (BackendError, services.InvalidPayment) as exc:
            _log_not_sent(logging.WARNING, task.pk, exc)
            break
        _not_sent.pop(task.pk, None)
        paid += 1  # settled, or failed (services.mark_failed logs that), or pending until reconcile hears
    return paid


def expire_invoices(now: datetime) -> int:
    return services.expire_invoices(now=now)


# Asking the node about every pending row each second would be a load for nothing: once a minute.
@at_most_every(timedelta(seconds=60))
def reconcile_pending(now: datetime) -> int:
    # The totals check scans the whole ledger and nobody reads the worker's report: it is for ledger_reconcile.
    report = services.reconcile(check_totals=False)
    return report.settled + report.failed + report.expired
