import re

import pytest
from django.urls import reverse

from apps.events.models import Event
from apps.events.services import log_event

CHANGELIST = reverse("admin:events_event_changelist")


def listed_ids(response):
    return {int(i) for i in re.findall(r'class="field-id">(?:<a [^>]*>)?(\d+)<', response.content.decode())}


@pytest.fixture
def event(db):
    return log_event("task.failed", source="worker", task_id=12, agent_id=3, data={"error": "timeout"})


def test_superuser_sees_the_audit_trail_in_the_admin(superuser_client, event):
    response = superuser_client.get(CHANGELIST)

    assert response.status_code == 200
    html = response.content.decode()
    assert listed_ids(response) == {event.id}
    assert "task.failed" in html
    assert "timeout" in html


def test_the_audit_trail_offers_no_add_button_and_no_bulk_delete(superuser_client, event):
    html = superuser_client.get(CHANGELIST).content.decode()

    assert reverse("admin:events_event_add") not in html
    assert "delete_selected" not in html


def test_adding_an_event_by_hand_is_forbidden(superuser_client):
    url = reverse("admin:events_event_add")

    assert superuser_client.get(url).status_code == 403
    post = superuser_client.post(url, {"event_type": "task.created", "source": "me", "data": "{}"})
    assert post.status_code == 403
    assert not Event.objects.exists()


def test_event_page_is_read_only(superuser_client, event):
    response = superuser_client.get(reverse("admin:events_event_change", args=[event.pk]))

    assert response.status_code == 200
    html = response.content.decode()
    assert "View event" in html
    assert 'name="_save"' not in html
    assert 'class="closelink"' in html
    assert html.count('<div class="readonly">') == 6  # every field shown as text, none as an input
    assert '<div class="readonly">{&quot;error&quot;: &quot;timeout&quot;}</div>' in html


def test_changing_an_event_is_forbidden_and_leaves_it_as_it_was(superuser_client, event):
    url = reverse("admin:events_event_change", args=[event.pk])

    response = superuser_client.post(url, {"event_type": "task.completed", "source": "me", "data": "{}"})

    assert response.status_code == 403
    event.refresh_from_db()
    assert (event.event_type, event.source, event.data) == ("task.failed", "worker", {"error": "timeout"})


def test_deleting_an_event_is_forbidden(superuser_client, event):
    url = reverse("admin:events_event_delete", args=[event.pk])

    assert superuser_client.get(url).status_code == 403
    assert superuser_client.post(url, {"post": "yes"}).status_code == 403
    assert Event.objects.filter(pk=event.pk).exists()


def test_bulk_delete_action_is_refused(superuser_client, event):
    response = superuser_client.post(
        CHANGELIST, {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"}
    )

    assert response.status_code == 200  # the changelist again: the action does not exist here
    assert Event.objects.filter(pk=event.pk).exists()


@pytest.mark.parametrize(
    ("query", "found"),
    [("12", True), ("1", False), ("3", True), ("task.failed", True), ("work", True), ("nothing", False)],
    ids=["task", "task-prefix", "agent", "type", "source-part", "no-match"],
)
def test_search_finds_events_by_exact_task_agent_or_type_and_by_source(superuser_client, event, query, found):
    log_event("agent.joined", source="swarm", agent_id=77)

    response = superuser_client.get(CHANGELIST, {"q": query})

    assert response.status_code == 200
    assert listed_ids(response) == ({event.id} if found else set())


def test_filter_by_type_and_source(superuser_client, event):
    other = log_event("task.failed", source="auction")
    log_event("agent.joined", source="worker")

    by_type = superuser_client.get(CHANGELIST, {"event_type": "task.failed"})
    by_both = superuser_client.get(CHANGELIST, {"event_type": "task.failed", "source": "worker"})

    assert listed_ids(by_type) == {event.id, other.id}
    assert listed_ids(by_both) == {event.id}


def test_staff_without_permission_cannot_read_the_audit_trail_in_the_admin(staff_client, event):
    assert staff_client.get(CHANGELIST).status_code == 403


def test_changelist_cost_does_not_grow_with_the_number_of_events(superuser_client, django_assert_max_num_queries):
    for n in range(60):
        log_event("tool.called", source="agent", task_id=n, agent_id=n)

    # Session, user, the page of events, the agents' names (one query for all), the two list filters' choices.
    with django_assert_max_num_queries(7):
        response = superuser_client.get(CHANGELIST)

    assert len(listed_ids(response)) == 50
