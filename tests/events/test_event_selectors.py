from datetime import timedelta

import pytest
from django.utils import timezone

from apps.events.selectors import (
    EventFilter,
    events_for_agent,
    events_for_task,
    events_latest,
    events_page,
    events_since,
    events_summary,
)
from apps.events.services import log_event
from tests.events.factories import EventFactory

pytestmark = pytest.mark.django_db


def ids(events):
    return [e.id for e in events]


def test_events_for_task_tell_its_story_oldest_first_and_nothing_else():
    created = log_event("task.created", source="swarm", task_id=5)
    log_event("task.created", source="swarm", task_id=6)
    assigned = log_event("task.assigned", source="swarm", task_id=5, agent_id=1)
    log_event("agent.joined", source="swarm", agent_id=1)

    assert events_for_task(5) == [created, assigned]
    assert events_for_task("5") == [created, assigned]
    assert events_for_task(99) == []


def test_events_for_agent_are_its_latest_first_and_nothing_else():
    joined = log_event("agent.joined", source="swarm", agent_id=3)
    log_event("agent.joined", source="swarm", agent_id=4)
    bid = log_event("bid.submitted", source="swarm", task_id=1, agent_id=3)

    assert events_for_agent(3) == [bid, joined]
    assert events_for_agent(99) == []


def test_task_and_agent_histories_respect_their_limit():
    for _ in range(5):
        log_event("tool.called", source="agent", task_id=1, agent_id=1)

    assert len(events_for_task(1, limit=2)) == 2
    assert len(events_for_agent(1, limit=3)) == 3


def test_summary_counts_each_type_only_within_the_window():
    now = timezone.now()
    EventFactory.create_batch(3, event_type="task.created", timestamp=now - timedelta(minutes=5))
    EventFactory(event_type="task.failed", timestamp=now - timedelta(minutes=30))
    EventFactory.create_batch(4, event_type="task.created", timestamp=now - timedelta(minutes=90))
    EventFactory(event_type="system.error", timestamp=now - timedelta(days=2))

    assert events_summary(minutes=10) == {"task.created": 3}
    assert events_summary(minutes=60) == {"task.created": 3, "task.failed": 1}
    assert events_summary(minutes=120) == {"task.created": 7, "task.failed": 1}


def test_summary_of_a_quiet_window_is_empty():
    EventFactory(timestamp=timezone.now() - timedelta(hours=3))

    assert events_summary(minutes=60) == {}


def test_first_page_is_the_newest_events():
    events = [log_event("tool.called", source="agent") for _ in range(5)]

    page = events_page(filters=EventFilter(), limit=3)

    assert ids(page.events) == ids(reversed(events))[:3]
    assert page.next_before_id == events[2].id


def test_keyset_pages_cover_the_log_without_duplicates_or_gaps():
    events = EventFactory.create_batch(23)
    seen: list[int] = []
    before_id = None
    pages = 0

    while True:
        page = events_page(filters=EventFilter(), before_id=before_id, limit=10)
        seen += ids(page.events)
        pages += 1
        if page.next_before_id is None:
            break
        before_id = page.next_before_id

    assert pages == 3
    assert seen == sorted(ids(events), reverse=True)


def test_events_logged_while_paging_do_not_shift_older_pages():
    events = EventFactory.create_batch(6)
    first = events_page(filters=EventFilter(), limit=3)

    EventFactory.create_batch(4)
    second = events_page(filters=EventFilter(), before_id=first.next_before_id, limit=3)

    assert ids(first.events) + ids(second.events) == sorted(ids(events), reverse=True)


def test_a_full_last_page_has_no_next_page():
    EventFactory.create_batch(4)

    page = events_page(filters=EventFilter(), limit=4)

    assert len(page.events) == 4
    assert page.next_before_id is None


def test_paging_an_empty_log_gives_an_empty_page():
    page = events_page(filters=EventFilter(), limit=10)

    assert page.events == []
    assert page.next_before_id is None


def test_pages_apply_type_task_agent_and_time_filters_together():
    now = timezone.now()
    match = EventFactory(event_type="bid.submitted", task_id="1", agent_id="2", timestamp=now - timedelta(hours=2))
    EventFactory(event_type="bid.submitted", task_id="1", agent_id="3", timestamp=now - timedelta(hours=2))
    EventFactory(event_type="bid.submitted", task_id="9", agent_id="2", timestamp=now - timedelta(hours=2))
    EventFactory(event_type="task.created", task_id="1", agent_id="2", timestamp=now - timedelta(hours=2))
    EventFactory(event_type="bid.submitted", task_id="1", agent_id="2", timestamp=now - timedelta(hours=5))
    EventFactory(event_type="bid.submitted", task_id="1", agent_id="2", timestamp=now)

    filters = EventFilter(
        event_type="bid.submitted",
        task_id="1",
        agent_id="2",
        since=now - timedelta(hours=3),
        until=now - timedelta(hours=1),
    )

    assert events_page(filters=filters).events == [match]


def test_time_window_includes_its_start_and_excludes_its_end():
    start = timezone.now() - timedelta(hours=1)
    at_start = EventFactory(timestamp=start)
    EventFactory(timestamp=start + timedelta(minutes=30))
    at_end = EventFactory(timestamp=start + timedelta(minutes=60))

    page = events_page(filters=EventFilter(since=start, until=start + timedelta(minutes=60)))

    assert at_start in page.events
    assert at_end not in page.events
    assert len(page.events) == 2


def test_events_since_returns_what_came_after_an_id_oldest_first():
    events = EventFactory.create_batch(5)

    missed = events_since(filters=EventFilter(), since_id=events[1].id)

    assert ids(missed) == ids(events[2:])


def test_events_since_applies_filters_and_limit():
    seen = EventFactory()
    wanted = EventFactory.create_batch(4, event_type="task.failed")
    EventFactory.create_batch(2, event_type="task.completed")

    missed = events_since(filters=EventFilter(event_type="task.failed"), since_id=seen.id, limit=3)

    assert ids(missed) == ids(wanted[:3])


def test_events_since_the_latest_id_is_empty():
    latest = EventFactory()

    assert events_since(filters=EventFilter(), since_id=latest.id) == []


def test_latest_events_are_newest_first():
    events = EventFactory.create_batch(4)

    assert events_latest(limit=2) == [events[3], events[2]]


def test_a_since_later_than_every_event_finds_nothing():
    EventFactory()
    page = events_page(filters=EventFilter(since=timezone.now() + timedelta(days=1)))
    assert page.events == []
