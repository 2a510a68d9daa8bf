"""Chat turns and task runs leave a trace of what was sent to the model and what came back."""

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.agents import prompts
from apps.agents.services import ChatUnavailable, chat_send
from apps.agents.worker import run_assigned_tasks
from apps.providers.models import ModelCall, ProviderRequest
from apps.swarm.models import Task
from tests.factories import TaskFactory, UserFactory

SECRET_KEY = "sk-live0123456789abcdefXYZ"


def as_sent(call: ModelCall) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in call.messages]


def kinds(call: ModelCall) -> list[str]:
    return [m["kind"] for m in call.messages]


def test_a_chat_turn_is_traced_with_exactly_what_the_model_received_and_its_reply(staff_user, ollama):
    first = chat_send(user=staff_user, message="My favourite colour is teal.")
    second = chat_send(user=staff_user, message="What is my favourite colour?", session_id=first.session_id)
    call = ModelCall.objects.get(chat_message=second.reply_message)
    assert as_sent(call) == ollama.chats[-1]["messages"]
    assert kinds(call) == ["system", "history", "history", "user"]
    # The first turn was remembered: it went into the system prompt as memory context, and the trace says so.
    system = call.messages[0]
    assert system["content"][: system["prompt_chars"]] == prompts.TIMMY
    assert any("My favourite colour is teal." in piece for piece in system["context"])
    assert call.reply == second.response == "Echo: What is my favourite colour?"
    assert (call.outcome, call.purpose, call.provider, call.model) == ("ok", "chat", "ollama", "llama3.2")
    assert call.user == staff_user
    assert (call.tokens_in, call.tokens_out) == (second.reply_message.tokens_in, second.reply_message.tokens_out)
    assert call.attempts == [{"provider": "ollama", "reason": "answered", "error_class": "", "skipped": False}]
    assert call.fitting["history_sent"] == 2 and call.fitting["history_dropped"] == 0
    assert list(ProviderRequest.objects.filter(model_call=call).values_list("outcome", flat=True)) == ["success"]


def test_a_streamed_chat_turn_is_traced_with_its_time_to_first_token(staff_user, ollama):
    chunks: list[str] = []
    reply = chat_send(user=staff_user, message="Tell me a story", on_chunk=chunks.append)
    call = ModelCall.objects.get(chat_message=reply.reply_message)
    assert as_sent(call) == ollama.chats[-1]["messages"]
    assert call.reply == "".join(chunks) == "Echo: Tell me a story"
    assert call.time_to_first_token_ms is not None
    assert call.outcome == ModelCall.Outcome.OK


def test_a_stopped_chat_turn_is_traced_as_stopped_with_what_came(staff_user, ollama):
    reply = chat_send(user=staff_user, message="one two three four five six", should_stop=lambda: True)
    call = ModelCall.objects.get(chat_message=reply.reply_message)
    assert call.outcome == ModelCall.Outcome.STOPPED
    assert call.reply == reply.response == "Echo: "
    assert call.attempts[-1]["reason"] == "answered; stopped by the caller"


def test_a_chat_turn_nobody_answered_is_traced_with_the_error_on_the_users_message(staff_user, all_down):
    with pytest.raises(ChatUnavailable) as raised:
        chat_send(user=staff_user, message="Anyone there?")
    call = ModelCall.objects.get(chat_message=raised.value.user_message)
    assert call.outcome == ModelCall.Outcome.FAILED
    assert call.error == raised.value.reason
    assert [(a["provider"], a["error_class"]) for a in call.attempts] == [
        ("local", "connection"),
        ("backup", "server_error"),
    ]
    # What the last provider tried was sent (it answered 500 without looking at it).
    assert kinds(call) == ["system", "user"] and call.messages[-1]["content"] == "Anyone there?"
    assert ProviderRequest.objects.filter(model_call=call).count() == 2


def test_a_secret_pasted_into_the_chat_is_redacted_in_the_trace(staff_user, ollama):
    reply = chat_send(user=staff_user, message=f"My key is {SECRET_KEY}\nand password=hunter2hunter2, keep them")
    # The model was sent the message as typed; the trace keeps no secret, in the messages nor in the reply.
    assert SECRET_KEY in ollama.chats[-1]["messages"][-1]["content"]
    call = ModelCall.objects.get(chat_message=reply.reply_message)
    stored = str(call.messages) + call.reply
    assert SECRET_KEY not in stored and "hunter2" not in stored
    assert call.messages[-1]["content"] == "My key is [REDACTED]\nand password=[REDACTED], keep them"


def test_a_task_run_is_traced_with_the_persona_prompt_the_task_and_the_reply(personas, ollama):
    task = TaskFactory(
        description="Write the release notes of the pager fix",
        status=Task.Status.ASSIGNED,
        assigned_agent=personas["quill"],
        winning_bid_sats=80,
        assigned_at=timezone.now(),
    )
    run_assigned_tasks(timezone.now())
    task.refresh_from_db()
    call = ModelCall.objects.get(task=task)
    assert as_sent(call) == ollama.chats[-1]["messages"]
    assert kinds(call) == ["system", "user"]
    assert call.messages[0]["content"] == prompts.PERSONAS["quill"]
    assert call.reply == task.result
    assert (call.purpose, call.agent, call.user) == ("task", personas["quill"], None)


def test_each_turn_on_the_chat_page_links_to_its_trace(staff_user, staff_client, ollama):
    reply = chat_send(user=staff_user, message="Hello there")
    page = staff_client.get(reverse("agents:chat_session", args=[reply.session_id])).content.decode()
    link = reverse("providers:trace_of_chat_message", args=[reply.reply_message.pk])
    assert f'href="{link}"' in page
    call = ModelCall.objects.get(chat_message=reply.reply_message)
    assert staff_client.get(link).url == call.get_absolute_url()
    shown = staff_client.get(call.get_absolute_url()).content.decode()
    assert "Hello there" in shown and "Echo: Hello there" in shown


def test_a_users_chat_trace_is_theirs_and_staffs_alone(ollama, staff_client):
    owner, stranger = UserFactory(username="ada"), UserFactory(username="bob")
    reply = chat_send(user=owner, message="A private thought")
    owner_client, stranger_client = Client(), Client()
    owner_client.force_login(owner)
    stranger_client.force_login(stranger)
    link = reverse("providers:trace_of_chat_message", args=[reply.reply_message.pk])
    trace_url = ModelCall.objects.get(chat_message=reply.reply_message).get_absolute_url()

    assert owner_client.get(link).url == trace_url
    assert "Echo: A private thought" in owner_client.get(trace_url).content.decode()
    assert "Echo: A private thought" not in owner_client.get(reverse("providers:traces")).content.decode()
    assert f'href="{trace_url}"' in owner_client.get(reverse("providers:traces")).content.decode()

    assert stranger_client.get(link).status_code == 404
    assert stranger_client.get(trace_url).status_code == 404
    assert f'href="{trace_url}"' not in stranger_client.get(reverse("providers:traces")).content.decode()
    assert staff_client.get(trace_url).status_code == 200
    assert f'href="{trace_url}"' in staff_client.get(reverse("providers:traces")).content.decode()
