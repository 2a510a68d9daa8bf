"""The live activity feed (ADR-022) in a real Chromium, against a real daphne, worker and `manage.py` processes.

Events come from other processes than the web server's (the worker, `run_tool`, this test's own `log_event`),
so they reach the page only through the server's follower of the event table, as in production.
"""

import re
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.db import transaction
from playwright.sync_api import Locator, Page, WebSocketRoute, expect

from apps.events.models import Event
from apps.events.services import log_event
from apps.swarm.models import Agent
from tests.e2e.conftest import PHONE, RecordedPage, WebServer, Worker, log_in, post_task
from tests.events.factories import EventFactory
from tests.factories import AgentFactory

pytestmark = pytest.mark.e2e

RunManage = Callable[..., subprocess.CompletedProcess[str]]

LATENCY_MAX_SECONDS = 1.0
CONNECT_TIMEOUT_MS = 10_000
# Longest a page waits before retrying its socket (30 s at most) and a little more for the server to answer.
RECONNECT_TIMEOUT_MS = 40_000
# Three failed connections (waits of up to 1 s and 2 s between them), then the first poll.
FALLBACK_TIMEOUT_MS = 15_000
POLL_TIMEOUT_MS = 5_000  # the page polls every 2 s

PAYLOAD = "<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script>"

# When each item was put in the page (Date.now(), by id): installed before the page's own scripts run.
RECORD_ARRIVALS = """
window.__arrivals = {};
new MutationObserver((records) => {
  const now = Date.now();
  for (const record of records) {
    for (const node of record.addedNodes) {
      if (node.nodeType === 1 && node.matches("li.live-item") && !(node.dataset.id in window.__arrivals)) {
        window.__arrivals[node.dataset.id] = now;
      }
    }
  }
}).observe(document, { childList: true, subtree: true });
"""


def status(page: Page) -> Locator:
    return page.locator(".live-feed .live-status")


def item(page: Page, event_id: int) -> Locator:
    return page.locator(f'.live-feed li.live-item[data-id="{event_id}"]')


def shown_ids(page: Page) -> list[int]:
    return [int(i) for i in page.locator(".live-feed li.live-item").evaluate_all("els => els.map(e => e.dataset.id)")]


def shown_types(page: Page) -> set[str]:
    return set(page.locator(".live-feed li.live-item").evaluate_all("els => els.map(e => e.dataset.type)"))


def open_live(page: Page, path: str = "/swarm/live") -> int:
    """Open a page with the panel, wait until it is live, and return the id it resumed after."""
    page.goto(path)
    expect(status(page)).to_have_text("live", timeout=CONNECT_TIMEOUT_MS)
    return int(page.locator(".live-feed").get_attribute("data-since") or 0)


def assert_in_order_without_duplicates(page: Page) -> list[int]:
    ids = shown_ids(page)
    assert len(ids) == len(set(ids)), f"shown twice: {sorted(i for i in set(ids) if ids.count(i) > 1)}"
    assert ids == sorted(ids, reverse=True), f"not newest first: {ids}"
    return ids


def wait_until(page: Page, condition: Callable[[], bool], *, seconds: float) -> None:
    """Let the page run (and Playwright dispatch its events) until `condition` holds, for `seconds` at most."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {seconds} s: {condition}")
        page.wait_for_timeout(100)


def run_tool(run_manage: RunManage, name: str = "swarm_status") -> list[Event]:
    """Run a tool in a `manage.py` process of its own; return the tool.called and tool.completed it logged."""
    latest = Event.objects.order_by("-id").values_list("id", flat=True).first() or 0
    result = run_manage("run_tool", name, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    events = list(Event.objects.filter(id__gt=latest, source="cli").order_by("id"))
    assert [e.event_type for e in events] == ["tool.called", "tool.completed"], events
    return events


def latencies(page: Page, events: list[Event]) -> dict[int, float]:
    """Seconds from each event's timestamp (written by its process) to its item appearing in the page."""
    arrivals = page.evaluate("() => window.__arrivals")
    return {e.id: arrivals[str(e.id)] / 1000 - e.timestamp.timestamp() for e in events}


