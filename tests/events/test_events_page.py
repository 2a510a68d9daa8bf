import re
from datetime import UTC, datetime

import pytest
from django.urls import reverse

from apps.events import registry
from apps.events.services import log_event
from apps.events.views import PAGE_SIZE
from tests.events.factories import EventFactory, persona
from tests.factories import AgentFactory

URL = reverse("events:list")
HTMX = {"HX-Request": "true"}


def row_ids(response):
    return [int(i) for i in re.findall(r'<td class="num">(\d+)</td>', response.content.decode())]


def older_link(response):
    match = re.search(r'<a href="\?([^"]*)"[^>]*>Older', response.content.decode())
    return match and match.group(1).replace("&amp;", "&")


def test_events_are_listed_newest_first(staff_client):
    events = [log_event("task.created", source="swarm", task_id=n) for n in range(3)]

    response = staff_client.get(URL)

    assert response.status_code == 200
    assert row_ids(response) == [e.id for e in reversed(events)]


def test_page_with_no_events_says_so(staff_client):
    response = staff_client.get(URL)

    assert response.status_code == 200
    assert b"No events match." in response.content


def test_filter_that_matches_nothing_says_so(staff_client):
    log_event("task.created", source="swarm")

    response = staff_client.get(URL, {"event_type": "task.failed"})

    assert b"No events match these filters." in response.content


def test_filter_by_type_shows_only_that_type(staff_client):
    failed = log_event("task.failed", source="worker")
    log_event("task.completed", source="worker")

    response = staff_client.get(URL, {"event_type": "task.failed"})

    assert row_ids(response) == [failed.id]
    assert b'<option value="task.failed" selected>' in response.content


def test_filter_by_namespaced_type_of_another_app(staff_client):
    approved = log_event("upgrade.approved", source="upgrades")
    log_event("task.created", source="swarm")

    response = staff_client.get(URL, {"event_type": "upgrade.approved"})

    assert row_ids(response) == [approved.id]


def test_filter_by_task_shows_only_that_tasks_events(staff_client):
    mine = [log_event("task.created", source="swarm", task_id=7), log_event("task.started", source="w", task_id=7)]
    log_event("task.created", source="swarm", task_id=70)

    response = staff_client.get(URL, {"task_id": "7"})

    assert row_ids(response) == [e.id for e in reversed(mine)]


def test_filter_by_agent_shows_only_that_agents_events(staff_client):
    mine = log_event("agent.joined", source="swarm", agent_id=4)
    log_event("agent.joined", source="swarm", agent_id=5)

    response = staff_client.get(URL, {"agent_id": "4"})

    assert row_ids(response) == [mine.id]


def test_filter_by_time_shows_only_events_between_since_and_until(staff_client):
    EventFactory(source="too-early", timestamp=datetime(2026, 3, 1, 8, 0, tzinfo=UTC))
    inside = EventFactory(source="inside", timestamp=datetime(2026, 3, 1, 10, 30, tzinfo=UTC))
    EventFactory(source="too-late", timestamp=datetime(2026, 3, 1, 12, 0, tzinfo=UTC))

    # The form's datetime-local inputs send naive local times; times on this page are UTC.
    response = staff_client.get(URL, {"since": "2026-03-01T10:00", "until": "2026-03-01T11:00"})

    assert row_ids(response) == [inside.id]


def test_filter_by_since_alone_hides_older_events(staff_client):
    EventFactory(timestamp=datetime(2026, 3, 1, 8, 0, tzinfo=UTC))
    newer = EventFactory(timestamp=datetime(2026, 3, 2, 8, 0, tzinfo=UTC))

    response = staff_client.get(URL, {"since": "2026-03-02"})

    assert row_ids(response) == [newer.id]


def test_full_page_links_to_older_events_and_the_next_page_continues_without_overlap(staff_client):
    events = EventFactory.create_batch(PAGE_SIZE + 7)
    newest_first = [e.id for e in reversed(events)]

    first = staff_client.get(URL)
    assert row_ids(first) == newest_first[:PAGE_SIZE]
    assert "Newest" not in first.content.decode()

    second = staff_client.get(f"{URL}?{older_link(first)}")
    assert row_ids(second) == newest_first[PAGE_SIZE:]
    assert older_link(second) is None
    assert 'href="?"' in second.content.decode()  # back to the newest events
    assert "← Newest" in second.content.decode()


