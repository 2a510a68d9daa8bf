"""/router/usage in a real browser: its two charts are drawn from the page's figures, days named in words."""

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page

from apps.providers.services import breaker_record_success
from tests.e2e.conftest import RecordedPage
from tests.providers.factories import ProviderFactory

pytestmark = pytest.mark.e2e

CHARTS = """() => ["usage-tokens-chart", "usage-latency-chart"].map((id) => {
  const chart = Chart.getChart(document.getElementById(id));
  return chart === undefined ? null : {labels: chart.data.labels, sets: chart.data.datasets.length};
})"""


def test_the_usage_page_draws_tokens_and_latency_per_day(staff_page: Page, recorded_page: RecordedPage):
    noon = timezone.localtime().replace(hour=12, minute=0, second=0, microsecond=0)
    for provider, days_ago, tokens in (("ollama", 0, (120, 30)), ("embedded", 2, (40, 9))):
        breaker_record_success(
            ProviderFactory(name=provider),
            now=noon - timedelta(days=days_ago),
            latency_ms=250,
            model="m",
            tokens_in=tokens[0],
            tokens_out=tokens[1],
        )
    page = staff_page
    page.goto("/router/usage?window=7d")
    page.wait_for_function("() => typeof Chart !== 'undefined' && Chart.getChart('usage-latency-chart') !== undefined")
    tokens, latency = page.evaluate(CHARTS)
    # One label per calendar day the window touches (seven days of 24 h span 8 of them), as a date in words
    # ("Dec 5"), the same on both charts.
    assert tokens["labels"] == latency["labels"] and len(tokens["labels"]) == 8
    assert noon.strftime("%b ") + str(noon.day) == tokens["labels"][-1]
    assert tokens["sets"] >= 2 and latency["sets"] >= 2
    assert recorded_page.js_errors == []
