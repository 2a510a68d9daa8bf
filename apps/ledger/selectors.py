import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from io import StringIO

from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from apps.ledger import services
from apps.ledger.models import SWARM_PAYMENT_SOURCE, LedgerDaily, LedgerEntry, TxStatus, TxType
from apps.swarm.models import Task

CSV_HEADER = [
    "date", "type", "status", "amount_sats", "fee_sats", "memo", "payment_hash", "preimage", "task", "agent",
    "source", "settled_at",
]  # fmt: skip
# A cell starting with one of these is run as a formula by spreadsheets.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


L402_SOURCE_PREFIX = "l402:"


def ledger_entries(
    *,
    tx_type: str | None = None,
    status: str | None = None,
    since: date | None = None,
    until: date | None = None,
    before_id: int | None = None,
) -> QuerySet[LedgerEntry]:
    """Entries newest first, filtered; page with before_id (the smallest id shown) and a slice."""
    entries = LedgerEntry.objects.select_related("agent").order_by("-id")
    if tx_type:
        entries = entries.filter(tx_type=tx_type)
    if status:
        entries = entries.filter(status=status)
    if since:
        entries = entries.filter(created_at__gte=_day_start(since))
    if until:
        entries = entries.filter(created_at__lt=_day_start(until + timedelta(days=1)))
    if before_id:
        entries = entries.filter(id__lt=before_id)
    return entries


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


@dataclass(frozen=True)
class Day:
    day: date
    incoming_sats: int
    outgoing_sats: int


def daily_settled(*, days: int = 30, today: date | None = None) -> list[Day]:
    """Settled sats in and out per day (by settlement date), oldest first, every day present."""
    today = today or timezone.localdate()
    first = today - timedelta(days=days - 1)
    sums: dict[tuple[date, str], int] = {}
    for row in (
        LedgerDaily.objects.filter(day__gte=first, day__lte=today)
        .values("day", "tx_type")
        .annotate(sats=Sum("amount_sats"))
    ):
        sums[(row["day"], row["tx_type"])] = row["sats"] or 0
    return [
        Day(d, sums.get((d, TxType.INCOMING), 0), sums.get((d, TxType.OUTGOING), 0))
        for d in (first + timedelta(days=i) for i in range(days))
    ]


@dataclass(frozen=True)
class Earnings:
    endpoint: str
    payments: int
    sats: int


def earnings_by_endpoint() -> list[Earnings]:
    """What each L402 endpoint has earned (settled incoming), best first."""
    rows = (
        LedgerDaily.objects.filter(tx_type=TxType.INCOMING, source__startswith=L402_SOURCE_PREFIX)
        .values("source")
        .annotate(payments=Sum("count"), sats=Sum("amount_sats"))
        .order_by("-sats", "source")
    )
    return [Earnings(r["source"].removeprefix(L402_SOURCE_PREFIX), r["payments"], r["sats"]) for r in rows]


def ledger_csv_lines(entries: Iterable[LedgerEntry]) -> Iterator[str]:
    """CSV of the entries, one line at a time (for a streaming response). The preimage is the proof of payment."""
    buffer = StringIO()
    writer = csv.writer(buffer)

    def line(row: Sequence[object]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(row)
        return buffer.getvalue()

    yield line(CSV_HEADER)
    for entry in entries:
        yield line(
            [
                entry.created_at.isoformat(),
                entry.tx_type,
                entry.status,
                entry.amount_sats,
                entry.fee_sats,
                _cell(entry.memo),
                entry.payment_hash,
                entry.preimage,
                entry.task_id or "",
                _cell(entry.agent.name) if entry.agent else "",
                _cell(entry.source),
                entry.settled_at.isoformat() if entry.settled_at else "",
            ]
        )


@dataclass(frozen=True)
class EntriesPage:
    entries: list[LedgerEntry]
    next_before_id: int | None  # the `before_id` of the next (older) page, None on the last page


def ledger_entries_page(
    *,
    limit: int,
    tx_type: str | None = None,
    status: str | None = None,
    since: date | None = None,
    until: date | None = None,
    before_id: int | None = None,
) -> EntriesPage:
    """One page of `ledger_entries`, each with its agent and task (for the task's link): one query, whatever the
    page holds."""
    rows = list(
        ledger_entries(tx_type=tx_type, status=status, since=since, until=until, before_id=before_id)
        .select_related("task")
        .defer("task__result", "task__failure_reason")[: limit + 1]
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return EntriesPage(rows, rows[-1].pk if more and rows else None)


def incoming_invoice(*, payment_hash: str) -> LedgerEntry | None:
    """An invoice of ours by its payment hash (the Receive card), None when there is none: any text may be asked."""
    return LedgerEntry.objects.filter(payment_hash=payment_hash.strip().lower(), tx_type=TxType.INCOMING).first()


@dataclass(frozen=True)
class TaskPayment:
    state: str  # paid, sending, failed, waiting, due; none for a failed task
    text: str


def task_payment(task: Task) -> TaskPayment | None:
    """What became of paying a task's winner, for the task page; None while there is nothing to say (no winner, or
    the task is still open)."""
    if task.assigned_agent_id is None or not task.winning_bid_sats:
        return None
    if task.status == Task.Status.FAILED:
        return TaskPayment("none", "nothing paid: only delivered work is paid, and this task failed")
    if task.status != Task.Status.COMPLETED:
        return None
    entries = list(
        LedgerEntry.objects.filter(task_id=task.pk, source=SWARM_PAYMENT_SOURCE, tx_type=TxType.OUTGOING)
        .only("status", "amount_sats", "fee_sats", "failure_reason")
        .order_by("-id")[:5]
    )
    for entry in entries:
        if entry.status == TxStatus.SETTLED:
            fee = f" (+{entry.fee_sats:,} sats in fees)" if entry.fee_sats else ""
            return TaskPayment("paid", f"paid {entry.amount_sats:,} sats{fee}")
        if entry.status == TxStatus.PENDING:
            return TaskPayment("sending", f"sending {entry.amount_sats:,} sats: the node has not confirmed it yet")
    if entries:
        return TaskPayment("failed", f"payment failed: {entries[0].failure_reason or 'no reason given'}")
    try:
        services.funds_check(amount_sats=task.winning_bid_sats, fee_allowance_sats=services.fee_allowance_sats())
    except services.PaymentWaiting as waiting:
        return TaskPayment("waiting", f"waiting for funds: {waiting}")
    return TaskPayment("due", f"{task.winning_bid_sats:,} sats, to be paid by the worker on its next cycle")


@dataclass(frozen=True)
class WaitingPayment:
    task: Task
    reason: str  # "needs 135 sats, 20 available", as the balance stands now


def payments_waiting(*, limit: int = 50) -> list[WaitingPayment]:
    """Tasks whose payment waited for funds and is still unpaid, oldest first (the order the worker pays them in),
    each with what it needs against what is available now."""
    fee = services.fee_allowance_sats()
    available = services.spendable_sats(fee_allowance_sats=fee)
    waiting = []
    for task in services.tasks_unpaid().filter(Q(waiting=True)).defer("result", "failure_reason")[:limit]:
        amount = task.winning_bid_sats or 0
        if available < amount + fee:
            reason = str(services.PaymentWaiting(amount_sats=amount, fee_allowance_sats=fee, available_sats=available))
        else:
            reason = "funds have arrived: the worker pays it on its next cycle"
        waiting.append(WaitingPayment(task, reason))
    return waiting