def test_events_of_the_web_server_the_worker_and_a_command_reach_the_page_within_a_second(
    page: Page, staff: Any, worker: Worker, run_manage: RunManage, channel_backend: str
):
    AgentFactory(name="scout", status=Agent.Status.IDLE, keywords=["research"], base_bid_sats=30)
    AgentFactory(name="smith", status=Agent.Status.IDLE, keywords=["code"], base_bid_sats=60)
    page.add_init_script(RECORD_ARRIVALS)
    log_in(page, staff.username, next_path="/swarm/live")
    since = open_live(page)
    worker.start()

    # Someone posts a task on the Swarm page (the web server logs it, its auction and the bids); the worker
    # closes the auction a second later, in its own process; then a command runs a tool in a third.
    poster = page.context.new_page()
    task = post_task(poster, "Research the live feed")
    poster.close()
    assigned = page.locator(".live-item[data-type='task.assigned']").filter(
        has=page.locator(f'a[href="/swarm/events?task_id={task.pk}"]')
    )
    expect(assigned).to_have_count(1, timeout=15_000)
    expect(assigned.locator(".live-text")).to_have_text("Assigned for 30 sats")
    expect(assigned.locator(".live-agent")).to_have_text("scout")
    tools = run_tool(run_manage)
    for event in tools:
        expect(item(page, event.id)).to_have_count(1)

    events = list(Event.objects.filter(id__gt=since).order_by("id"))
    assert {"task.created", "task.bidding", "bid.submitted", "task.assigned", "tool.called", "tool.completed"} <= {
        e.event_type for e in events
    }
    for event in events:
        expect(item(page, event.id)).to_have_count(1)
    seconds = latencies(page, events)
    report = ", ".join(f"{e.event_type} #{e.id}: {seconds[e.id]:.3f} s" for e in events)
    print(
        f"\nlive feed latency ({channel_backend}, {len(events)} events): max {max(seconds.values()):.3f} s,"
        f" median {statistics.median(seconds.values()):.3f} s"
    )
    assert max(seconds.values()) <= LATENCY_MAX_SECONDS, report
    assert min(seconds.values()) >= 0, report
    assert_in_order_without_duplicates(page)


def test_after_the_web_server_restarts_the_page_reconnects_and_shows_what_happened_meanwhile(
    staff_page: Page, web_server: WebServer, run_manage: RunManage
):
    page = staff_page
    before = [log_event("task.created", source="swarm", task_id=n, data={"description": f"t{n}"}) for n in (1, 2)]
    open_live(page)
    for event in before:
        expect(item(page, event.id)).to_have_count(1)

    web_server.stop()
    expect(status(page)).to_contain_text(re.compile(r"reconnecting in \d+s"))
    missed = run_tool(run_manage)  # written while no web server runs
    web_server.start()

    expect(status(page)).to_have_text("live", timeout=RECONNECT_TIMEOUT_MS)
    for event in missed:
        expect(item(page, event.id)).to_have_count(1)
    expect(item(page, missed[1].id).locator(".live-text")).to_have_text("Tool completed: swarm_status")

    # And it is live again: what happens next comes through the new connection, once.
    after = log_event("task.failed", source="worker", task_id=2, data={"reason": "gave up"})
    expect(item(page, after.id)).to_have_count(1, timeout=2_000)
    assert assert_in_order_without_duplicates(page) == [after.id, missed[1].id, missed[0].id] + [
        e.id for e in reversed(before)
    ]


def test_after_a_crash_of_the_web_server_the_page_comes_back_by_itself(staff_page: Page, web_server: WebServer):
    page = staff_page
    open_live(page)

    web_server.restart(kill=True)
    expect(status(page)).to_have_text("live", timeout=RECONNECT_TIMEOUT_MS)
    event = log_event("agent.joined", source="worker", agent_id=5, data={"agent": "echo"})
    expect(item(page, event.id)).to_have_count(1, timeout=2_000)
    assert_in_order_without_duplicates(page)


def test_a_page_whose_session_ended_is_refused_and_says_so(staff_page: Page, web_server: WebServer):
    page = staff_page
    open_live(page)

    page.context.clear_cookies()
    web_server.restart()

    # The socket is refused without a session, and so is the API the page then polls.
    expect(page.get_by_role("alert")).to_have_text(
        "You are logged out: reload the page to log in again.", timeout=FALLBACK_TIMEOUT_MS
    )
    expect(status(page)).to_contain_text("reconnecting in")
    page.reload()
    assert urlsplit(page.url).path == "/accounts/login/"


