"""Timmy's chat service against a real loopback server that speaks Ollama's protocol."""

import uuid

import pytest

from apps.agents import prompts
from apps.agents.models import ChatMessage, ChatSession
from apps.agents.services import (
    CHAT_SOURCE,
    MESSAGE_MAX,
    ChatSessionNotFound,
    ChatUnavailable,
    InvalidChatMessage,
    chat_send,
    chat_serve,
)
from apps.events.models import Event, EventType
from apps.memory import services as memory
from apps.swarm.models import Agent
from tests.agents.conftest import provider_at
from tests.agents.helpers import events_from
from tests.factories import StaffFactory
from tests.llm_servers import refused_url


def test_chat_answers_through_the_router_with_timmys_system_prompt(staff_user, ollama):
    reply = chat_send(user=staff_user, message="Hello Timmy")
    assert reply.response == "Echo: Hello Timmy"
    assert (reply.provider, reply.model) == ("ollama", "llama3.2")
    [sent] = ollama.chats
    assert sent["model"] == "llama3.2"
    assert sent["messages"] == [
        {"role": "system", "content": prompts.TIMMY},
        {"role": "user", "content": "Hello Timmy"},
    ]


def test_the_second_message_carries_the_first_exchange(staff_user, ollama):
    first = chat_send(user=staff_user, message="My name is Ada.")
    second = chat_send(user=staff_user, message="What is my name?", session_id=first.session_id)
    assert second.session_id == first.session_id
    assert second.response == "Echo: What is my name?"
    system, *conversation = ollama.chats[1]["messages"]
    assert conversation == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Echo: My name is Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    assert system["role"] == "system" and system["content"].startswith(prompts.TIMMY)


def test_a_new_conversation_remembers_earlier_ones_of_the_same_user_only(staff_user, plain_user, ollama):
    chat_send(user=staff_user, message="My name is Ada and my favourite colour is teal.")
    chat_send(user=staff_user, message="What is my favourite colour?")  # a new conversation
    remembered = ollama.chats[1]["messages"][0]["content"]
    assert "What you remember that may help" in remembered
    assert "my favourite colour is teal" in remembered
    chat_send(user=plain_user, message="What is my favourite colour?")
    assert "teal" not in ollama.chats[2]["messages"][0]["content"]


def test_staff_chat_draws_on_shared_memories_and_the_paid_chat_on_public_ones_alone(staff_user, ollama):
    memory.store_memory(content="Project Nightjar's budget is 40000 sats.", context_type="fact", source="test")
    memory.store_memory(
        content="Ada's Nightjar notes: call the supplier.", context_type="fact", source="test", owner=staff_user
    )
    chat_send(user=staff_user, message="What is Project Nightjar's budget?")
    assert "40000 sats" in ollama.chats[-1]["messages"][0]["content"]

    chat_serve(message="What is Project Nightjar's budget?", payment_hash="00" * 32)
    assert ollama.chats[-1]["messages"] == [
        {"role": "system", "content": prompts.TIMMY},
        {"role": "user", "content": "What is Project Nightjar's budget?"},
    ]
    memory.store_memory(
        content="Project Nightjar is an open bird-watching app.", context_type="fact", source="test", public=True
    )
    chat_serve(message="What is Project Nightjar?", payment_hash="00" * 32)
    system = ollama.chats[-1]["messages"][0]["content"]
    assert "What you remember that may help" in system and "open bird-watching app" in system
    assert "40000" not in system and "supplier" not in system and "Ada" not in system


def test_both_sides_are_stored_in_order_with_who_answered(staff_user, ollama):
    reply = chat_send(user=staff_user, message="Hello")
    session = ChatSession.objects.get()
    assert str(session.pk) == reply.session_id
    assert session.owner == staff_user
    user_message, answer = session.messages.order_by("id")
    assert (user_message.role, user_message.content, user_message.provider) == ("user", "Hello", "")
    assert (answer.role, answer.content) == ("assistant", "Echo: Hello")
    assert (answer.provider, answer.model) == ("ollama", "llama3.2")
    assert answer.latency_ms is not None and answer.tokens_in and answer.tokens_out
    assert (reply.user_message, reply.reply_message) == (user_message, answer)


def test_a_new_conversation_starts_without_history(staff_user, ollama):
    chat_send(user=staff_user, message="First conversation")
    other = chat_send(user=staff_user, message="Second conversation")
    assert ChatSession.objects.count() == 2
    assert other.session_id != str(ChatSession.objects.order_by("created_at").first().pk)  # type: ignore[union-attr]
    assert [m["content"] for m in ollama.chats[1]["messages"][1:]] == ["Second conversation"]


def test_the_history_sent_is_bounded_to_the_latest_messages(staff_user, ollama, settings):
    settings.CHAT_HISTORY_MESSAGES = 4
    session_id = None
    for n in range(4):
        session_id = chat_send(user=staff_user, message=f"message {n}", session_id=session_id).session_id
    sent = ollama.chats[-1]["messages"]
    assert sent[0]["role"] == "system"
    # The last four stored messages, then the new one.
    assert [m["content"] for m in sent[1:]] == [
        "message 1",
        "Echo: message 1",
        "message 2",
        "Echo: message 2",
        "message 3",
    ]


