"""The ledger page in a real browser: a pending invoice of the dev node paid with "Simulate payment"."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from apps.ledger import services
from apps.ledger.backends.dev import DevBackend
from apps.ledger.models import LedgerEntry, TxStatus
from tests.e2e.conftest import RecordedPage, WebServer

pytestmark = pytest.mark.e2e

CHART_DRAWN = """() => {
  const canvas = document.getElementById("ledger-chart-canvas");
  return canvas !== null && typeof Chart !== "undefined" && Chart.getChart(canvas) !== undefined
    && canvas.width > 0 && canvas.height > 0;
}"""
TODAY_INCOMING = """() => {
  const data = Chart.getChart(document.getElementById("ledger-chart-canvas")).data.datasets[0].data;
  return data[data.length - 1];
}"""


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


def test_staff_simulate_a_payment_and_see_it_settled_with_the_balance_and_chart_updated(
    staff_page: Page, recorded_page: RecordedPage, dev_node: DevBackend
):
    entry = services.create_invoice_entry(amount_sats=2100, memo="Weather API call", source="l402:/api/v1/weather")
    page = staff_page
    page.goto("/lightning/ledger")
    row = page.locator(f"#entry-{entry.pk}")
    expect(row).to_contain_text("Pending")
    expect(row).to_contain_text("Weather API call")
    expect(card(page, "pending-in")).to_have_text("2,100")
    expect(card(page, "available")).to_have_text("0")
    page.wait_for_function(CHART_DRAWN)
    assert page.evaluate(TODAY_INCOMING) == 0

    row.get_by_role("button", name="Simulate payment").click()
    expect(page.locator("#ledger-results .messages")).to_contain_text("Simulated a payment of 2,100 sats")
    expect(row).to_contain_text("Settled")
    expect(row.get_by_role("button", name="Simulate payment")).to_have_count(0)
    expect(card(page, "available")).to_have_text("2,100")
    expect(card(page, "pending-in")).to_have_text("0")
    expect(page.locator("#ledger-earnings")).to_contain_text("/api/v1/weather")
    # The same chart, redrawn with today's payment.
    page.wait_for_function(f"() => ({TODAY_INCOMING})() === 2100")
    assert page.evaluate(CHART_DRAWN)
    assert LedgerEntry.objects.get(pk=entry.pk).status == TxStatus.SETTLED

    # A reload (no htmx) shows the same.
    page.reload()
    expect(page.locator(f"#entry-{entry.pk}")).to_contain_text("Settled")
    page.wait_for_function(CHART_DRAWN)
    assert page.evaluate(TODAY_INCOMING) == 2100
    assert recorded_page.js_errors == []
    assert recorded_page.external_requests() == []
