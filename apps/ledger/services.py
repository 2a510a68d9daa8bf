"""The ledger's writes (ADR-018). Every row is appended pending and then moved once, by a conditional update, to
settled, failed or expired, with a `payment.*` event and the running totals in the same transaction.

Money never moves inside a transaction: an outgoing payment is committed as pending before the node is asked to
pay, and the outcome is recorded after, so a crash or a timeout half-way leaves a pending row for `reconcile`,
never a payment nobody knows about.
"""

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import CharField, Count, Exists, F, OuterRef, Q, QuerySet, Sum
from django.db.models.functions import Cast
from django.utils import timezone

from apps.events.models import Event
from apps.events.services import clean_multiline_text, log_event
from apps.ledger.backends import get_backend
from apps.ledger.backends.base import (
    BackendError,
    BackendUnavailable,
    InvoiceNotFound,
    InvoiceState,
    LightningBackend,
    PaymentState,
)
from apps.ledger.backends.dev import DevBackend, decode
from apps.ledger.backends.lnd import DEFAULT_FEE_LIMIT_SATS
from apps.ledger.models import SWARM_PAYMENT_SOURCE, LedgerDaily, LedgerEntry, LedgerTotals, TxStatus, TxType
from apps.swarm.models import Agent, Task

logger = logging.getLogger("timmy.ledger")

# 21 million bitcoin: no single amount can be more.
MAX_SATS = 21_000_000 * 100_000_000
# A BOLT11 description is one tagged field of at most 1023 five-bit groups: 639 whole bytes of UTF-8. Every invoice
# we issue (API, L402 challenge, agent payment) carries its memo there.
MEMO_MAX_BYTES = 639
REASON_MAX = 300
_HEX64 = re.compile(r"[0-9a-f]{64}")


class LedgerError(Exception):
    pass


class InvalidPayment(LedgerError, ValueError):
    pass


class EntryNotFound(LedgerError, LookupError):
    pass


class PreimageMismatch(LedgerError, ValueError):
    pass


class EntryNotPending(LedgerError):
    """The row has already been moved out of pending (to the state in the message)."""


class NotSettledByNode(LedgerError):
    pass


class AlreadyPaid(LedgerError):
    pass


class PaymentWaiting(LedgerError):
    """The wallet cannot cover the payment now: nothing was written, and it waits for funds."""

    def __init__(self, *, amount_sats: int, fee_allowance_sats: int, available_sats: int) -> None:
        self.amount_sats, self.fee_allowance_sats, self.available_sats = amount_sats, fee_allowance_sats, available_sats
        self.needed_sats = amount_sats + fee_allowance_sats
        fees = f" ({amount_sats} + up to {fee_allowance_sats} in routing fees)" if fee_allowance_sats else ""
        super().__init__(f"needs {self.needed_sats} sats{fees}, {available_sats} available")


def _amount(amount_sats: Any) -> int:
    if isinstance(amount_sats, bool) or not isinstance(amount_sats, int):
        raise InvalidPayment("The amount must be a whole number of sats.")
    if not 1 <= amount_sats <= MAX_SATS:
        raise InvalidPayment(f"The amount must be between 1 and {MAX_SATS:,} sats.")
    return amount_sats


def memo_error(memo: str) -> str:
    """Why a memo cannot be an invoice's description ("" when it can), measured as it will be stored."""
    try:
        size = len(clean_multiline_text(memo or "").strip().encode())
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 encoding exists
        return "The memo is not valid Unicode text."
    if size > MEMO_MAX_BYTES:
        return f"The memo is {size:,} bytes in UTF-8; an invoice's memo is at most {MEMO_MAX_BYTES} bytes."
    return ""


def _memo(memo: str) -> str:
    error = memo_error(memo)
    if error:
        raise InvalidPayment(error)
    return clean_multiline_text(memo or "").strip()


def _memo_clipped(memo: str) -> str:
    # For invoices we pay or make for an agent: their text is not ours to refuse, so it is cut to fit.
    text = clean_multiline_text(memo or "").strip()
    return text.encode(errors="ignore")[:MEMO_MAX_BYTES].decode(errors="ignore")