def test_older_link_keeps_the_filters(staff_client):
    EventFactory.create_batch(PAGE_SIZE + 2, event_type="tool.called", agent_id="3")
    EventFactory.create_batch(5, event_type="tool.completed", agent_id="3")

    first = staff_client.get(URL, {"event_type": "tool.called", "agent_id": "3"})
    link = older_link(first)
    second = staff_client.get(f"{URL}?{link}")

    assert "event_type=tool.called" in link
    assert "agent_id=3" in link
    assert len(row_ids(second)) == 2


def test_a_page_that_is_exactly_full_has_no_older_link(staff_client):
    EventFactory.create_batch(PAGE_SIZE)

    response = staff_client.get(URL)

    assert len(row_ids(response)) == PAGE_SIZE
    assert older_link(response) is None


def test_htmx_request_gets_only_the_results_partial(staff_client):
    event = log_event("task.created", source="swarm")

    response = staff_client.get(URL, {"event_type": "task.created"}, headers=HTMX)

    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="event-results">')
    assert "<html" not in html
    assert "<form" not in html
    assert row_ids(response) == [event.id]


def test_full_page_contains_the_filter_form_and_the_swappable_results(staff_client):
    response = staff_client.get(URL)

    html = response.content.decode()
    assert "<html" in html
    assert 'hx-target="#event-results"' in html
    assert '<div id="event-results">' in html


def test_each_row_links_its_type_task_and_agent_to_their_filtered_events(staff_client):
    agent = AgentFactory(name="echo-1")
    log_event("bid.submitted", source="auction", task_id=12, agent_id=agent.pk)

    html = staff_client.get(URL).content.decode()

    assert 'href="?event_type=bid.submitted"' in html
    assert 'href="?task_id=12"' in html
    assert f'href="?agent_id={agent.pk}"' in html
    # The agent is shown by name, not by a bare id.
    assert re.search(rf'href="\?agent_id={agent.pk}"[^>]*>echo-1</a>', html)


def test_agent_that_no_longer_exists_is_shown_by_its_id(staff_client):
    log_event("agent.left", source="swarm", agent_id="gone-7")

    html = staff_client.get(URL).content.decode()

    assert re.search(r'href="\?agent_id=gone-7"[^>]*>gone-7</a>', html)


def test_following_a_task_link_shows_that_tasks_events(staff_client):
    log_event("task.created", source="swarm", task_id=12)
    log_event("task.created", source="swarm", task_id=13)
    html = staff_client.get(URL).content.decode()
    link = re.search(r'href="(\?task_id=12)"', html).group(1)

    response = staff_client.get(URL + link)

    assert len(row_ids(response)) == 1
    assert "#12" in response.content.decode()


def test_task_id_with_special_characters_is_encoded_in_its_link(staff_client):
    log_event("task.created", source="swarm", task_id="a&b=c")

    html = staff_client.get(URL).content.decode()

    assert 'href="?task_id=a%26b%3Dc"' in html


def test_script_in_event_data_is_stored_but_escaped_on_the_page(staff_client):
    payload = "<script>alert(document.cookie)</script>"
    event = log_event("tool.completed", source="agent", data={"output": payload})
    event.refresh_from_db()
    assert event.data["output"] == payload

    for response in (staff_client.get(URL), staff_client.get(URL, headers=HTMX)):
        html = response.content.decode()
        assert "<script>alert" not in html
        assert "&lt;script&gt;alert(document.cookie)&lt;/script&gt;" in html


def test_markup_in_source_task_and_agent_is_escaped_on_the_page(staff_client):
    log_event("task.created", source="<b>src</b>", task_id="<i>t</i>", agent_id='"><img src=x onerror=alert(1)>')

    html = staff_client.get(URL).content.decode()

    assert "<b>src</b>" not in html
    assert "<i>t</i>" not in html
    assert "<img src=x" not in html
    assert "&lt;b&gt;src&lt;/b&gt;" in html


def test_unknown_event_type_is_a_400_with_a_clear_message(staff_client):
    log_event("task.created", source="swarm")

    response = staff_client.get(URL, {"event_type": "task.exploded"})

    assert response.status_code == 400
    html = response.content.decode()
    assert "Unknown event type &#x27;task.exploded&#x27;." in html
    assert row_ids(response) == []
    assert "No events match" not in html


