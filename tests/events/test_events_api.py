from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from apps.events.services import log_event
from tests.events.factories import EventFactory, persona

URL = "/api/v1/events"
SUMMARY_URL = "/api/v1/events/summary"


def ids(response):
    return [e["id"] for e in response.json()["events"]]


def test_list_returns_every_field_of_each_event(api_client):
    event = log_event("bid.submitted", source="auction", task_id=3, agent_id=9, data={"amount_sats": 120})

    response = api_client.get(URL)

    assert response.status_code == 200
    body = response.json()
    assert body["next_before_id"] is None
    [row] = body["events"]
    assert row == {
        "id": event.id,
        "event_type": "bid.submitted",
        "source": "auction",
        "task_id": "3",
        "agent_id": "9",
        "agent_name": None,  # no agent 9
        "timestamp": row["timestamp"],
        "data": {"amount_sats": 120},
        "summary": "Bid 120 sats",
    }
    # Django's JSON encoder writes milliseconds; the id, not the time, orders the log.
    assert abs(datetime.fromisoformat(row["timestamp"]) - event.timestamp) < timedelta(milliseconds=1)


def test_list_is_newest_first(api_client):
    events = EventFactory.create_batch(3)

    assert ids(api_client.get(URL)) == [e.id for e in reversed(events)]


def test_list_serves_data_as_it_was_sanitised(api_client):
    log_event("tool.completed", source="agent", data={"output": "ok\r\nFORGED\x1b[31m", "api_key": "sk-1"})

    [row] = api_client.get(URL).json()["events"]

    assert row["data"] == {"output": "ok FORGED", "api_key": "[REDACTED]"}


def test_filter_by_event_type(api_client):
    failed = EventFactory(event_type="task.failed")
    EventFactory(event_type="task.completed")

    assert ids(api_client.get(URL, {"event_type": "task.failed"})) == [failed.id]


def test_filter_by_task_id(api_client):
    mine = EventFactory(task_id="11")
    EventFactory(task_id="110")

    assert ids(api_client.get(URL, {"task_id": "11"})) == [mine.id]


def test_filter_by_agent_id(api_client):
    mine = EventFactory(agent_id="4")
    EventFactory(agent_id="5")

    assert ids(api_client.get(URL, {"agent_id": "4"})) == [mine.id]


def test_filters_combine(api_client):
    match = EventFactory(event_type="bid.submitted", task_id="1", agent_id="2")
    EventFactory(event_type="bid.submitted", task_id="1", agent_id="3")
    EventFactory(event_type="task.created", task_id="1", agent_id="2")

    response = api_client.get(URL, {"event_type": "bid.submitted", "task_id": "1", "agent_id": "2"})

    assert ids(response) == [match.id]


def test_filter_by_family(api_client):
    settled = EventFactory(event_type="payment.settled")
    expired = EventFactory(event_type="payment.expired")
    EventFactory(event_type="task.created")

    assert ids(api_client.get(URL, {"event_type": "payment.*"})) == [expired.id, settled.id]
    assert ids(api_client.get(URL, {"event_type": "payment.*", "since_id": 0})) == [settled.id, expired.id]


@pytest.mark.parametrize("name", ["quill", "Quill"])
def test_filter_by_agent_name_in_any_case(api_client, name):
    quill = persona("quill")
    mine = EventFactory(agent_id=str(quill.pk))
    EventFactory(agent_id="quill")  # an id stored as text is not the agent's

    [row] = api_client.get(URL, {"agent_id": name}).json()["events"]

    assert (row["id"], row["agent_name"]) == (mine.id, "quill")


@pytest.mark.parametrize("value", ["task.exploded", "nothing.*", "<script>"])
def test_an_unknown_event_type_is_a_422_saying_so(api_client, value):
    response = api_client.get(URL, {"event_type": value})

    assert response.status_code == 422
    assert response.json() == {"detail": f"Unknown event type {value!r}: use a type or a family such as 'payment.*'."}


def test_each_event_says_what_happened(api_client):
    echo = persona("echo")
    log_event("payment.settled", source="swarm", task_id=1, agent_id=echo.pk, data={"amount_sats": 77})

    [row] = api_client.get(URL, {"since_id": 0}).json()["events"]

    assert (row["summary"], row["agent_name"]) == ("echo was paid 77 sats for task 1", "echo")


def test_since_id_returns_what_came_after_oldest_first_for_polling(api_client):
    events = EventFactory.create_batch(5)

    response = api_client.get(URL, {"since_id": events[1].id})

    assert ids(response) == [e.id for e in events[2:]]
    assert response.json()["next_before_id"] is None


def test_since_id_zero_starts_from_the_beginning(api_client):
    events = EventFactory.create_batch(3)

    assert ids(api_client.get(URL, {"since_id": 0, "limit": 2})) == [events[0].id, events[1].id]


