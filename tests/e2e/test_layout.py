from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from apps.swarm import services
from apps.swarm.models import Agent
from tests.e2e.conftest import PHONE, log_in
from tests.factories import AgentFactory

pytestmark = pytest.mark.e2e

NAV_LABELS = ["Home", "Swarm", "Events", "Live", "Ledger", "Memory", "Upgrades", "Router", "Admin"]
LONG_WORD = "https://example.invalid/" + "a-very-long-path-segment-" * 8


def seed_busy_swarm() -> None:
    """Enough on every page to stretch it: agents with long names, long tasks, events with long data."""
    AgentFactory(name="researcher-with-a-rather-long-name", status=Agent.Status.IDLE, keywords=["research"])
    AgentFactory(status=Agent.Status.IDLE, keywords=["code"])
    services.task_post(description=f"Research {LONG_WORD} and summarise it " * 4, auction_seconds=600)
    services.task_post(description="Fix the flaky test in the ledger reconciliation step", auction_seconds=1)
    services.auctions_close_due(now=timezone.now() + timedelta(seconds=2))
    services.task_post(description="Write the release notes " + "with many words " * 30, auction_seconds=600)


def horizontal_overflow(page: Page) -> dict[str, int]:
    return page.evaluate(
        "() => ({scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth})"
    )


def assert_no_horizontal_scroll(page: Page) -> None:
    size = horizontal_overflow(page)
    assert size["scrollWidth"] <= size["clientWidth"] + 1, f"{page.url} scrolls sideways on a phone: {size}"


def test_on_a_phone_every_nav_link_is_visible_and_reachable_and_nothing_scrolls_sideways(phone_page: Page, staff):
    page = phone_page
    seed_busy_swarm()
    log_in(page, staff.username, next_path="/swarm/")

    for path in ("/swarm/", "/swarm/events"):
        page.goto(path)
        expect(page.locator("main h1")).to_be_visible()
        assert_no_horizontal_scroll(page)

    # Each event's data is readable without scrolling the table sideways, and a row stays a few lines tall.
    data = page.locator("table.events td.data").first
    box = data.bounding_box()
    assert box is not None
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    assert box["width"] >= PHONE["width"] * 0.6, box
    row_heights = page.locator("table.events tbody tr").evaluate_all(
        "rows => rows.map(row => row.getBoundingClientRect().height)"
    )
    assert max(row_heights) < 200, row_heights

    nav = page.get_by_role("navigation", name="Main")
    hrefs = {}
    for label in NAV_LABELS:
        link = nav.get_by_role("link", name=label, exact=True)
        expect(link).to_be_visible()
        box = link.bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (label, box)
        assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"], (label, box)
        # Nothing covers it: a tap in its middle lands on the link.
        assert link.evaluate(
            "a => { const r = a.getBoundingClientRect();"
            " return a.contains(document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2)); }"
        ), f"{label} is covered by another element"
        hrefs[label] = link.get_attribute("href")

    for label, href in hrefs.items():
        page.goto("/swarm/events")
        with page.expect_response(lambda r, href=href: urlsplit(r.url).path == href) as response:
            nav.get_by_role("link", name=label, exact=True).click()
        assert response.value.status == 200, (label, href, response.value.status)
        page.wait_for_url(lambda url, href=href: urlsplit(url).path == href)
        if label != "Admin":  # Django's own admin has its own layout
            assert_no_horizontal_scroll(page)
