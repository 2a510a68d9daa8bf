"""Traces of router calls: the failover chain, size caps, retention, and the pages' query budgets."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.providers import router
from apps.providers.models import ModelCall, ProviderRequest
from apps.providers.services import TRACE_TEXT_MAX_BYTES, TraceContext, model_call_record
from apps.providers.worker import prune_requests
from tests.agents.conftest import provider_at
from tests.factories import AgentFactory, TaskFactory
from tests.llm_servers import OllamaServer, refused_url


@pytest.fixture
def server():  # type: ignore[no-untyped-def]
    with OllamaServer() as running:
        yield running


def recorded(**fields: object) -> ModelCall:
    values: dict = {
        "trace": None,
        "started_at": timezone.now(),
        "outcome": ModelCall.Outcome.OK,
        "provider": "ollama",
        "model": "llama3.2",
        "latency_ms": 10,
        "messages": [{"role": "user", "content": "hi", "kind": "user"}],
        "attempts": [{"provider": "ollama", "reason": "answered", "error_class": "", "skipped": False}],
        "fitting": {},
        "request_ids": [],
        "reply": "hello",
        **fields,
    }
    return model_call_record(**values)


def test_a_failover_is_in_the_trace_chain_and_every_request_row_points_to_it(db, server):
    provider_at("local", refused_url(), 1)
    provider_at("ollama", server.url, 2)
    trace = TraceContext()
    completion = router.complete([{"role": "user", "content": "Hello"}], system_prompt="Be brief.", trace=trace)
    call = ModelCall.objects.get(pk=trace.call_id)
    assert [(a["provider"], a["error_class"], a["reason"] == "answered") for a in call.attempts] == [
        ("local", "connection", False),
        ("ollama", "", True),
    ]
    assert [{"role": m["role"], "content": m["content"]} for m in call.messages] == server.chats[-1]["messages"]
    assert [m["kind"] for m in call.messages] == ["system", "user"]
    assert (call.provider, call.reply, call.purpose) == ("ollama", completion.content, "other")
    assert sorted(ProviderRequest.objects.filter(model_call=call).values_list("outcome", flat=True)) == [
        "failure",
        "success",
    ]


def test_a_call_through_the_api_is_traced_for_the_user_who_made_it(api_client, staff_user, server):
    provider_at("ollama", server.url)
    response = api_client.post(
        "/api/v1/router/complete",
        {"messages": [{"role": "user", "content": "Ping"}]},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    call = ModelCall.objects.get()
    assert (call.purpose, call.user, call.reply) == ("api", staff_user, "Echo: Ping")


def test_a_huge_message_is_stored_cut_and_marked(db):
    call = recorded(messages=[{"role": "user", "content": "é" * TRACE_TEXT_MAX_BYTES, "kind": "user"}])
    [message] = call.messages
    assert message["cut"] is True
    assert len(message["content"].encode()) <= TRACE_TEXT_MAX_BYTES


def test_retention_prunes_old_traces_and_keeps_their_request_rows(db, settings, provider):
    settings.TRACE_RETENTION_DAYS = 3
    settings.PROVIDER_REQUEST_RETENTION_DAYS = 30
    now = timezone.now()
    request = ProviderRequest.objects.create(
        provider=provider, started_at=now - timedelta(days=4), latency_ms=5, outcome="success"
    )
    old = recorded(started_at=now - timedelta(days=4), request_ids=[request.pk])
    new = recorded(started_at=now - timedelta(days=2))
    prune_requests(now)
    assert list(ModelCall.objects.values_list("pk", flat=True)) == [new.pk]
    assert not ModelCall.objects.filter(pk=old.pk).exists()
    request.refresh_from_db()
    assert request.model_call is None


def test_the_trace_list_takes_a_fixed_number_of_queries(staff_client, django_assert_max_num_queries):
    agent = AgentFactory(name="scribe")
    for _ in range(30):
        recorded(trace=TraceContext(purpose="task", agent_id=agent.pk, task_id=TaskFactory().pk))
    # The session, the user, the page of traces with their agents, the provider names, the navigation's count.
    with django_assert_max_num_queries(5):
        response = staff_client.get(reverse("providers:traces"), {"agent": "scribe", "outcome": "ok"})
    assert response.content.decode().count("· scribe") == 30


def test_the_trace_page_takes_a_fixed_number_of_queries(staff_client, django_assert_max_num_queries):
    call = recorded(
        messages=[
            {
                "role": "system",
                "content": "Be brief.\n\nMemory:\nteal\nblue",
                "kind": "system",
                "prompt": "Be brief.",
                "context": ["teal", "blue"],
                "context_heading": "Memory",
            },
            {"role": "user", "content": "My colour?", "kind": "user"},
        ],
        fitting={"context_window": 4096, "history_dropped": 2, "context_dropped": 1},
    )
    # The session, the user, the trace with its links, the navigation's count.
    with django_assert_max_num_queries(4):
        page = staff_client.get(call.get_absolute_url()).content.decode()
    assert "Memory context put in: 2 pieces" in page
    assert "2 earlier messages of the history and 1 piece of context left out" in page
    assert "My colour?" in page and "hello" in page


def test_a_trace_shows_hostile_text_escaped(staff_client, db):
    call = recorded(messages=[{"role": "user", "content": "<script>alert(1)</script>", "kind": "user"}])
    page = staff_client.get(call.get_absolute_url()).content.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


def test_the_task_page_links_to_the_tasks_model_calls(staff_client, db):
    task = TaskFactory()
    call = recorded(trace=TraceContext(purpose="task", task_id=task.pk))
    page = staff_client.get(reverse("swarm:task", args=[task.pk])).content.decode()
    link = f"{reverse('providers:traces')}?task={task.pk}"
    assert f'href="{link}"' in page
    listed = staff_client.get(link).content.decode()
    assert f'href="{call.get_absolute_url()}"' in listed
