import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from apps.events.models import Event
from apps.swarm.models import Agent
from tests.e2e.conftest import event_rows, post_task
from tests.factories import AgentFactory

pytestmark = pytest.mark.e2e

FORGED_LINE = "\r\n2026-01-01 00:00:00 INFO admin approved upgrade 7"
SCRIPT = "<script>window.__pwned=1</script>"
DESCRIPTION = f"Summarise the logs{FORGED_LINE} \x1b[31mred alert\x1b[0m \x1b]0;title\x07 {SCRIPT}"
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*strings_in(k), *strings_in(v))]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def assert_no_script_ran(page: Page) -> None:
    assert page.evaluate("() => typeof window.__pwned") == "undefined"
    # The only scripts on a page are the vendored files it links to.
    assert page.evaluate("() => document.querySelectorAll('script:not([src])').length") == 0


def terminal_escapes_in_dom(page: Page) -> list[str]:
    """What is left in the page's text of the ESC/BEL characters and the escape sequences around them."""
    text = page.evaluate("() => document.body.textContent")
    return re.findall(r".{0,12}[\x1b\x07\x9b].{0,12}|\[31m|\]0;title", text)


def assert_nothing_ran_and_no_control_reached_the_dom(page: Page) -> None:
    assert_no_script_ran(page)
    assert terminal_escapes_in_dom(page) == []


def test_forged_log_line_escapes_and_markup_in_a_task_are_one_line_of_text_in_the_event_log(staff_page: Page):
    page = staff_page
    AgentFactory(status=Agent.Status.IDLE, keywords=["summar"], base_bid_sats=10)

    task = post_task(page, DESCRIPTION)
    assert page.evaluate("() => typeof window.__pwned") == "undefined"

    # Stored: one line, no control character in any field of any of the task's events.
    events = list(Event.objects.filter(task_id=str(task.pk)))
    assert {e.event_type for e in events} >= {"task.created", "task.bidding", "bid.submitted"}
    for event in events:
        for value in (event.event_type, event.source, event.task_id, event.agent_id, *strings_in(event.data)):
            assert not CONTROL.search(value), (event, value)
    stored = next(e for e in events if e.event_type == "task.created").data["description"]
    assert re.fullmatch(
        r"Summarise the logs +2026-01-01 00:00:00 INFO admin approved upgrade 7 +red alert +" + re.escape(SCRIPT),
        stored,
    ), stored

    page.goto("/swarm/events")
    rows = event_rows(page)
    created = rows.filter(has_text="task.created").filter(has=page.locator(f'a[href="?task_id={task.pk}"]'))
    expect(created).to_have_count(1)
    data = created.locator("td.data")
    # Markup is text: the <script> is there to read, literally, and nothing ran.
    expect(data).to_contain_text(SCRIPT)
    expect(data).to_contain_text(re.compile(r"Summarise the logs +2026-01-01 00:00:00 INFO admin approved upgrade 7"))
    assert data.locator("script, br").count() == 0
    # The forged line did not become a row of its own, nor a line inside one.
    expect(rows.filter(has_text="admin approved upgrade 7")).to_have_count(1)
    for cell_text in rows.locator("td").evaluate_all("cells => cells.map(cell => cell.innerText.trim())"):
        assert "\n" not in cell_text and "\r" not in cell_text, cell_text
    assert_nothing_ran_and_no_control_reached_the_dom(page)


def test_forged_log_line_escapes_and_markup_in_a_task_reach_neither_the_board_nor_the_task_page(staff_page: Page):
    page = staff_page
    task = post_task(page, DESCRIPTION)
    escapes: dict[str, list[str]] = {}

    # /swarm/ shows the task (its open auction) with the start of its description.
    expect(page.locator("#swarm-board")).to_contain_text("<script>window.__pw")  # truncated there
    assert_no_script_ran(page)
    escapes["/swarm/"] = terminal_escapes_in_dom(page)

    page.goto(task.get_absolute_url())
    expect(page.get_by_role("heading", name=f"Task {task.pk}")).to_be_visible()
    description = page.locator(".description")
    expect(description).to_contain_text(SCRIPT)
    assert description.locator("script").count() == 0
    timeline = page.locator(".timeline li")
    expect(timeline.filter(has_text="task.created")).to_have_count(1)
    for row_text in timeline.evaluate_all("rows => rows.map(row => row.innerText.trim())"):
        assert "\n" not in row_text and "\r" not in row_text, row_text
    assert_no_script_ran(page)
    escapes[task.get_absolute_url()] = terminal_escapes_in_dom(page)

    assert escapes == {"/swarm/": [], task.get_absolute_url(): []}, "terminal escapes reached the page text"
