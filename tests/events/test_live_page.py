import re
from html import unescape

import pytest
from django.urls import reverse

from apps.events import registry
from apps.events.services import log_event
from apps.events.views import LIVE_INITIAL, LIVE_LIST_MAX
from tests.events.factories import EventFactory
from tests.factories import AgentFactory

URL = reverse("events:live")
HOME = reverse("home")


def feed_attrs(html: str) -> dict[str, str]:
    match = re.search(r'<section class="card live-feed[^"]*"([^>]*)>', html)
    assert match, "no live panel on the page"
    return dict(re.findall(r'(data-[\w-]+)(?:="([^"]*)")?', match.group(1)))


def item_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<li class="live-item" data-id="(\d+)"', html)]


def item_texts(html: str) -> list[str]:
    """What each item says, as a browser shows it: markup gone, entities decoded, whitespace collapsed."""
    items = re.findall(r'<li class="live-item".*?</li>', html, flags=re.S)
    return [" ".join(unescape(re.sub(r"<[^>]+>", " ", item)).split()) for item in items]


def test_anonymous_visitors_go_to_login_and_non_staff_are_refused(client, plain_client):
    assert client.get(URL).url.startswith(reverse("login"))
    response = plain_client.get(URL)
    assert response.status_code == 403
    assert b"live-feed" not in response.content


def test_live_page_renders_the_newest_events_and_resumes_after_the_newest(staff_client):
    events = EventFactory.create_batch(LIVE_INITIAL + 5)

    response = staff_client.get(URL)

    assert response.status_code == 200
    html = response.content.decode()
    assert item_ids(html) == [e.id for e in reversed(events)][:LIVE_INITIAL]
    attrs = feed_attrs(html)
    assert attrs["data-since"] == str(events[-1].id)
    assert attrs["data-limit"] == str(LIVE_LIST_MAX)
    assert attrs["data-ws"] == "/ws/events/"
    assert attrs["data-api"] == "/api/v1/events"
    assert attrs["data-events-url"] == "/swarm/events"
    assert "data-compact" not in attrs
    assert 'class="empty live-empty" hidden' in html


def test_live_page_costs_the_same_few_queries_however_many_events(staff_client, django_assert_max_num_queries):
    agents = AgentFactory.create_batch(3)
    for n in range(LIVE_INITIAL):
        log_event("bid.submitted", source="auction", task_id=n, agent_id=agents[n % 3].pk, data={"amount_sats": n})

    # Session, user, the events, the agents' names, the navigation's count of pending upgrades.
    with django_assert_max_num_queries(5):
        staff_client.get(URL)


def test_live_page_with_no_events_says_so_and_resumes_from_the_start(staff_client):
    html = staff_client.get(URL).content.decode()

    assert feed_attrs(html)["data-since"] == "0"
    assert item_ids(html) == []
    assert re.search(r'<p class="empty live-empty">Nothing has happened yet.</p>', html)


def test_live_page_loads_its_script_and_has_no_inline_script(staff_client):
    html = staff_client.get(URL).content.decode()

    assert '<script src="/static/js/live.js" defer></script>' in html
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []


def test_live_page_shows_the_connection_state_the_filter_and_a_link_to_all_events(staff_client):
    html = staff_client.get(URL).content.decode()

    assert '<span class="live-status" role="status" data-state="connecting"' in html
    assert '<option value="" selected>' not in html  # "all" is first, so chosen without being marked
    # Every registered type, under its family, after the choice of the whole family.
    for group in registry.grouped():
        options = re.search(rf'<optgroup label="{group.name}">(.*?)</optgroup>', html, flags=re.S).group(1)
        values = re.findall(r'<option value="([^"]+)"', options)
        assert values == [f"{group.family}.*", *(kind.event_type for kind in group.kinds)]
    assert '<a href="/swarm/events">Show all events</a>' in html


@pytest.mark.parametrize(
    ("event_type", "data", "expected"),
    [
        ("task.created", {"description": "Research the sat"}, "New task: Research the sat"),
        ("task.bidding", {"auction_seconds": 15}, "Auction opened for 15 s"),
        (
            "task.bidding",
            {"extended": True, "extension": 1, "of": 3, "reason": "no agent was online to bid"},
            "Auction extended (1 of 3): no agent was online to bid",
        ),
        (
            "task.assigned",
            {"released": True, "worker": "w1", "reason": "worker w1 stopped before the task finished"},
            "Assigned again: worker w1 stopped",
        ),
        ("bid.submitted", {"agent": "echo", "amount_sats": 42}, "Bid 42 sats"),
        ("task.assigned", {"agent": "echo", "amount_sats": 42, "bids": 3}, "Assigned for 42 sats"),
        (
            "task.assigned",
            {"recovered": True, "reason": "worker w1 died; will retry"},
            "Assigned again: worker w1 died",
        ),
        ("task.started", {"attempt": 1}, "Started"),
        ("task.started", {"attempt": 2}, "Started (attempt 2)"),
        ("task.completed", {"result": "Done: 21M"}, "Completed: Done: 21M"),
        ("task.failed", {"reason": "No agent bid."}, "Failed: No agent bid."),
        ("agent.joined", {"agent": "echo", "persona": "echo"}, "Agent joined"),
        ("agent.left", {"agent": "echo"}, "Agent left"),
        ("tool.called", {"tool": "swarm_status", "arguments": {}}, "Tool call: swarm_status"),
        ("tool.completed", {"tool": "swarm_status", "ok": True, "error": ""}, "Tool completed: swarm_status"),
        ("tool.completed", {"tool": "web", "ok": False, "error": "Timeout"}, "Tool completed: web (failed: Timeout)"),
        ("system.error", {"step": "close_due_auctions", "message": "db locked"}, "Error: db locked (in close_due"),
        (
            "upgrade.approved",
            {"upgrade_id": 7, "branch": "b", "status": "approved", "by": "op"},
            "Upgrade #7 approved by op",
        ),
        ("payment.settled", {}, "Payment settled"),  # too little data: the type's label
    ],
)
def test_each_type_of_event_has_its_one_line_summary(staff_client, event_type, data, expected):
    log_event(event_type, source="test", data=data)

    html = staff_client.get(URL).content.decode()

    [text] = item_texts(html)
    assert expected in text
    assert f'data-type="{event_type}"' in html