def assert_markup_is_text_and_nothing_ran(recorded: RecordedPage, events: dict[str, Event]) -> None:
    page = recorded.page
    created = item(page, events["created"].id)
    expect(created.locator(".live-text")).to_have_text(f"New task: {PAYLOAD}")
    expect(created.locator(".live-text")).to_have_attribute("title", f"New task: {PAYLOAD}")
    expect(created.locator(".live-task")).to_have_text("task #<b>1</b>")
    expect(item(page, events["bid"].id).locator(".live-agent")).to_have_text(PAYLOAD)
    expect(item(page, events["upgrade"].id).locator(".live-text")).to_have_text(f"Upgrade #1 proposed on {PAYLOAD}")
    # The data behind the words is shown as text too, a click away.
    expect(item(page, events["upgrade"].id).locator(".live-data")).to_contain_text(f'"branch": "{PAYLOAD}"')
    expect(item(page, events["error"].id).locator(".live-text")).to_have_text(
        f"Error: {PAYLOAD} (in <svg onload=window.__pwned=3>)"
    )
    assert page.locator(".live-feed img, .live-feed script, .live-feed svg, .live-feed b").count() == 0
    # A round trip through the page's event loop: an <img> created by the page would have asked for "x" by now.
    page.evaluate("() => fetch('/accounts/login/').then(r => r.status)")
    assert [url for url in recorded.requests if url.rsplit("/", 1)[-1] == "x"] == []
    assert page.evaluate("() => typeof window.__pwned") == "undefined"
    assert page.evaluate("() => document.querySelectorAll('script:not([src])').length") == 0


def test_markup_in_events_is_shown_as_text_and_never_runs(recorded_page: RecordedPage, staff: Any):
    page = recorded_page.page
    log_in(page, staff.username, next_path="/swarm/live")
    open_live(page)

    events = {
        "created": log_event("task.created", source="swarm", task_id="<b>1</b>", data={"description": PAYLOAD}),
        "bid": log_event("bid.submitted", source="auction", agent_id="9", data={"agent": PAYLOAD, "amount_sats": 5}),
        "upgrade": log_event("upgrade.proposed", source="upgrades", data={"upgrade_id": 1, "branch": PAYLOAD}),
        "error": log_event(
            "system.error", source="worker", data={"message": PAYLOAD, "step": "<svg onload=window.__pwned=3>"}
        ),
    }
    for event in events.values():
        expect(item(page, event.id)).to_have_count(1)
    assert_markup_is_text_and_nothing_ran(recorded_page, events)  # as the script built them

    page.reload()
    expect(status(page)).to_have_text("live", timeout=CONNECT_TIMEOUT_MS)
    assert_markup_is_text_and_nothing_ran(recorded_page, events)  # as the server rendered them
    assert recorded_page.js_errors == []


def test_choosing_a_type_shows_only_that_type_and_keeps_new_events_of_other_types_out(
    staff_page: Page, run_manage: RunManage
):
    page = staff_page
    older_tool = run_tool(run_manage)
    older_task = log_event("task.created", source="swarm", task_id=1, data={"description": "older"})
    open_live(page)
    expect(page.locator(".live-feed li.live-item")).to_have_count(3)

    page.get_by_label("Type").select_option("tool.completed")
    expect(page.locator(".live-feed li.live-item")).to_have_count(1)
    expect(item(page, older_tool[1].id)).to_have_count(1)
    assert page.url.endswith("/swarm/live?event_type=tool.completed")

    other = log_event("task.created", source="swarm", task_id=2, data={"description": "not a tool"})
    newer_tool = run_tool(run_manage)
    expect(item(page, newer_tool[1].id)).to_have_count(1, timeout=2_000)
    # The tool.called before it and the task.created before that were sent first, if sent at all.
    assert shown_types(page) == {"tool.completed"}
    assert assert_in_order_without_duplicates(page) == [newer_tool[1].id, older_tool[1].id]
    assert item(page, other.id).count() == 0
    expect(status(page)).to_have_text("live")

    # The address keeps the choice: a reload shows the same, rendered by the server.
    page.reload()
    expect(page.get_by_label("Type")).to_have_value("tool.completed")
    assert shown_ids(page) == [newer_tool[1].id, older_tool[1].id]
    expect(status(page)).to_have_text("live", timeout=CONNECT_TIMEOUT_MS)

    # Back to every type: the list has them all again, in order, and stays live.
    page.get_by_label("Type").select_option("")
    expected = [*reversed(newer_tool), other, older_task, *reversed(older_tool)]
    expect(page.locator(".live-feed li.live-item")).to_have_count(len(expected))
    assert assert_in_order_without_duplicates(page) == [e.id for e in expected]
    assert page.url.endswith("/swarm/live")
    last = log_event("task.failed", source="worker", task_id=2, data={"reason": "r"})
    expect(item(page, last.id)).to_have_count(1, timeout=2_000)

    # A whole family: every type of it, those shown already and those to come, and nothing else.
    page.get_by_label("Type").select_option("tool.*")
    expect(page.locator(".live-feed li.live-item")).to_have_count(4)
    log_event("task.created", source="swarm", task_id=3, data={"description": "not a tool"})
    newest = log_event("tool.called", source="cli", data={"tool": "swarm_status", "arguments": {}})
    expect(item(page, newest.id)).to_have_count(1, timeout=2_000)
    assert shown_types(page) == {"tool.called", "tool.completed"}
    assert page.url.endswith("/swarm/live?event_type=tool.*")


