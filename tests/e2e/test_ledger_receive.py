"""Receive on the ledger page in a real browser: an invoice with its QR code, paid with the dev node, and the page
following the invoice's state and the balance live, whichever process settles it."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from apps.ledger import services
from apps.ledger.backends.dev import DevBackend
from apps.ledger.models import LedgerEntry, TxStatus
from tests.e2e.conftest import RecordedPage, WebServer
from tests.e2e.test_ledger_page import TODAY_INCOMING

pytestmark = pytest.mark.e2e

SIMULATE = "Simulate payment (dev node: no real money)"


@pytest.fixture
def web_server(e2e_env: dict[str, str], tmp_path: Path, dev_node: DevBackend) -> Iterator[WebServer]:
    """daphne on the same dev node as this test (its data dir), whatever the environment says."""
    env = {**e2e_env, "TIMMY_DATA_DIR": str(tmp_path), "LIGHTNING_BACKEND": "dev"}
    server = WebServer(env=env, log_path=tmp_path / "daphne.log")
    server.start()
    yield server
    server.stop()


def card(page: Page, name: str) -> Any:
    return page.locator(f"#balance-{name} .ledger-sats")


def receive(page: Page, amount: str, memo: str) -> LedgerEntry:
    page.get_by_label("Amount (sats)").fill(amount)
    page.get_by_label("Memo").fill(memo)
    page.get_by_role("button", name="Create invoice").click()
    expect(page.locator("#ledger-invoice")).to_contain_text(memo)
    return LedgerEntry.objects.get(memo=memo)


def test_receive_500_sats_pay_with_the_dev_node_and_see_the_invoice_and_balance_change_live(
    staff: Any, staff_page: Page, recorded_page: RecordedPage, web_server: WebServer
):
    page = staff_page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web_server.url)
    page.goto("/lightning/ledger")
    expect(page.locator("#ledger-live")).to_have_attribute("data-state", "live")
    # Set once: still there at the end only if the page was never reloaded.
    page.evaluate("window.__notReloaded = true")

    entry = receive(page, "500", "Coffee for the swarm")
    invoice = page.locator("#ledger-invoice")
    expect(invoice.locator("#ledger-invoice-status")).to_have_text("Pending")
    expect(invoice.locator("svg.ledger-qr-code")).to_be_visible()
    expect(invoice.locator("#ledger-invoice-text")).to_have_text(entry.invoice)
    expect(card(page, "pending-in")).to_have_text("500")
    expect(page.locator(f"#entry-{entry.pk}")).to_contain_text("Pending")

    invoice.get_by_role("button", name="Copy invoice").click()
    expect(invoice.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == entry.invoice

    invoice.get_by_role("button", name=SIMULATE).click()
    expect(invoice.locator("#ledger-invoice-status")).to_have_text("Settled")
    expect(invoice.locator("svg")).to_have_count(0)
    expect(card(page, "available")).to_have_text("500")
    expect(card(page, "pending-in")).to_have_text("0")
    expect(page.locator(f"#entry-{entry.pk}")).to_contain_text("Settled")

    # Paid by another process (here the test's, as a wallet's payment reaching the node would be): only the
    # event feed can tell the page.
    second = receive(page, "250", "Second round")
    expect(card(page, "pending-in")).to_have_text("250")
    services.dev_simulate_payment(payment_hash=second.payment_hash, actor=staff)
    expect(invoice.locator("#ledger-invoice-status")).to_have_text("Settled")
    expect(card(page, "available")).to_have_text("750")
    expect(page.locator(f"#entry-{second.pk}")).to_contain_text("Settled")
    page.wait_for_function(f"() => ({TODAY_INCOMING})() === 750")  # the chart is redrawn with it too

    assert page.evaluate("window.__notReloaded") is True
    assert LedgerEntry.objects.filter(status=TxStatus.SETTLED).count() == 2
    assert recorded_page.js_errors == []
    assert recorded_page.external_requests() == []