def test_since_id_applies_filters(api_client):
    seen = EventFactory()
    wanted = EventFactory(event_type="task.failed")
    EventFactory(event_type="task.completed")

    assert ids(api_client.get(URL, {"since_id": seen.id, "event_type": "task.failed"})) == [wanted.id]


def test_before_id_pages_through_the_log_without_duplicates_or_gaps(api_client):
    events = EventFactory.create_batch(7)
    seen: list[int] = []
    params: dict[str, int] = {"limit": 3}

    while True:
        body = api_client.get(URL, params).json()
        seen += [e["id"] for e in body["events"]]
        if body["next_before_id"] is None:
            break
        params["before_id"] = body["next_before_id"]

    assert seen == [e.id for e in reversed(events)]


def test_limit_caps_the_number_of_events(api_client):
    EventFactory.create_batch(5)

    response = api_client.get(URL, {"limit": 2})

    assert len(ids(response)) == 2
    assert response.json()["next_before_id"] is not None


def test_default_limit_is_fifty(api_client):
    EventFactory.create_batch(55)

    assert len(ids(api_client.get(URL))) == 50


def test_largest_allowed_limit_is_accepted(api_client):
    assert api_client.get(URL, {"limit": 500}).status_code == 200


@pytest.mark.parametrize(
    ("limit", "reason"),
    [(0, "greater than or equal to 1"), (-3, "greater than or equal to 1"), (501, "less than or equal to 500")],
)
def test_limit_out_of_range_is_a_422_with_the_reason(api_client, limit, reason):
    response = api_client.get(URL, {"limit": limit})

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", "limit"]
    assert reason in error["msg"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "many"}, "limit"),
        ({"since_id": -1}, "since_id"),
        ({"before_id": 0}, "before_id"),
        ({"before_id": "x"}, "before_id"),
        ({"task_id": "t" * 65}, "task_id"),
    ],
)
def test_malformed_query_is_a_422_naming_the_parameter(api_client, params, field):
    response = api_client.get(URL, params)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", field]


def test_no_credentials_is_a_401(client, db):
    response = client.get(URL)

    assert response.status_code == 401


def test_unknown_token_is_a_401(client, db):
    response = client.get(URL, headers={"Authorization": "Bearer tt_not-a-real-token"})

    assert response.status_code == 401


def test_token_of_a_user_who_is_not_staff_is_a_403(plain_api_client):
    EventFactory()

    response = plain_api_client.get(URL)

    assert response.status_code == 403
    assert response.json() == {"detail": "This endpoint needs a staff user."}


def test_staff_browser_session_can_read_the_api(staff_client):
    event = EventFactory()

    assert ids(staff_client.get(URL)) == [event.id]


def test_non_staff_browser_session_is_a_403(plain_client):
    assert plain_client.get(URL).status_code == 403


def test_summary_counts_each_type_over_the_last_n_minutes(api_client):
    now = timezone.now()
    EventFactory.create_batch(2, event_type="task.created", timestamp=now - timedelta(minutes=3))
    EventFactory(event_type="task.failed", timestamp=now - timedelta(minutes=8))
    EventFactory(event_type="task.created", timestamp=now - timedelta(minutes=30))

    response = api_client.get(SUMMARY_URL, {"minutes": 10})

    assert response.status_code == 200
    assert response.json() == {"minutes": 10, "total": 3, "counts": {"task.created": 2, "task.failed": 1}}


def test_summary_defaults_to_the_last_hour(api_client):
    EventFactory(timestamp=timezone.now() - timedelta(minutes=59))
    EventFactory(timestamp=timezone.now() - timedelta(minutes=61))

    assert api_client.get(SUMMARY_URL).json() == {"minutes": 60, "total": 1, "counts": {"task.created": 1}}


@pytest.mark.parametrize("minutes", [0, -5, 60 * 24 * 31 + 1, "soon"])
def test_summary_with_bad_minutes_is_a_422(api_client, minutes):
    response = api_client.get(SUMMARY_URL, {"minutes": minutes})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "minutes"]


def test_summary_needs_credentials_and_staff(client, plain_api_client):
    assert client.get(SUMMARY_URL).status_code == 401
    assert plain_api_client.get(SUMMARY_URL).status_code == 403


def test_openapi_schema_documents_both_endpoints(client, db):
    response = client.get("/api/v1/openapi.json")

    assert response.status_code == 200
    schema = response.json()
    assert {"/api/v1/events", "/api/v1/events/summary"} <= set(schema["paths"])
    params = {p["name"] for p in schema["paths"]["/api/v1/events"]["get"]["parameters"]}
    assert params == {"event_type", "task_id", "agent_id", "since_id", "before_id", "limit"}
