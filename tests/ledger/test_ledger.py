"""The ledger's rows and their transitions, through the services and the embedded dev node.

Tests that pay use `transactional_db`: an outgoing payment refuses to start inside a transaction, and pytest's
`db` runs each test inside one."""

import hashlib
import secrets
import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.events.models import Event
from apps.ledger import services, worker
from apps.ledger.backends.dev import DevBackend
from apps.ledger.models import DevInvoice, LedgerEntry, TxStatus, TxType
from apps.swarm.models import Task
from tests.factories import AgentFactory, TaskFactory


def invoice(amount_sats: int = 100, **fields) -> LedgerEntry:
    return services.create_invoice_entry(amount_sats=amount_sats, memo="test", source="test", **fields)


def test_an_invoice_is_a_pending_incoming_row_with_its_event(dev_node):
    entry = invoice(250, agent=AgentFactory())
    assert (entry.tx_type, entry.status, entry.amount_sats) == (TxType.INCOMING, TxStatus.PENDING, 250)
    assert entry.invoice.startswith("lnbcrt") and entry.expires_at > timezone.now()
    event = Event.objects.get(event_type="payment.invoice_created")
    assert event.data["payment_hash"] == entry.payment_hash and event.agent_id == str(entry.agent_id)
    assert services.get_balance()["pending_incoming_sats"] == 250


@pytest.mark.parametrize("amount", [0, -5, 1.5, "100", True, services.MAX_SATS + 1])
def test_an_amount_that_is_not_a_whole_positive_number_of_sats_is_refused(dev_node, amount):
    with pytest.raises(services.InvalidPayment):
        invoice(amount)
    assert not LedgerEntry.objects.exists()


def test_settling_needs_the_preimage_of_the_hash_and_happens_once(dev_node):
    entry = invoice(100)
    with pytest.raises(services.PreimageMismatch):
        services.mark_settled(payment_hash=entry.payment_hash, preimage=secrets.token_hex(32))
    with pytest.raises(services.InvalidPayment, match="64 hexadecimal"):
        services.mark_settled(payment_hash=entry.payment_hash, preimage="zz")
    preimage = dev_node.simulate_payment(entry.payment_hash)
    settled = services.mark_settled(payment_hash=entry.payment_hash, preimage=preimage)
    assert (settled.status, settled.preimage) == (TxStatus.SETTLED, preimage) and settled.settled_at
    again = services.mark_settled(payment_hash=entry.payment_hash, preimage=preimage.upper())
    assert (again.status, again.preimage, again.settled_at) == (TxStatus.SETTLED, preimage, settled.settled_at)
    assert Event.objects.filter(event_type="payment.settled").count() == 1
    # A settled row never goes back, and its proof is never erased.
    with pytest.raises(services.EntryNotPending):
        services.mark_failed(payment_hash=entry.payment_hash, reason="late failure")
    assert LedgerEntry.objects.get(pk=entry.pk).preimage == preimage


def test_no_event_ever_carries_a_preimage(transactional_db, dev_node):
    entry = invoice(100)
    preimage = dev_node.simulate_payment(entry.payment_hash)
    services.mark_settled(payment_hash=entry.payment_hash, preimage=preimage)
    paid = services.record_outgoing(
        payment_request=dev_node.create_invoice(amount_sats=7, memo="", expiry_seconds=600).payment_request,
        source="test",
    )
    assert paid.status == TxStatus.SETTLED
    for event in Event.objects.filter(event_type__startswith="payment."):
        assert preimage not in str(event.data) and paid.preimage not in str(event.data)


def test_concurrent_settles_of_one_hash_record_one_settlement(dev_node, transactional_db):
    entry = invoice(100)
    preimage = dev_node.simulate_payment(entry.payment_hash)
    results, errors = [], []
    start = threading.Barrier(4)

    def settle() -> None:
        start.wait()
        try:
            results.append(services.mark_settled(payment_hash=entry.payment_hash, preimage=preimage).status)
        except Exception as exc:  # any error fails the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=settle) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and results == [TxStatus.SETTLED] * 4
    assert Event.objects.filter(event_type="payment.settled").count() == 1
    assert services.get_balance()["incoming_total_sats"] == 100
    assert services.totals_drift() == []


def test_the_worker_expires_invoices_past_their_expiry(dev_node):
    due = invoice(100, expiry_seconds=60)
    later = invoice(100, expiry_seconds=3600)
    assert worker.expire_invoices(timezone.now() + timedelta(seconds=61)) == 1
    assert LedgerEntry.objects.get(pk=due.pk).status == TxStatus.EXPIRED
    assert LedgerEntry.objects.get(pk=later.pk).status == TxStatus.PENDING
    assert Event.objects.filter(event_type="payment.expired").count() == 1
    assert services.get_balance()["pending_incoming_sats"] == 100


def test_reconcile_after_a_restart_settles_what_the_node_settled_meanwhile(dev_node, tmp_path):
    paid_while_down = invoice(300)
    unpaid = invoice(40)
    gone = invoice(20)
    DevBackend(tmp_path).simulate_payment(paid_while_down.payment_hash)  # the node, not the ledger, saw it
    DevInvoice.objects.filter(payment_hash=gone.payment_hash).update(expires_at=timezone.now())
    report = services.reconcile(backend=DevBackend(tmp_path))
    assert (report.checked, report.settled, report.expired, report.still_pending) == (3, 1, 1, 1)
    assert report.drift == []
    assert LedgerEntry.objects.get(pk=paid_while_down.pk).status == TxStatus.SETTLED
    assert LedgerEntry.objects.get(pk=unpaid.pk).status == TxStatus.PENDING
    assert LedgerEntry.objects.get(pk=gone.pk).status == TxStatus.EXPIRED


