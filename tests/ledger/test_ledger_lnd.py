"""The ledger on the `lnd` backend, against a local server that speaks LND's REST API over TLS."""

import time
from collections.abc import Iterator

import pytest

from apps.ledger import services
from apps.ledger.models import LedgerEntry, TxStatus
from tests.ledger.helpers import lnd_backend
from tests.lnd_server import LndServer


@pytest.fixture
def lnd(settings, transactional_db) -> Iterator[LndServer]:
    with lnd_backend(settings) as server:
        yield server


def test_an_invoice_paid_at_the_node_is_settled_by_reconcile_with_its_preimage(lnd):
    entry = services.create_invoice_entry(amount_sats=210, memo="from afar", source="test")
    assert entry.invoice.startswith("lnbcrt")
    assert services.reconcile().still_pending == 1
    preimage = lnd.settle(entry.payment_hash)
    report = services.reconcile()
    assert (report.settled, report.drift) == (1, [])
    settled = LedgerEntry.objects.get(pk=entry.pk)
    assert (settled.status, settled.preimage) == (TxStatus.SETTLED, preimage)
    assert services.get_balance()["incoming_total_sats"] == 210


def test_an_invoice_the_node_let_expire_is_recorded_as_expired(lnd):
    entry = services.create_invoice_entry(amount_sats=5, source="test")
    lnd.expire(entry.payment_hash)
    assert services.reconcile().expired == 1
    assert LedgerEntry.objects.get(pk=entry.pk).status == TxStatus.EXPIRED


def test_a_payment_in_flight_stays_pending_then_is_failed_when_the_node_gives_up(lnd):
    lnd.plan_payments(outcome="FAILED", in_flight_seconds=1.5)
    entry = services.record_outgoing(payment_request=lnd.external_invoice(70), source="test", timeout_seconds=1)
    assert entry.status == TxStatus.PENDING
    assert services.get_balance()["pending_outgoing_sats"] == 70
    time.sleep(1.6)
    report = services.reconcile()
    assert report.failed == 1
    failed = LedgerEntry.objects.get(pk=entry.pk)
    assert (failed.status, failed.failure_reason) == (TxStatus.FAILED, "FAILURE_REASON_NO_ROUTE")
    assert services.get_balance()["pending_outgoing_sats"] == 0


def test_a_payment_that_succeeds_records_its_fee(lnd):
    lnd.plan_payments(outcome="SUCCEEDED", fee_sats=3)
    entry = services.record_outgoing(payment_request=lnd.external_invoice(400), source="test")
    assert (entry.status, entry.fee_sats) == (TxStatus.SETTLED, 3)
    balance = services.get_balance()
    assert (balance["outgoing_total_sats"], balance["fees_paid_sats"], balance["net_sats"]) == (400, 3, -403)


def test_when_the_node_is_down_a_payment_stays_pending_and_nothing_is_lost(lnd):
    request = lnd.external_invoice(11)
    lnd.mode = "error500"
    entry = services.record_outgoing(payment_request=request, source="test", timeout_seconds=1)
    assert entry.status == TxStatus.PENDING
    report = services.reconcile()
    assert report.unreachable and report.still_pending == 1
    assert LedgerEntry.objects.get(pk=entry.pk).status == TxStatus.PENDING


def test_the_dev_nodes_simulated_payments_are_refused_with_lnd(lnd, admin_user):
    entry = services.create_invoice_entry(amount_sats=5, source="test")
    with pytest.raises(services.NotDevMode):
        services.dev_simulate_payment(payment_hash=entry.payment_hash, actor=admin_user)