def test_each_item_links_its_task_and_agent_to_their_events_and_names_the_agent(staff_client):
    agent = AgentFactory(name="tinker-9")
    log_event("task.started", source="worker", task_id=12, agent_id=agent.pk, data={"attempt": 1})
    log_event("agent.left", source="worker", agent_id="gone-7", data={})

    html = staff_client.get(URL).content.decode()

    assert '<a class="live-task" href="/swarm/events?task_id=12">task #12</a>' in html
    # The name comes from the agent when the event does not carry it.
    assert re.search(rf'href="/swarm/events\?agent_id={agent.pk}" data-agent-id="{agent.pk}">tinker-9</a>', html)
    assert re.search(r'href="/swarm/events\?agent_id=gone-7" data-agent-id="gone-7">agent gone-7</a>', html)


def test_ids_with_special_characters_are_encoded_in_links(staff_client):
    log_event("task.created", source="swarm", task_id="a&b=c", data={"description": "x"})

    html = staff_client.get(URL).content.decode()

    assert 'href="/swarm/events?task_id=a%26b%3Dc">task #a&amp;b=c</a>' in html


def test_markup_in_event_data_is_escaped(staff_client):
    log_event("task.created", source="swarm", data={"description": '<script>alert(1)</script><img src=x onerror="y">'})
    log_event("upgrade.proposed", source="upgrades", data={"title": "<b>bold</b>"})

    html = staff_client.get(URL).content.decode()

    assert "<script>alert" not in html and "<img src=x" not in html and "<b>bold" not in html
    assert "New task: &lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&quot;y&quot;&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html


def test_times_are_shown_in_the_servers_zone_with_the_full_time_in_the_title(staff_client):
    event = log_event("task.created", source="swarm", data={"description": "x"})

    html = staff_client.get(URL).content.decode()

    iso = event.timestamp.isoformat()
    assert f'<time datetime="{iso}" title="{iso}">{event.timestamp:%H:%M:%S}</time>' in html
    assert feed_attrs(html)["data-time-zone"] == "UTC"  # the script writes the times of new events in it too
    assert '<span class="live-zone muted">times in UTC</span>' in html


def test_filtered_page_shows_only_that_type_and_resumes_after_the_newest_event_of_any_type(staff_client):
    failed = log_event("task.failed", source="worker", data={"reason": "r"})
    log_event("task.created", source="swarm", data={"description": "x"})
    newest = log_event("tool.called", source="cli", data={"tool": "t"})

    html = staff_client.get(URL, {"event_type": "task.failed"}).content.decode()

    assert item_ids(html) == [failed.id]
    assert feed_attrs(html)["data-since"] == str(newest.id)
    assert '<option value="task.failed" selected>' in html


def test_an_unknown_type_in_the_address_shows_every_event(staff_client):
    events = [log_event("task.created", source="swarm", data={}), log_event("task.failed", source="w", data={})]

    html = staff_client.get(URL, {"event_type": "<script>"}).content.decode()

    assert item_ids(html) == [e.id for e in reversed(events)]
    assert " selected>" not in html


def test_home_has_the_compact_panel_with_the_ten_newest_events(staff_client):
    events = EventFactory.create_batch(12)

    html = staff_client.get(HOME).content.decode()

    attrs = feed_attrs(html)
    assert "data-compact" in attrs
    assert attrs["data-limit"] == "10"
    assert attrs["data-since"] == str(events[-1].id)
    assert item_ids(html) == [e.id for e in reversed(events)][:10]
    assert "<h2>Latest events</h2>" in html
    assert 'class="live-filter"' not in html
    assert '<script src="/static/js/live.js" defer></script>' in html
    assert '<a href="/swarm/events">Show all events</a>' in html


def test_home_panel_with_no_events_resumes_from_the_start(staff_client):
    html = staff_client.get(HOME).content.decode()

    assert feed_attrs(html)["data-since"] == "0"
    assert "Nothing has happened yet." in html


def test_both_panels_give_the_script_every_agents_name(staff_client):
    agents = [AgentFactory(name="tinker-1"), AgentFactory(name="tinker-2")]

    for url in (URL, HOME):
        html = staff_client.get(url).content.decode()
        names = re.search(r'<template class="live-agents">(.*?)</template>', html).group(1)
        for agent in agents:
            assert f'<i data-agent-id="{agent.pk}">{agent.name}</i>' in names
