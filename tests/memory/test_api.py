import pytest
from django.test import Client

from apps.core.services import api_token_create
from apps.memory import services
from apps.memory.models import MemoryEntry
from tests.factories import AgentFactory, StaffFactory, UserFactory


def client_for(user) -> Client:
    _, raw = api_token_create(user=user, name="test")
    return Client(headers={"authorization": f"Bearer {raw}"})


@pytest.fixture
def other_client(db) -> Client:
    return client_for(StaffFactory(username="other-staff"))


def remember(api_client: Client, content: str, **fields) -> dict:
    response = api_client.post(
        "/api/v1/memory", {"content": content, "context_type": "fact", **fields}, content_type="application/json"
    )
    assert response.status_code in (200, 201), response.content
    return response.json()


def test_storing_answers_201_then_200_with_the_same_id_for_a_duplicate(api_client):
    first = api_client.post(
        "/api/v1/memory",
        {"content": "The node's alias is Timmy.", "context_type": "fact"},
        content_type="application/json",
    )
    assert first.status_code == 201
    body = first.json()
    assert (body["created"], body["shared"], body["context_type"], body["source"]) == (True, False, "fact", "api")
    again = api_client.post(
        "/api/v1/memory",
        {"content": "The node's alias is Timmy.", "context_type": "fact"},
        content_type="application/json",
    )
    assert again.status_code == 200
    assert (again.json()["id"], again.json()["duplicate"]) == (body["id"], "exact")


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"content": "", "context_type": "fact"}, "content"),
        ({"content": "x", "context_type": "rumour"}, "context_type"),
        ({"content": "x", "context_type": "fact", "agent_id": 999999}, "Agent 999999 not found"),
        ({"content": "   ", "context_type": "fact"}, "empty"),
    ],
)
def test_bad_memories_are_refused_with_422_and_a_reason(api_client, payload, needle):
    response = api_client.post("/api/v1/memory", payload, content_type="application/json")
    assert response.status_code == 422
    assert needle in response.content.decode()
    assert not MemoryEntry.objects.exists()


def test_search_returns_scores_and_only_what_the_caller_may_see(api_client, other_client):
    remember(api_client, "My locker code is 1234.")
    remember(api_client, "Lockers are emptied every Friday.", shared=True)
    agent = AgentFactory()
    remember(api_client, "Agents keep their notes in lockers.", shared=True, agent_id=agent.pk)

    mine = api_client.get("/api/v1/memory/search", {"q": "locker code", "limit": 5}).json()
    assert mine[0]["content"] == "My locker code is 1234." and mine[0]["score"] > 0
    assert mine[0]["similarity"] is not None

    theirs = other_client.get("/api/v1/memory/search", {"q": "locker code", "limit": 5}).json()
    assert "My locker code is 1234." not in [hit["content"] for hit in theirs]
    assert len(theirs) == 2
    by_agent = other_client.get("/api/v1/memory/search", {"q": "lockers", "agent_id": agent.pk}).json()
    assert [hit["content"] for hit in by_agent] == ["Agents keep their notes in lockers."]
    context = other_client.get("/api/v1/memory/context", {"q": "locker code", "max_tokens": 200}).json()["context"]
    assert "1234" not in context and "Fridays" not in context and "Lockers are emptied" in context


def test_search_refuses_bad_parameters_with_422(api_client):
    assert api_client.get("/api/v1/memory/search").status_code == 422
    assert api_client.get("/api/v1/memory/search", {"q": "x", "limit": 0}).status_code == 422
    assert api_client.get("/api/v1/memory/search", {"q": "x", "context_type": "rumour"}).status_code == 422
    assert api_client.get("/api/v1/memory/context", {"q": "x", "max_tokens": -1}).status_code == 422


def test_forgetting_needs_a_reason_and_another_users_memory_is_not_found(api_client, other_client):
    memory_id = remember(api_client, "My locker code is 1234.")["id"]
    url = f"/api/v1/memory/{memory_id}"
    assert api_client.delete(url, {}, content_type="application/json").status_code == 422
    assert other_client.delete(url, {"reason": "mine now"}, content_type="application/json").status_code == 404
    response = api_client.delete(url, {"reason": "changed the code"}, content_type="application/json")
    assert response.status_code == 200 and response.json()["deleted_reason"] == "changed the code"
    again = api_client.delete(url, {"reason": "again"}, content_type="application/json")
    assert again.status_code == 409
    assert api_client.get("/api/v1/memory/search", {"q": "locker code"}).json() == []
    assert (
        api_client.delete("/api/v1/memory/999999", {"reason": "x"}, content_type="application/json").status_code == 404
    )


def test_the_memory_api_needs_a_staff_token(client, plain_client, db):
    services.store_memory(content="Shared fact.", context_type="fact", source="test")
    assert client.get("/api/v1/memory/search", {"q": "fact"}).status_code == 401
    assert plain_client.get("/api/v1/memory/search", {"q": "fact"}).status_code == 403


@pytest.mark.parametrize("endpoint", ["/api/v1/memory/search", "/api/v1/memory/context"])
def test_everyones_memories_need_the_permission_to_read_private_ones(api_client, other_client, endpoint):
    remember(api_client, "My locker code is 1234.")
    refused = other_client.get(endpoint, {"q": "locker code", "all_users": "true"})
    assert refused.status_code == 403
    assert "memory.view_private_memories" in refused.json()["detail"]
    assert "1234" not in refused.content.decode()


@pytest.mark.parametrize("persona", ["granted staff", "superuser"])
def test_users_who_may_read_private_memories_get_everyones_with_all_users(api_client, private_reader, persona):
    remember(api_client, "My locker code is 1234.")
    reader = client_for(private_reader if persona == "granted staff" else UserFactory(is_staff=True, is_superuser=True))
    assert reader.get("/api/v1/memory/search", {"q": "locker code"}).json() == []
    [hit] = reader.get("/api/v1/memory/search", {"q": "locker code", "all_users": "true"}).json()
    assert (hit["content"], hit["shared"]) == ("My locker code is 1234.", False)
    context = reader.get("/api/v1/memory/context", {"q": "locker code", "all_users": "true"}).json()["context"]
    assert "1234" in context
    # Reading it is not forgetting it: only its owner can.
    forget = reader.delete(f"/api/v1/memory/{hit['id']}", {"reason": "audit"}, content_type="application/json")
    assert forget.status_code == 403 and "only its owner" in forget.json()["detail"]


def test_a_memory_stored_as_public_is_shared_and_public(api_client):
    body = remember(api_client, "Timmy's node alias is Sparky.", public=True)
    assert (body["shared"], body["public"]) == (True, True)
    assert MemoryEntry.objects.get(pk=body["id"]).public
    assert remember(api_client, "Lockers are emptied every Friday.", shared=True)["public"] is False
    contradiction = api_client.post(
        "/api/v1/memory",
        {"content": "x", "context_type": "fact", "public": True, "shared": False},
        content_type="application/json",
    )
    assert contradiction.status_code == 422 and '"shared": false' in contradiction.json()["detail"]
