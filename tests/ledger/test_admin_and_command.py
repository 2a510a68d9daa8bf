"""The ledger in the admin (a read-only audit with CSV export and reconcile) and `manage.py ledger_reconcile`."""

import csv
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.ledger import services
from apps.ledger.models import DevInvoice, LedgerEntry, TxStatus


@pytest.fixture
def entries(dev_node):
    settled = services.create_invoice_entry(amount_sats=120, memo="=HYPERLINK(evil)", source="test")
    services.mark_settled(payment_hash=settled.payment_hash, preimage=dev_node.simulate_payment(settled.payment_hash))
    pending = services.create_invoice_entry(amount_sats=30, memo="still open", source="test")
    return LedgerEntry.objects.get(pk=settled.pk), pending


def test_the_admin_shows_entries_but_offers_no_way_to_edit_or_delete_them(admin_client, entries):
    settled, _ = entries
    listing = admin_client.get(reverse("admin:ledger_ledgerentry_changelist"))
    assert listing.status_code == 200 and b"still open" in listing.content
    assert admin_client.get(reverse("admin:ledger_ledgerentry_add")).status_code == 403
    change = admin_client.get(reverse("admin:ledger_ledgerentry_change", args=[settled.pk]))
    assert change.status_code == 200 and b'name="amount_sats"' not in change.content
    deleted = admin_client.post(reverse("admin:ledger_ledgerentry_delete", args=[settled.pk]), {"post": "yes"})
    assert deleted.status_code == 403 and LedgerEntry.objects.filter(pk=settled.pk).exists()


def test_the_csv_export_has_the_proof_of_payment_and_defuses_formulas(admin_client, entries):
    settled, pending = entries
    response = admin_client.post(
        reverse("admin:ledger_ledgerentry_changelist"),
        {"action": "export_csv", "_selected_action": [settled.pk, pending.pk]},
    )
    rows = list(csv.DictReader(StringIO(b"".join(response.streaming_content).decode())))
    assert response["Content-Type"] == "text/csv"
    assert [r["status"] for r in rows] == ["settled", "pending"]
    assert rows[0]["preimage"] == settled.preimage and rows[0]["amount_sats"] == "120"
    assert rows[0]["memo"] == "'=HYPERLINK(evil)"


def test_the_reconcile_action_reports_what_it_did(admin_client, entries, dev_node):
    _, pending = entries
    dev_node.simulate_payment(pending.payment_hash)
    response = admin_client.post(
        reverse("admin:ledger_ledgerentry_changelist"),
        {"action": "reconcile", "_selected_action": [pending.pk]},
        follow=True,
    )
    assert b"Checked 1 pending entries: 1 settled" in response.content
    assert LedgerEntry.objects.get(pk=pending.pk).status == TxStatus.SETTLED


def test_the_command_reconciles_and_fails_when_the_ledger_drifted(entries, dev_node):
    _, pending = entries
    out = StringIO()
    call_command("ledger_reconcile", stdout=out)
    assert "Checked 1 pending entries: 0 settled, 0 failed, 0 expired, 1 still pending." in out.getvalue()
    DevInvoice.objects.filter(payment_hash=pending.payment_hash).delete()
    err = StringIO()
    with pytest.raises(CommandError, match="disagreement"):
        call_command("ledger_reconcile", stdout=StringIO(), stderr=err)
    assert "unknown to the node" in err.getvalue()
    with pytest.raises(CommandError, match="at least 1"):
        call_command("ledger_reconcile", "--limit", "0")