def test_the_call_is_logged_as_a_tool_call_of_timmy(staff_user, ollama):
    reply = chat_send(user=staff_user, message="Hello")
    called, completed = events_from(CHAT_SOURCE)
    timmy = Agent.objects.get(name="timmy")
    assert (called.event_type, called.agent_id) == (EventType.TOOL_CALLED, str(timmy.pk))
    assert called.data == {"tool": "llm.complete", "session_id": reply.session_id, "history_messages": 0}
    assert (completed.event_type, completed.agent_id) == (EventType.TOOL_COMPLETED, str(timmy.pk))
    assert completed.data["ok"] is True
    assert (completed.data["provider"], completed.data["model"]) == ("ollama", "llama3.2")
    assert completed.data["tokens_in"] > 0 and completed.data["tokens_out"] > 0
    assert completed.data["session_id"] == reply.session_id


def test_when_no_provider_answers_the_reason_names_each_provider_and_the_message_is_kept(staff_user, all_down):
    with pytest.raises(ChatUnavailable) as caught:
        chat_send(user=staff_user, message="Are you there?")
    reason = str(caught.value)
    assert reason.startswith("No LLM provider answered.")
    assert "local: " in reason and "backup: " in reason and "500" in reason
    [kept] = ChatMessage.objects.all()
    assert (kept.role, kept.content, kept.error) == ("user", "Are you there?", reason)
    assert str(kept.session_id) == caught.value.session_id
    assert kept.session.owner == staff_user
    assert caught.value.user_message == kept
    completed = events_from(CHAT_SOURCE)[-1]
    assert (completed.event_type, completed.data["ok"], completed.data["error"]) == ("tool.completed", False, reason)
    # The router logged its own system.error too.
    assert Event.objects.filter(event_type=EventType.SYSTEM_ERROR).exists()


def test_a_message_that_got_no_answer_is_not_sent_again_as_history(staff_user, all_down, server):
    with pytest.raises(ChatUnavailable) as caught:
        chat_send(user=staff_user, message="Lost in the outage")
    provider_at("ollama", server.url, 0)
    reply = chat_send(user=staff_user, message="Back again", session_id=caught.value.session_id)
    assert reply.response == "Echo: Back again"
    assert [m["content"] for m in server.chats[-1]["messages"][1:]] == ["Back again"]
    assert ChatMessage.objects.filter(session_id=reply.session_id).count() == 3


def test_another_users_session_is_not_found_and_nothing_is_sent(staff_user, ollama):
    theirs = chat_send(user=StaffFactory(username="someone-else"), message="My secret")
    before = len(ollama.chats)
    with pytest.raises(ChatSessionNotFound):
        chat_send(user=staff_user, message="Show me", session_id=theirs.session_id)
    assert len(ollama.chats) == before
    assert ChatMessage.objects.filter(session_id=theirs.session_id).count() == 2
    assert not ChatSession.objects.filter(owner=staff_user).exists()


@pytest.mark.parametrize("session_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_an_unknown_session_is_not_found(staff_user, ollama, session_id):
    with pytest.raises(ChatSessionNotFound, match="not found"):
        chat_send(user=staff_user, message="Hello", session_id=session_id)
    assert not ollama.chats


@pytest.mark.parametrize(
    ("message", "reason"),
    [("", "The message is empty."), (" \n\t", "The message is empty."), ("x" * (MESSAGE_MAX + 1), "the limit is")],
)
def test_an_empty_or_oversized_message_is_refused_before_any_call(staff_user, ollama, message, reason):
    with pytest.raises(InvalidChatMessage, match=reason):
        chat_send(user=staff_user, message=message)
    assert not ollama.chats
    assert not ChatMessage.objects.exists()


def test_control_characters_and_terminal_escapes_are_removed_from_both_sides(staff_user, ollama):
    ollama.reply = "\x1b[31mred\x1b[0m reply\x07"
    reply = chat_send(user=staff_user, message="Hi\x1b[2J there\x00")
    assert ollama.chats[0]["messages"][-1]["content"] == "Hi there"
    assert reply.response == "red reply"


def test_a_streamed_reply_arrives_in_chunks_and_is_stored_whole(staff_user, ollama):
    chunks: list[str] = []
    reply = chat_send(user=staff_user, message="stream this reply please", on_chunk=chunks.append)
    assert len(chunks) > 1
    assert "".join(chunks) == reply.response == "Echo: stream this reply please"
    assert ChatMessage.objects.get(role="assistant").content == reply.response
    assert ollama.chats[0]["stream"] is True


def test_a_stream_that_breaks_off_is_reported_not_stored_as_an_answer(staff_user, ollama):
    ollama.mode = "break_stream"
    chunks: list[str] = []
    with pytest.raises(ChatUnavailable, match="stopped answering mid-reply") as caught:
        chat_send(user=staff_user, message="Tell me a long story", on_chunk=chunks.append)
    assert chunks == ["Echo: "]
    [kept] = ChatMessage.objects.all()
    assert kept.role == "user" and kept.error == caught.value.reason


def test_failover_answers_from_the_next_provider(staff_user, server):
    provider_at("local", refused_url(), 1)
    provider_at("backup", server.url, 2)
    reply = chat_send(user=staff_user, message="Hello")
    assert (reply.provider, reply.response) == ("backup", "Echo: Hello")