def _hex64(value: str, what: str) -> str:
    text = (value or "").strip().lower()
    if not _HEX64.fullmatch(text):
        raise InvalidPayment(f"The {what} must be 64 hexadecimal characters.")
    return text


def preimage_matches(preimage: str, payment_hash: str) -> bool:
    return hmac.compare_digest(hashlib.sha256(bytes.fromhex(preimage)).hexdigest(), payment_hash)


def _totals_add(tx_type: str, status: str, *, count: int, amount_sats: int, fee_sats: int = 0) -> None:
    changes = {
        "count": F("count") + count,
        "amount_sats": F("amount_sats") + amount_sats,
        "fee_sats": F("fee_sats") + fee_sats,
    }
    if not LedgerTotals.objects.filter(tx_type=tx_type, status=status).update(**changes):
        # The migration creates the eight rows; a database flushed since (tests) gets them back here.
        LedgerTotals.objects.get_or_create(tx_type=tx_type, status=status)
        LedgerTotals.objects.filter(tx_type=tx_type, status=status).update(**changes)


def _daily_add(entry: LedgerEntry, fee_sats: int) -> None:
    day = timezone.localdate(entry.settled_at)
    changes = {
        "count": F("count") + 1,
        "amount_sats": F("amount_sats") + entry.amount_sats,
        "fee_sats": F("fee_sats") + fee_sats,
    }
    bucket = LedgerDaily.objects.filter(day=day, tx_type=entry.tx_type, source=entry.source)
    if not bucket.update(**changes):
        LedgerDaily.objects.get_or_create(day=day, tx_type=entry.tx_type, source=entry.source)
        bucket.update(**changes)


def _event_data(entry: LedgerEntry, **extra: Any) -> dict[str, Any]:
    # Never the preimage (the proof of payment, and for an open invoice the secret that would settle it).
    return {
        "payment_hash": entry.payment_hash,
        "tx_type": entry.tx_type,
        "amount_sats": entry.amount_sats,
        "source": entry.source,
        **extra,
    }


def _append(entry: LedgerEntry) -> LedgerEntry:
    entry.save(force_insert=True)
    _totals_add(entry.tx_type, entry.status, count=1, amount_sats=entry.amount_sats)
    return entry


def create_invoice_entry(
    *,
    amount_sats: int,
    memo: str = "",
    source: str,
    task: Task | None = None,
    agent: Agent | None = None,
    expiry_seconds: int | None = None,
    backend: LightningBackend | None = None,
) -> LedgerEntry:
    """Ask the node for an invoice and record it as pending incoming."""
    amount = _amount(amount_sats)
    memo = _memo(memo)
    invoice = (backend or get_backend()).create_invoice(
        amount_sats=amount, memo=memo, expiry_seconds=expiry_seconds or settings.INVOICE_EXPIRY_SECONDS
    )
    with transaction.atomic():
        entry = _append(
            LedgerEntry(
                tx_type=TxType.INCOMING,
                payment_hash=invoice.payment_hash,
                amount_sats=amount,
                memo=memo,
                invoice=invoice.payment_request,
                source=source,
                task=task,
                agent=agent,
                expires_at=invoice.expires_at,
            )
        )
        log_event(
            "payment.invoice_created",
            source=source,
            task_id=task.pk if task else None,
            agent_id=agent.pk if agent else None,
            data=_event_data(entry, memo=memo, expires_at=invoice.expires_at.isoformat()),
        )
    return entry


