import uuid

import pytest
from django.test import Client

from apps.agents.models import ChatMessage, ChatSession
from apps.agents.services import MESSAGE_MAX, chat_send
from apps.core.services import api_token_create
from tests.factories import StaffFactory
from tests.llm_servers import refused_url

CHAT = "/api/v1/chat"


def post(client: Client, payload: object):  # type: ignore[no-untyped-def]
    return client.post(CHAT, payload, content_type="application/json")


def test_posting_a_message_returns_timmys_reply_and_who_answered(api_client, staff_user, ollama):
    response = post(api_client, {"message": "Hello Timmy"})
    assert response.status_code == 200
    body = response.json()
    session = ChatSession.objects.get()
    assert body == {
        "response": "Echo: Hello Timmy",
        "provider": "ollama",
        "model": "llama3.2",
        "session_id": str(session.pk),
    }
    assert session.owner == staff_user


def test_a_session_id_continues_the_conversation(api_client, ollama):
    first = post(api_client, {"message": "My name is Ada."}).json()
    second = post(api_client, {"message": "Who am I?", "session_id": first["session_id"]}).json()
    assert second["session_id"] == first["session_id"]
    assert [m["content"] for m in ollama.chats[1]["messages"][1:]] == [
        "My name is Ada.",
        "Echo: My name is Ada.",
        "Who am I?",
    ]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"message": ""}, "at least 1 character"),
        ({}, "Field required"),
        ({"message": "x" * (MESSAGE_MAX + 1)}, f"at most {MESSAGE_MAX} characters"),
        ({"message": 42}, "valid string"),
    ],
)
def test_invalid_input_is_refused_with_422_and_the_reason(api_client, ollama, payload, reason):
    response = post(api_client, payload)
    assert response.status_code == 422
    assert reason in str(response.json()["detail"])
    assert not ollama.chats


def test_a_blank_message_is_refused_with_422(api_client, ollama):
    response = post(api_client, {"message": "  \n "})
    assert response.status_code == 422
    assert response.json() == {"detail": "The message is empty."}


@pytest.mark.parametrize("session_id", [str(uuid.uuid4()), "nope"])
def test_an_unknown_session_is_404(api_client, ollama, session_id):
    response = post(api_client, {"message": "Hello", "session_id": session_id})
    assert response.status_code == 404
    assert response.json() == {"detail": f"Chat session {session_id} not found."}
    assert not ollama.chats


def test_another_users_session_is_404_and_its_history_is_never_shown(api_client, ollama):
    theirs = chat_send(user=StaffFactory(username="other-operator"), message="the launch codes")
    response = post(api_client, {"message": "What did they say?", "session_id": theirs.session_id})
    assert response.status_code == 404
    assert "launch codes" not in response.content.decode()
    assert len(ollama.chats) == 1


def test_when_no_provider_answers_it_is_503_with_each_reason_and_the_message_is_kept(api_client, all_down):
    response = post(api_client, {"message": "Anyone home?"})
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail.startswith("No LLM provider answered.")
    assert "local: " in detail and "backup: " in detail
    kept = ChatMessage.objects.get()
    assert (kept.content, kept.error) == ("Anyone home?", detail)


def test_without_credentials_it_is_401(ollama):
    assert post(Client(), {"message": "Hello"}).status_code == 401
    assert not ollama.chats


def test_a_non_staff_token_is_403(plain_user, ollama):
    client = Client(headers={"Authorization": f"Bearer {api_token_create(user=plain_user)[1]}"})
    response = post(client, {"message": "Hello"})
    assert response.status_code == 403
    assert not ollama.chats


def test_a_staff_browser_session_works_with_its_csrf_token(staff_user, ollama):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    assert post(client, {"message": "Hello"}).status_code == 403  # no CSRF token
    client.get("/chat")
    token = client.cookies["csrftoken"].value
    response = client.post(CHAT, {"message": "Hello"}, content_type="application/json", headers={"X-CSRFToken": token})
    assert response.status_code == 200
    assert response.json()["response"] == "Echo: Hello"


def test_timmy_answers_paris_on_a_fresh_install(api_client, embedded_model, settings):
    settings.OLLAMA_HOST = refused_url()  # the first default provider is down; the embedded SmolLM2 answers
    response = post(api_client, {"message": "What is the capital of France? Answer with one word."})
    assert response.status_code == 200
    body = response.json()
    assert "Paris" in body["response"]
    assert (body["provider"], body["model"]) == ("embedded", "SmolLM2-135M-Instruct")
    assert set(body) == {"response", "provider", "model", "session_id"}  # as before the stream was added


def test_the_schema_documents_the_streamed_form(api_client):
    schema = api_client.get("/api/v1/openapi.json").json()
    operation = schema["paths"][CHAT]["post"]
    body = schema["components"]["schemas"]["ChatIn"]["properties"]
    assert body["stream"]["default"] is False
    content = operation["responses"]["200"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatOut"}
    events = content["text/event-stream"]
    for event in ("`chunk`", "`failover`", "`reply`", "`error`"):
        assert event in events["schema"]["description"]
    assert "event: chunk\ndata: " in events["example"]
    assert "tokens_out" in events["example"] and "latency_ms" in events["example"]
