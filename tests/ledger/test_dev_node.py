"""The embedded dev node: real BOLT11 invoices, signed by a key that outlives the process, settled only with
the preimage."""

import hashlib
import os
import stat

import bolt11
import pytest
from django.utils import timezone

from apps.ledger.backends.base import BackendError, InvoiceState, PaymentState
from apps.ledger.backends.dev import KEY_FILE, DevBackend
from apps.ledger.models import DevInvoice


def test_an_invoice_decodes_with_the_standard_decoder_signed_by_the_node_key(dev_node, tmp_path):
    invoice = dev_node.create_invoice(amount_sats=1234, memo="coffee for Timmy", expiry_seconds=600)
    decoded = bolt11.decode(invoice.payment_request)
    assert invoice.payment_request.startswith("lnbcrt")  # regtest: never mistaken for real bitcoin
    assert decoded.amount_msat == 1_234_000
    assert decoded.payment_hash == invoice.payment_hash
    assert decoded.description == "coffee for Timmy"
    assert decoded.expiry == 600
    # The decoder recovers the signer from the signature: it is the node's key.
    assert decoded.payee == dev_node.pubkey
    key_file = tmp_path / KEY_FILE
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600


def test_the_node_and_its_invoices_survive_a_restart(dev_node, tmp_path):
    invoice = dev_node.create_invoice(amount_sats=10, memo="", expiry_seconds=600)
    restarted = DevBackend(tmp_path)
    assert restarted.pubkey == dev_node.pubkey
    assert restarted.lookup_invoice(invoice.payment_hash).state == InvoiceState.OPEN
    preimage = restarted.simulate_payment(invoice.payment_hash)
    assert hashlib.sha256(bytes.fromhex(preimage)).hexdigest() == invoice.payment_hash
    status = dev_node.lookup_invoice(invoice.payment_hash)
    assert (status.state, status.preimage) == (InvoiceState.SETTLED, preimage)


def test_the_node_pays_its_own_invoices_once_and_no_one_elses(dev_node, tmp_path):
    invoice = dev_node.create_invoice(amount_sats=50, memo="agent pay", expiry_seconds=600)
    paid = dev_node.pay_invoice(invoice.payment_request, timeout_seconds=5)
    assert paid.state == PaymentState.SUCCEEDED
    assert hashlib.sha256(bytes.fromhex(paid.preimage)).hexdigest() == invoice.payment_hash
    again = dev_node.pay_invoice(invoice.payment_request, timeout_seconds=5)
    assert again.state == PaymentState.FAILED and "settled" in again.failure_reason

    (tmp_path / "other-node").mkdir()
    other = DevBackend(tmp_path / "other-node")
    foreign = other.create_invoice(amount_sats=50, memo="", expiry_seconds=600)
    refused = dev_node.pay_invoice(foreign.payment_request, timeout_seconds=5)
    assert refused.state == PaymentState.FAILED and "own invoices" in refused.failure_reason
    assert dev_node.lookup_payment(foreign.payment_hash).state == PaymentState.FAILED


def test_an_expired_invoice_cannot_be_paid(dev_node):
    invoice = dev_node.create_invoice(amount_sats=5, memo="", expiry_seconds=600)
    DevInvoice.objects.filter(payment_hash=invoice.payment_hash).update(expires_at=timezone.now())
    assert dev_node.lookup_invoice(invoice.payment_hash).state == InvoiceState.EXPIRED
    with pytest.raises(BackendError, match="expired"):
        dev_node.simulate_payment(invoice.payment_hash)


def test_garbage_is_not_an_invoice(dev_node):
    with pytest.raises(BackendError, match="Not a valid BOLT11 invoice"):
        dev_node.pay_invoice("lnbc1notaninvoice", timeout_seconds=5)