def record_outgoing(
    *,
    payment_request: str,
    source: str,
    task: Task | None = None,
    agent: Agent | None = None,
    backend: LightningBackend | None = None,
    timeout_seconds: int | None = None,
    require_funds: bool = False,
) -> LedgerEntry:
    """Pay a BOLT11 invoice: recorded as pending (committed) first, then paid, then settled or failed. A payment
    still in flight when the timeout ends, or whose outcome the node could not report, stays pending for
    `reconcile`. Must not be called inside a transaction (see the module docstring).

    With `require_funds`, the pending row is written only if the balance covers the amount and the backend's fee
    allowance, checked in the same transaction under a lock (funds_check): otherwise PaymentWaiting, and nothing
    is written."""
    if connection.in_atomic_block:
        raise LedgerError("record_outgoing must not run inside a transaction: the pending row must be committed first.")
    backend = backend or get_backend()
    try:
        decoded = decode(payment_request)
    except BackendError as exc:
        raise InvalidPayment(str(exc)) from exc
    if not decoded.amount_msat:
        raise InvalidPayment("The invoice has no amount; only invoices for a fixed amount can be paid.")
    if decoded.amount_msat % 1000:
        raise InvalidPayment("The invoice asks for a fraction of a sat; only whole sats can be paid.")
    if decoded.has_expired():
        raise InvalidPayment("The invoice has expired.")
    amount = _amount(decoded.amount_msat // 1000)
    try:
        with transaction.atomic():
            if require_funds:
                funds_check(amount_sats=amount, fee_allowance_sats=fee_allowance_sats(backend), lock=True)
            if task is not None and source == SWARM_PAYMENT_SOURCE and _task_payment_live(task.pk):
                # Checked, not left to the unique constraint: on PostgreSQL, inserting against the row another
                # transaction is settling would wait for it while holding the totals lock that one needs (deadlock).
                raise AlreadyPaid(f"Task {task.pk} is already paid, or its payment is under way.")
            entry = _append(
                LedgerEntry(
                    tx_type=TxType.OUTGOING,
                    payment_hash=decoded.payment_hash,
                    amount_sats=amount,
                    memo=_memo_clipped(decoded.description or ""),
                    invoice=payment_request.strip(),
                    source=source,
                    task=task,
                    agent=agent,
                )
            )
            log_event(
                "payment.sending",
                source=source,
                task_id=task.pk if task else None,
                agent_id=agent.pk if agent else None,
                data=_event_data(entry),
            )
    except IntegrityError as exc:
        raise AlreadyPaid(
            f"The invoice {decoded.payment_hash} is already in the ledger (or this task is paid)."
        ) from exc
    try:
        payment = backend.pay_invoice(
            entry.invoice, timeout_seconds=timeout_seconds or settings.LIGHTNING_PAYMENT_TIMEOUT_SECONDS
        )
    except BackendUnavailable:
        return entry  # outcome unknown: pending until reconcile hears from the node
    except BackendError as exc:
        return mark_failed(payment_hash=entry.payment_hash, reason=str(exc))
    if payment.state == PaymentState.SUCCEEDED:
        return mark_settled(
            payment_hash=entry.payment_hash, preimage=payment.preimage, fee_sats=payment.fee_sats, backend=backend
        )
    if payment.state == PaymentState.FAILED:
        return mark_failed(payment_hash=entry.payment_hash, reason=payment.failure_reason or "the payment failed")
    return entry


def mark_settled(
    *, payment_hash: str, preimage: str, fee_sats: int = 0, backend: LightningBackend | None = None
) -> LedgerEntry:
    """Settle a pending row, given the preimage that proves payment. Idempotent for a settled row; refuses a
    preimage that does not hash to the payment hash, and with LND, an incoming invoice the node has not settled."""
    payment_hash = _hex64(payment_hash, "payment hash")
    preimage = _hex64(preimage, "preimage")
    if not preimage_matches(preimage, payment_hash):
        raise PreimageMismatch("The preimage does not hash to the payment hash.")
    entry = LedgerEntry.objects.filter(payment_hash=payment_hash).first()
    if entry is None:
        raise EntryNotFound(f"No ledger entry has the payment hash {payment_hash}.")
    if entry.status == TxStatus.SETTLED:
        return entry
    backend = backend or get_backend()
    if entry.tx_type == TxType.INCOMING and backend.name == "lnd":
        status = backend.lookup_invoice(payment_hash)
        if status.state != InvoiceState.SETTLED:
            raise NotSettledByNode(f"The node says the invoice is {status.state}, not settled.")
    now = timezone.now()
    fee = max(0, int(fee_sats or 0))
    with transaction.atomic():
        moved = LedgerEntry.objects.filter(pk=entry.pk, status=TxStatus.PENDING).update(
            status=TxStatus.SETTLED, preimage=preimage, settled_at=now, fee_sats=fee
        )
        entry.refresh_from_db()
        if not moved:
            if entry.status == TxStatus.SETTLED:
                return entry  # settled by a concurrent call with the same proof
            raise EntryNotPending(f"The ledger entry is {entry.status}; only a pending entry can be settled.")
        _totals_add(entry.tx_type, TxStatus.PENDING, count=-1, amount_sats=-entry.amount_sats)
        _totals_add(entry.tx_type, TxStatus.SETTLED, count=1, amount_sats=entry.amount_sats, fee_sats=fee)
        _daily_add(entry, fee)
        log_event(
            "payment.settled",
            source=entry.source,
            task_id=entry.task_id,
            agent_id=entry.agent_id,
            data=_event_data(entry, fee_sats=fee),
        )
    return entry


def _move(entry: LedgerEntry, status: str, event_type: str, **changes: Any) -> LedgerEntry:
    with transaction.atomic():
        moved = LedgerEntry.objects.filter(pk=entry.pk, status=TxStatus.PENDING).update(status=status, **changes)
        entry.refresh_from_db()
        if not moved:
            raise EntryNotPending(f"The ledger entry is {entry.status}; only a pending entry can become {status}.")
        _totals_add(entry.tx_type, TxStatus.PENDING, count=-1, amount_sats=-entry.amount_sats)
        _totals_add(entry.tx_type, status, count=1, amount_sats=entry.amount_sats)
        log_event(
            event_type,
            source=entry.source,
            task_id=entry.task_id,
            agent_id=entry.agent_id,
            data=_event_data(entry, **({"reason": changes["failure_reason"]} if "failure_reason" in changes else {})),
        )
    return entry


def mark_failed(*, payment_hash: str, reason: str) -> LedgerEntry:
    entry = LedgerEntry.objects.filter(payment_hash=_hex64(payment_hash, "payment hash")).first()
    if entry is None:
        raise EntryNotFound(f"No ledger entry has the payment hash {payment_hash}.")
    reason = clean_multiline_text(reason).strip()[:REASON_MAX] or "failed"
    failed = _move(entry, TxStatus.FAILED, "payment.failed", failure_reason=reason)
    # One line for each failed payment, however it was found to fail (at once, or by reconcile later).
    for_task = f" for task {entry.task_id}" if entry.task_id else ""
    logger.warning("payment %s…%s failed: %s", entry.payment_hash[:12], for_task, reason)
    return failed


def expire_invoices(*, now: datetime | None = None, limit: int = 500) -> int:
    """Pending incoming invoices past their expiry become expired. Returns how many."""
    now = now or timezone.now()
    due = LedgerEntry.objects.filter(tx_type=TxType.INCOMING, status=TxStatus.PENDING, expires_at__lte=now).order_by(
        "expires_at"
    )[:limit]
    expired = 0
    for entry in due:
        try:
            _move(entry, TxStatus.EXPIRED, "payment.expired")
        except EntryNotPending:
            continue  # settled or expired by someone else meanwhile
        expired += 1
    return expired


@dataclass
class Reconciliation:
    checked: int = 0
    settled: int = 0
    failed: int = 0
    expired: int = 0
    still_pending: int = 0
    unreachable: bool = False
    # Rows the node does not know, and totals that disagree with the rows: things a person should look at.
    drift: list[str] = field(default_factory=list)


def reconcile(
    *, backend: LightningBackend | None = None, limit: int = 500, check_totals: bool = True
) -> Reconciliation:
    """Re-check pending rows against the node (settle, fail or expire them as the node says) and, with
    check_totals, the running totals against the rows (a scan of the whole ledger); report what disagrees."""
    backend = backend or get_backend()
    report = Reconciliation()
    for entry in LedgerEntry.objects.filter(status=TxStatus.PENDING).order_by("id")[:limit]:
        report.checked += 1
        try:
            _reconcile_one(entry, backend, report)
        except BackendUnavailable:
            report.unreachable = True
            report.still_pending += 1
            break
        except InvoiceNotFound:
            report.drift.append(f"{entry.tx_type} {entry.payment_hash}: pending here, unknown to the node")
            report.still_pending += 1
        except EntryNotPending:
            continue
    if check_totals:
        report.drift.extend(totals_drift())
    return report


def _reconcile_one(entry: LedgerEntry, backend: LightningBackend, report: Reconciliation) -> None:
    if entry.tx_type == TxType.INCOMING:
        status = backend.lookup_invoice(entry.payment_hash)
        if status.state == InvoiceState.SETTLED:
            mark_settled(payment_hash=entry.payment_hash, preimage=status.preimage, backend=backend)
            report.settled += 1
        elif status.state in (InvoiceState.EXPIRED, InvoiceState.CANCELED):
            _move(entry, TxStatus.EXPIRED, "payment.expired")
            report.expired += 1
        else:
            report.still_pending += 1
        return
    payment = backend.lookup_payment(entry.payment_hash)
    if payment.state == PaymentState.SUCCEEDED:
        mark_settled(
            payment_hash=entry.payment_hash, preimage=payment.preimage, fee_sats=payment.fee_sats, backend=backend
        )
        report.settled += 1
    elif payment.state == PaymentState.FAILED:
        mark_failed(payment_hash=entry.payment_hash, reason=payment.failure_reason or "the payment failed")
        report.failed += 1
    else:
        report.still_pending += 1


def totals_drift() -> list[str]:
    """Where the running totals disagree with a full count of the rows (a full scan: for reconcile only)."""
    actual = {
        (row["tx_type"], row["status"]): row
        for row in LedgerEntry.objects.values("tx_type", "status").annotate(
            n=Count("id"), amount=Sum("amount_sats"), fees=Sum("fee_sats")
        )
    }
    drift = []
    for totals in LedgerTotals.objects.all():
        row = actual.get((totals.tx_type, totals.status), {"n": 0, "amount": 0, "fees": 0})
        if (totals.count, totals.amount_sats, totals.fee_sats) != (row["n"], row["amount"] or 0, row["fees"] or 0):
            drift.append(
                f"totals for {totals.tx_type}/{totals.status} say {totals.count} rows, {totals.amount_sats} sats, "
                f"{totals.fee_sats} fees; the rows say {row['n']}, {row['amount'] or 0}, {row['fees'] or 0}"
            )
    return drift


def get_balance() -> dict[str, int]:
    """ADR-018's balance, from the running totals (eight rows, however long the ledger)."""
    totals = {(t.tx_type, t.status): t for t in LedgerTotals.objects.all()}

    def amount(tx_type: str, status: str) -> int:
        row = totals.get((tx_type, status))
        return row.amount_sats if row else 0

    incoming = amount(TxType.INCOMING, TxStatus.SETTLED)
    outgoing = amount(TxType.OUTGOING, TxStatus.SETTLED)
    settled_out = totals.get((TxType.OUTGOING, TxStatus.SETTLED))
    fees = settled_out.fee_sats if settled_out else 0
    pending_out = amount(TxType.OUTGOING, TxStatus.PENDING)
    net = incoming - outgoing - fees
    return {
        "incoming_total_sats": incoming,
        "outgoing_total_sats": outgoing,
        "fees_paid_sats": fees,
        "net_sats": net,
        "pending_incoming_sats": amount(TxType.INCOMING, TxStatus.PENDING),
        "pending_outgoing_sats": pending_out,
        "available_sats": net - pending_out,
    }


def _task_payment_live(task_id: int) -> bool:
    return (
        LedgerEntry.objects.filter(task_id=task_id, source=SWARM_PAYMENT_SOURCE)
        .exclude(status=TxStatus.FAILED)
        .exists()
    )


def fee_allowance_sats(backend: LightningBackend | None = None) -> int:
    """The most routing fees one payment may cost: LND's fee limit; the dev node charges none."""
    if backend is None:
        # From the setting, not get_backend(): for pages, which must not build a client for the node to read this.
        return DEFAULT_FEE_LIMIT_SATS if settings.LIGHTNING_BACKEND == "lnd" else 0
    return int(getattr(backend, "fee_limit_sats", 0))


def _totals_row_locked(tx_type: str, status: str) -> None:
    if not LedgerTotals.objects.select_for_update().filter(tx_type=tx_type, status=status).exists():
        LedgerTotals.objects.get_or_create(tx_type=tx_type, status=status)  # a flushed database (tests)
        LedgerTotals.objects.select_for_update().filter(tx_type=tx_type, status=status).exists()


def funds_check(*, amount_sats: int, fee_allowance_sats: int, lock: bool = False) -> int:
    """What is available for a payment of `amount_sats` (the balance's available sats, less the fee allowance held
    back for each payment still pending); raises PaymentWaiting when that does not cover the amount and its own
    fee allowance.

    `lock` (inside the transaction that writes the pending row): the outgoing/pending totals row is locked first,
    so two payers check and write one after the other and never both spend the same sats. Every outgoing row's
    move updates that row, so none changes the balance between this check and the write. On SQLite the write
    transaction (BEGIN IMMEDIATE) already serialises writers."""
    if lock:
        _totals_row_locked(TxType.OUTGOING, TxStatus.PENDING)
    available = spendable_sats(fee_allowance_sats=fee_allowance_sats)
    if available < amount_sats + fee_allowance_sats:
        raise PaymentWaiting(amount_sats=amount_sats, fee_allowance_sats=fee_allowance_sats, available_sats=available)
    return available


def spendable_sats(*, fee_allowance_sats: int) -> int:
    """The balance's available sats, less the fee allowance of each outgoing payment still pending."""
    pending = LedgerTotals.objects.filter(tx_type=TxType.OUTGOING, status=TxStatus.PENDING).values_list(
        "count", flat=True
    )
    return get_balance()["available_sats"] - fee_allowance_sats * max(0, pending.first() or 0)


def pay_task(*, task: Task, backend: LightningBackend | None = None) -> LedgerEntry:
    """Pay a completed task's winning agent its bid: the agent's invoice (for local agents, an invoice of this
    node), paid as an outgoing payment tied to the task and the agent. Raises PaymentWaiting, writing nothing,
    when the balance cannot cover it."""
    if task.status != Task.Status.COMPLETED or task.assigned_agent_id is None or not task.winning_bid_sats:
        raise InvalidPayment(f"Task {task.pk} is not a completed task with a winning bid.")
    backend = backend or get_backend()
    # Checked before the invoice is made too (no invoice for a payment that waits), and again under the lock.
    funds_check(amount_sats=task.winning_bid_sats, fee_allowance_sats=fee_allowance_sats(backend))
    invoice = backend.create_invoice(
        amount_sats=task.winning_bid_sats,
        memo=_memo_clipped(f"Task {task.pk}: {task.description[:100]}"),
        expiry_seconds=settings.INVOICE_EXPIRY_SECONDS,
    )
    return record_outgoing(
        payment_request=invoice.payment_request,
        source=SWARM_PAYMENT_SOURCE,
        task=task,
        agent=task.assigned_agent,
        backend=backend,
        require_funds=True,
    )


PAYMENT_WAITING_EVENT = "payment.waiting"


def _waited(task_id: Any) -> Exists:
    return Exists(
        Event.objects.filter(event_type=PAYMENT_WAITING_EVENT, task_id=Cast(task_id, output_field=CharField()))
    )


def tasks_unpaid() -> QuerySet[Task]:
    """Completed tasks with a winner and no swarm payment at all, annotated `waiting` (a payment of theirs waited
    for funds), oldest first. A failed payment is not retried by itself: it shows on the ledger for a person."""
    paid = LedgerEntry.objects.filter(source=SWARM_PAYMENT_SOURCE, task__isnull=False).values("task_id")
    return (
        Task.objects.filter(status=Task.Status.COMPLETED, assigned_agent__isnull=False, winning_bid_sats__gt=0)
        .exclude(pk__in=paid)
        .annotate(waiting=_waited(OuterRef("pk")))
        .select_related("assigned_agent")
        .order_by("finished_at", "id")
    )


def tasks_to_pay(*, limit: int = 20, window: timedelta = timedelta(days=7)) -> list[Task]:
    """Unpaid completed tasks, oldest first: those completed within `window`, and those whose payment waits for
    funds however long ago (a waiting payment stays waiting until it is paid). The window keeps the worker's scan
    small and a fresh ledger from paying tasks completed long before it existed."""
    recent = Q(finished_at__gte=timezone.now() - window)
    return list(tasks_unpaid().filter(recent | Q(waiting=True))[:limit])


def payment_waiting_record(*, task: Task, waiting: PaymentWaiting) -> bool:
    """Record that `task`'s payment waits for funds: a `payment.waiting` event, once per task (the worker meets it
    again every cycle until funds arrive). True if this was the first time."""
    with transaction.atomic():
        # The task's row lock makes two workers meeting it at once log it once (SQLite: the write transaction).
        if not Task.objects.select_for_update().filter(pk=task.pk).exists():
            return False
        if Event.objects.filter(event_type=PAYMENT_WAITING_EVENT, task_id=str(task.pk)).exists():
            return False
        log_event(
            PAYMENT_WAITING_EVENT,
            source=SWARM_PAYMENT_SOURCE,
            task_id=task.pk,
            agent_id=task.assigned_agent_id,
            data={
                "reason": f"waiting for funds: {waiting}",
                "amount_sats": waiting.amount_sats,
                "needed_sats": waiting.needed_sats,
                "available_sats": waiting.available_sats,
            },
        )
    return True


class NotDevMode(LedgerError):
    pass


class NotAllowed(LedgerError, PermissionError):
    pass


def dev_simulate_payment(*, payment_hash: str, actor: Any) -> LedgerEntry:
    """Development only (LIGHTNING_BACKEND=dev, staff): pay one of our pending incoming invoices as if from outside;
    the dev node reveals the preimage and the entry is settled with it."""
    if settings.LIGHTNING_BACKEND != "dev":
        raise NotDevMode("Simulated payments exist only with LIGHTNING_BACKEND=dev.")
    if not getattr(actor, "is_staff", False):
        raise NotAllowed("Only staff can simulate a payment.")
    backend = get_backend()
    if not isinstance(backend, DevBackend):
        raise NotDevMode("Simulated payments exist only with LIGHTNING_BACKEND=dev.")
    payment_hash = _hex64(payment_hash, "payment hash")
    entry = LedgerEntry.objects.filter(payment_hash=payment_hash, tx_type=TxType.INCOMING).first()
    if entry is None:
        raise EntryNotFound(f"No incoming ledger entry has the payment hash {payment_hash}.")
    if entry.status != TxStatus.PENDING:
        raise EntryNotPending(f"The invoice is {entry.status}; only a pending invoice can be paid.")
    try:
        preimage = backend.simulate_payment(payment_hash)
    except BackendError as exc:
        raise EntryNotPending(str(exc)) from exc
    # One transaction: the audit never says "simulated" for an entry that was not settled (if settling fails here,
    # the node has the invoice paid and `reconcile` settles the entry later).
    with transaction.atomic():
        log_event(
            "payment.simulated",
            source="dev",
            task_id=entry.task_id,
            agent_id=entry.agent_id,
            data=_event_data(entry, by=actor.get_username()),
        )
        return mark_settled(payment_hash=payment_hash, preimage=preimage, backend=backend)


def dev_pay(*, payment_request: str, actor: Any) -> LedgerEntry:
    """dev_simulate_payment for a BOLT11 invoice of ours (what a paying client would do with a real wallet)."""
    try:
        decoded = decode(payment_request)
    except BackendError as exc:
        raise InvalidPayment(str(exc)) from exc
    return dev_simulate_payment(payment_hash=decoded.payment_hash, actor=actor)