def test_unknown_event_type_in_an_htmx_request_is_a_400_partial(staff_client):
    response = staff_client.get(URL, {"event_type": "<script>x</script>"}, headers=HTMX)

    assert response.status_code == 400
    html = response.content.decode()
    assert "<html" not in html
    assert "Unknown event type" in html
    assert "<script>x" not in html


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-45"}, "until"),
        ({"before": "abc"}, "before"),
        ({"before": "0"}, "before"),
        ({"task_id": "x" * 65}, "task_id"),
    ],
)
def test_malformed_filters_are_a_400_naming_the_field(staff_client, params, field):
    response = staff_client.get(URL, params)

    assert response.status_code == 400
    assert f"<p>{field}: " in response.content.decode()


def test_anonymous_visitor_is_sent_to_login_and_non_staff_is_refused(client, plain_client):
    response = client.get(URL, {"task_id": "1"}, headers=HTMX)
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))

    assert plain_client.get(URL, headers=HTMX).status_code == 403


@pytest.mark.parametrize("count", [1, PAGE_SIZE + 10])
def test_page_cost_does_not_grow_with_the_number_of_events_shown(staff_client, django_assert_max_num_queries, count):
    # Every event has its own task and agent: one query for the page, one for all agent names.
    agents = AgentFactory.create_batch(min(count, PAGE_SIZE))
    for n in range(count):
        log_event("bid.submitted", source="auction", task_id=n, agent_id=agents[n % len(agents)].pk)

    with django_assert_max_num_queries(5):  # session, user, events, agent names, the nav's pending upgrades
        response = staff_client.get(URL)

    assert len(row_ids(response)) == min(count, PAGE_SIZE)


def test_type_filter_lists_every_registered_type_grouped_by_family(staff_client):
    html = staff_client.get(URL).content.decode()

    for group in registry.grouped():
        options = re.search(rf'<optgroup label="{group.name}">(.*?)</optgroup>', html, flags=re.S).group(1)
        values = re.findall(r'<option value="([^"]+)"', options)
        assert values == [f"{group.family}.*", *(kind.event_type for kind in group.kinds)]
    assert '<option value="payment.settled">Payment settled (payment.settled)</option>' in html


def test_filter_by_family_shows_every_type_of_that_family(staff_client):
    settled = log_event("payment.settled", source="swarm", data={"amount_sats": 5, "tx_type": "incoming"})
    waiting = log_event("payment.waiting", source="swarm", task_id=3, data={"reason": "waiting for funds"})
    log_event("task.created", source="swarm", data={"description": "x"})
    log_event("provider.failover", source="router", data={"from": "a", "to": "b", "reason": "r"})

    response = staff_client.get(URL, {"event_type": "payment.*"})

    assert row_ids(response) == [waiting.id, settled.id]
    assert '<option value="payment.*" selected>' in response.content.decode()


@pytest.mark.parametrize("name", ["quill", "Quill", "QUILL", " quill "])
def test_filter_by_agent_name_in_any_case_shows_that_agents_events(staff_client, name):
    quill = persona("quill")
    mine = log_event("bid.submitted", source="auction", agent_id=quill.pk, data={"agent": "quill", "amount_sats": 9})
    log_event("bid.submitted", source="auction", agent_id=persona("echo").pk, data={"amount_sats": 8})

    response = staff_client.get(URL, {"agent_id": name})

    assert response.status_code == 200
    assert row_ids(response) == [mine.id]


def test_filter_by_a_name_no_agent_has_says_so(staff_client):
    log_event("agent.joined", source="swarm", agent_id=persona("echo").pk)

    response = staff_client.get(URL, {"agent_id": "quil"})

    assert response.status_code == 200
    assert row_ids(response) == []
    assert "No events match these filters. No agent is named “quil”." in response.content.decode()


@pytest.mark.parametrize("value", ["nothing.*", "payment.**", "*", ".*", "payment.", "payment"])
def test_a_type_filter_that_is_neither_a_type_nor_a_family_is_a_400_saying_so(staff_client, value):
    response = staff_client.get(URL, {"event_type": value})

    assert response.status_code == 400
    assert f"Unknown event type &#x27;{value}&#x27;." in response.content.decode()


def test_each_row_says_what_happened_with_its_data_one_click_away(staff_client):
    log_event("provider.failover", source="router", data={"from": "ollama", "to": "openai", "reason": "refused"})
    log_event("agent.left", source="swarm")

    html = staff_client.get(URL).content.decode()

    assert (
        '<td class="data"><details class="event-data"><summary>ollama → openai: refused</summary>'
        "<code>{&quot;from&quot;: &quot;ollama&quot;, &quot;reason&quot;: &quot;refused&quot;, &quot;to&quot;: "
        "&quot;openai&quot;}</code></details></td>"
    ) in html
    assert '<td class="data">Agent left</td>' in html  # no data: nothing to open