def test_when_websockets_are_blocked_the_page_polls_and_goes_live_once_they_are_back(
    staff_page: Page, run_manage: RunManage
):
    page = staff_page
    blocked = True
    attempts: list[str] = []

    def gate(ws: WebSocketRoute) -> None:
        attempts.append(ws.url)
        if blocked:
            ws.close(code=1011, reason="blocked by the test")
        else:
            ws.connect_to_server()

    page.route_web_socket(re.compile(r"/ws/events/$"), gate)
    page.goto("/swarm/live")
    expect(status(page)).to_have_text("polling", timeout=FALLBACK_TIMEOUT_MS)
    assert len(attempts) == 3  # it polls after the third failure (the fourth attempt is 2 s away at least)

    events = run_tool(run_manage)
    for event in events:
        expect(item(page, event.id)).to_have_count(1, timeout=POLL_TIMEOUT_MS)
    # It keeps trying the socket in the background (the fourth attempt comes 2 to 4 s after the third).
    wait_until(page, lambda: len(attempts) >= 4, seconds=5)
    expect(status(page)).to_have_text("polling")

    blocked = False
    expect(status(page)).to_have_text("live", timeout=RECONNECT_TIMEOUT_MS)
    after = log_event("task.created", source="swarm", task_id=3, data={"description": "live again"})
    expect(item(page, after.id)).to_have_count(1, timeout=2_000)
    assert_in_order_without_duplicates(page)


def test_a_browser_without_websockets_polls(staff_page: Page, run_manage: RunManage):
    page = staff_page
    page.add_init_script("window.WebSocket = undefined;")
    page.goto("/swarm/live")
    expect(status(page)).to_have_text("polling", timeout=POLL_TIMEOUT_MS)

    events = run_tool(run_manage)
    for event in events:
        expect(item(page, event.id)).to_have_count(1, timeout=POLL_TIMEOUT_MS)
    assert_in_order_without_duplicates(page)


def burst(count: int) -> list[Event]:
    with transaction.atomic():  # committed at once: the server's follower offers them all in one go
        return [log_event("tool.called", source="bench", data={"tool": f"t{n}"}) for n in range(count)]


def test_events_the_server_skipped_for_a_slow_page_are_fetched_from_the_api(
    recorded_page: RecordedPage, staff_page: Page, web_server: WebServer
):
    page = staff_page
    # A buffer of 5 events per client: a burst overflows it at once.
    web_server.stop()
    web_server.env = {**web_server.env, "ACTIVITY_FEED_BUFFER": "5"}
    web_server.start()
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))))
    open_live(page)
    items = page.locator(".live-feed li.live-item")

    def api_requests(param: str) -> list[str]:
        return [url for url in recorded_page.requests if "/api/v1/events?" in url and f"{param}=" in url]

    # Fewer than the list holds: the page pages through the range the server skipped (since_id).
    first = burst(150)
    expect(items).to_have_count(150, timeout=10_000)
    assert assert_in_order_without_duplicates(page) == [e.id for e in reversed(first)]
    assert len([f for f in frames if '"skipped"' in f]) == 1, frames[:8]
    assert api_requests("since_id") and not api_requests("before_id")

    # More than the list holds: only the newest 200 can be shown, so it asks for those (before_id), newest first.
    second = burst(400)
    expect(item(page, second[-1].id)).to_have_count(1, timeout=10_000)
    expect(items).to_have_count(200)
    assert assert_in_order_without_duplicates(page) == [e.id for e in reversed(second)][:200]
    assert len([f for f in frames if '"skipped"' in f]) == 2, frames[-8:]
    assert len(api_requests("before_id")) == 1
    expect(status(page)).to_have_text("live")