def test_reconcile_reports_rows_the_node_does_not_know_and_totals_that_drifted(dev_node):
    entry = invoice(100)
    DevInvoice.objects.filter(payment_hash=entry.payment_hash).delete()
    LedgerEntry.objects.filter(pk=entry.pk).update(amount_sats=99)  # a hand edit behind the services' back
    report = services.reconcile()
    assert any("unknown to the node" in line for line in report.drift)
    assert any("incoming/pending" in line for line in report.drift)


def test_an_outgoing_payment_is_committed_pending_before_the_node_pays(transactional_db, dev_node, tmp_path):
    request = dev_node.create_invoice(amount_sats=80, memo="for Forge", expiry_seconds=600).payment_request
    with pytest.raises(services.LedgerError, match="inside a transaction"), transaction.atomic():
        services.record_outgoing(payment_request=request, source="test")
    seen = []

    class Watching(DevBackend):
        """The same node, noting what the ledger says at the moment it is asked to pay."""

        def pay_invoice(self, payment_request: str, *, timeout_seconds: int):
            seen.append(LedgerEntry.objects.get(invoice=payment_request).status)
            return super().pay_invoice(payment_request, timeout_seconds=timeout_seconds)

    entry = services.record_outgoing(payment_request=request, source="test", backend=Watching(tmp_path))
    assert seen == [TxStatus.PENDING]
    assert entry.status == TxStatus.SETTLED and entry.memo == "for Forge"
    assert hashlib.sha256(bytes.fromhex(entry.preimage)).hexdigest() == entry.payment_hash
    with pytest.raises(services.AlreadyPaid):
        services.record_outgoing(payment_request=request, source="test")


def test_a_payment_the_node_refuses_is_failed_with_the_reason(transactional_db, dev_node, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    foreign = DevBackend(tmp_path / "elsewhere").create_invoice(amount_sats=9, memo="", expiry_seconds=600)
    entry = services.record_outgoing(payment_request=foreign.payment_request, source="test")
    assert (entry.status, entry.failure_reason) == (TxStatus.FAILED, "the dev node can only pay its own invoices")
    assert services.get_balance()["outgoing_total_sats"] == 0


def test_bad_invoices_are_refused_before_anything_is_written(transactional_db, dev_node):
    with pytest.raises(services.InvalidPayment, match="Not a valid BOLT11"):
        services.record_outgoing(payment_request="lnbcrt1garbage", source="test")
    assert not LedgerEntry.objects.exists()


def test_the_balance_follows_adr_018(transactional_db, dev_node):
    received = invoice(1000)
    services.mark_settled(payment_hash=received.payment_hash, preimage=dev_node.simulate_payment(received.payment_hash))
    invoice(500)  # pending incoming
    services.record_outgoing(
        payment_request=dev_node.create_invoice(amount_sats=300, memo="", expiry_seconds=600).payment_request,
        source="test",
    )
    # A pending outgoing payment (the node has not answered yet).
    LedgerEntry.objects.create(
        tx_type=TxType.OUTGOING, payment_hash=secrets.token_hex(32), amount_sats=50, source="test"
    )
    services._totals_add(TxType.OUTGOING, TxStatus.PENDING, count=1, amount_sats=50)
    LedgerEntry.objects.filter(tx_type=TxType.OUTGOING, status=TxStatus.SETTLED).update(fee_sats=2)
    services._totals_add(TxType.OUTGOING, TxStatus.SETTLED, count=0, amount_sats=0, fee_sats=2)
    assert services.get_balance() == {
        "incoming_total_sats": 1000,
        "outgoing_total_sats": 300,
        "fees_paid_sats": 2,
        "net_sats": 698,
        "pending_incoming_sats": 500,
        "pending_outgoing_sats": 50,
        "available_sats": 648,
    }
    assert services.totals_drift() == []


def test_a_completed_task_pays_its_winner_the_bid_once_and_a_failed_task_nothing(transactional_db, dev_node):
    funds = invoice(100)
    services.mark_settled(payment_hash=funds.payment_hash, preimage=dev_node.simulate_payment(funds.payment_hash))
    agent = AgentFactory(name="paid-agent")
    done = TaskFactory(
        status=Task.Status.COMPLETED, assigned_agent=agent, winning_bid_sats=42, finished_at=timezone.now()
    )
    TaskFactory(status=Task.Status.FAILED, assigned_agent=agent, winning_bid_sats=99, finished_at=timezone.now())
    assert worker.pay_completed_tasks(timezone.now()) == 1
    assert worker.pay_completed_tasks(timezone.now()) == 0
    [payment] = LedgerEntry.objects.filter(tx_type=TxType.OUTGOING)
    assert (payment.tx_type, payment.status, payment.amount_sats) == (TxType.OUTGOING, TxStatus.SETTLED, 42)
    assert (payment.task_id, payment.agent_id) == (done.pk, agent.pk)
    assert services.get_balance()["outgoing_total_sats"] == 42
    assert services.get_balance()["available_sats"] == 58
