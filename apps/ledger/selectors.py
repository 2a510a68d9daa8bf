import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from io import StringIO

from django.db.models import QuerySet, Sum
from django.utils import timezone

from apps.ledger.models import LedgerDaily, LedgerEntry, TxType

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