def test_the_home_page_panel_shows_new_events_live_and_keeps_ten(staff_page: Page, run_manage: RunManage):
    page = staff_page
    EventFactory.create_batch(10, event_type="agent.joined", data={"agent": "echo"})
    open_live(page, "/")
    expect(page.locator(".live-feed li.live-item")).to_have_count(10)
    expect(page.locator(".live-feed .live-filter")).to_have_count(0)

    events = run_tool(run_manage, "recent_activity")
    for event in events:
        expect(item(page, event.id)).to_have_count(1, timeout=2_000)
    expect(page.locator(".live-feed li.live-item").first).to_contain_text("Tool completed: recent_activity")
    expect(page.locator(".live-feed li.live-item")).to_have_count(10)
    assert_in_order_without_duplicates(page)
    page.get_by_role("link", name="Show all events").click()
    page.wait_for_url("**/swarm/events")


def test_items_built_by_the_script_read_as_those_the_server_renders(staff_page: Page):
    """The template and the script each render events: both say the same for every type."""
    page = staff_page
    agent = AgentFactory(name="scout", status=Agent.Status.IDLE)
    open_live(page)
    samples = [
        ("task.created", {"description": "Research the sat"}),
        ("task.bidding", {"auction_seconds": 15, "closes_at": "2026-01-01T00:00:00+00:00"}),
        ("bid.submitted", {"agent": "scout", "amount_sats": 42}),
        ("task.assigned", {"agent": "scout", "amount_sats": 42, "bids": 2}),
        ("task.assigned", {"recovered": True, "reason": "worker w stopped renewing its lease; will retry"}),
        ("task.started", {"worker": "w", "attempt": 2}),
        ("task.completed", {"result": "Done", "winning_bid_sats": 42}),
        ("task.failed", {"reason": "No agent bid."}),
        ("agent.joined", {"agent": "scout", "persona": "echo"}),
        ("agent.left", {"agent": "scout"}),
        ("tool.called", {"tool": "swarm_status", "arguments": {}}),
        ("tool.completed", {"tool": "web", "ok": False, "error": "Timeout", "duration_ms": 3}),
        ("system.error", {"step": "close_due_auctions", "error": "OperationalError", "message": "locked"}),
        ("payment.settled", {"amount_sats": 42, "memo": "ünïcode ✓", "nested": {"b": [1, "x"], "a": None}}),
        ("memory.stored", {}),
    ]
    events = [log_event(t, source="test", task_id=7, agent_id=agent.pk, data=d) for t, d in samples]
    expect(item(page, events[-1].id)).to_have_count(1)

    def texts() -> list[list[str]]:
        return [
            item(page, e.id).evaluate(
                "li => [li.dataset.type, getComputedStyle(li.querySelector('.live-icon'), '::before').content,"
                " li.querySelector('time').textContent, li.querySelector('time').title,"
                " li.querySelector('.live-text').textContent, li.querySelector('.live-text').title,"
                " ...[...li.querySelectorAll('.live-refs a')].map(a => `${a.textContent} ${a.getAttribute('href')}`)]"
            )
            for e in events
        ]

    built = texts()
    page.reload()
    expect(status(page)).to_have_text("live", timeout=CONNECT_TIMEOUT_MS)
    rendered = texts()
    assert built == rendered
    assert re.fullmatch(r"\d\d:\d\d:\d\d", built[0][2])
    assert built[0][4] == "New task: Research the sat"
    assert built[5][4] == "Started (attempt 2)"
    assert "scout /swarm/events?agent_id=" in built[5][-1]  # named, though task.started does not carry the name
    assert len({row[1] for row in built}) == len(samples) - 1  # an icon per type (two task.assigned)


def test_on_a_phone_the_feed_fits_the_screen(phone_page: Page, staff: Any):
    page = phone_page
    long_word = "https://example.invalid/" + "a-very-long-path-segment-" * 8
    log_event("task.created", source="swarm", task_id=123456, data={"description": f"Research {long_word} " * 3})
    log_event("bid.submitted", source="auction", task_id=123456, agent_id=9, data={"agent": "a" * 60, "amount_sats": 5})
    log_event("upgrade.proposed", source="upgrades", data={"diff": long_word * 4})
    log_in(page, staff.username, next_path="/swarm/live")

    for path in ("/swarm/live", "/"):
        open_live(page, path)
        size = page.evaluate(
            "() => ({scroll: document.documentElement.scrollWidth, client: document.documentElement.clientWidth})"
        )
        assert size["scroll"] <= size["client"], f"{path} scrolls sideways on a phone: {size}"
        for box in page.locator(".live-feed li.live-item").evaluate_all(
            "els => els.map(e => e.getBoundingClientRect().toJSON())"
        ):
            assert box["right"] <= PHONE["width"] and box["height"] < 80, (path, box)
