import random
from datetime import timedelta

import pytest
from django.utils.dateparse import parse_datetime

from apps.events.models import EventType
from apps.swarm.models import Task
from apps.swarm.services import auction_close, task_fail, task_post
from tests.swarm.helpers import after_auction, event_types

TASKS = "/api/v1/tasks"


def test_posting_a_task_returns_201_with_the_task_in_bidding(api_client, staff_user, personas):
    response = api_client.post(TASKS, {"description": "Research the mempool"}, content_type="application/json")
    assert response.status_code == 201
    body = response.json()
    task = Task.objects.get()
    assert body["id"] == task.pk
    assert body["status"] == "bidding"
    assert body["description"] == "Research the mempool"
    assert body["assigned_agent_id"] is None
    closes = parse_datetime(body["auction_closes_at"])
    assert closes is not None and task.auction_closes_at is not None
    assert abs(closes - task.auction_closes_at) < timedelta(milliseconds=1)
    assert task.posted_by == staff_user
    assert event_types(task)[:2] == [EventType.TASK_CREATED, EventType.TASK_BIDDING]
    assert task.bids.count() == 6


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"description": ""}, "at least 1 character"),
        ({}, "Field required"),
        ({"description": "x" * 10_001}, "at most 10000 characters"),
    ],
)
def test_an_invalid_task_is_refused_with_422_and_the_reason(api_client, payload, reason):
    response = api_client.post(TASKS, payload, content_type="application/json")
    assert response.status_code == 422
    assert reason in str(response.json()["detail"])
    assert not Task.objects.exists()


def test_a_blank_description_is_refused_with_422_and_the_reason(api_client):
    response = api_client.post(TASKS, {"description": "   \n"}, content_type="application/json")
    assert response.status_code == 422
    assert response.json() == {"detail": "The task description is empty."}
    assert not Task.objects.exists()


def test_a_body_that_is_not_json_is_refused_with_400(api_client):
    response = api_client.post(TASKS, "description=hi", content_type="application/json")
    assert response.status_code == 400
    assert not Task.objects.exists()


def test_listing_tasks_returns_the_newest_first(api_client, personas):
    first = task_post(description="Research one")
    second = task_post(description="Research two")
    response = api_client.get(TASKS)
    assert response.status_code == 200
    assert [t["id"] for t in response.json()] == [second.pk, first.pk]


def test_listing_tasks_filters_by_status_and_limits(api_client, personas):
    tasks = [task_post(description=f"Research {n}") for n in range(3)]
    task_fail(task_id=tasks[0].pk, reason="no")
    assert [t["id"] for t in api_client.get(TASKS, {"status": "failed"}).json()] == [tasks[0].pk]
    assert [t["id"] for t in api_client.get(TASKS, {"limit": 1}).json()] == [tasks[2].pk]
    assert api_client.get(TASKS, {"status": "sleeping"}).status_code == 422
    assert api_client.get(TASKS, {"limit": 0}).status_code == 422


def test_one_task_comes_with_its_bids_lowest_first(api_client, personas):
    task = task_post(description="Research the mempool", rng=random.Random(5))
    task = auction_close(task_id=task.pk, now=after_auction(task))
    response = api_client.get(f"{TASKS}/{task.pk}")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "assigned"
    assert body["assigned_agent_id"] == task.assigned_agent_id
    assert body["winning_bid_sats"] == task.winning_bid_sats
    bids = body["bids"]
    assert len(bids) == 6
    assert bids[0]["agent"] == "echo"
    assert bids[0]["amount_sats"] == task.winning_bid_sats
    assert [b["amount_sats"] for b in bids] == sorted(b["amount_sats"] for b in bids)
    assert set(bids[0]) == {"agent_id", "agent", "amount_sats", "match", "created_at"}
    # How well the task matched each bidder: the researcher best.
    assert bids[0]["match"] == max(b["match"] for b in bids)
    assert all(-1 <= b["match"] <= 1 for b in bids)


def test_a_missing_task_is_a_404_in_json(api_client):
    response = api_client.get(f"{TASKS}/987654")
    assert response.status_code == 404
    assert response.json() == {"detail": "Task 987654 not found."}


def test_the_agents_endpoint_lists_the_registry_with_wins(api_client, personas):
    task = task_post(description="Research the mempool")
    auction_close(task_id=task.pk, now=after_auction(task))
    response = api_client.get("/api/v1/agents")
    assert response.status_code == 200
    agents = {a["name"]: a for a in response.json()}
    assert set(agents) == {"timmy", "echo", "forge", "seer", "quill", "helm", "mace"}
    echo = agents["echo"]
    assert echo["wins"] == 1
    assert echo["status"] == "idle"
    assert echo["persona"] == "echo"
    assert "research" in echo["capabilities"]
    assert "research" in echo["keywords"]
    assert "Typical tasks" in echo["profile"]
    assert echo["base_bid_sats"] == 80
    assert echo["last_seen"] is not None
    assert agents["forge"]["wins"] == 0
