"""The chat page without JavaScript (the plain form), and what it shows: Markdown replies, past conversations.
The streamed form of the same page is in test_chat_stream.py."""

import re
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from apps.agents.markdown import render_markdown
from apps.agents.models import ChatMessage, ChatSession
from apps.agents.services import MESSAGE_MAX, chat_send
from apps.agents.views import SESSION_KEY
from tests.factories import StaffFactory
from tests.llm_servers import ModelHostProcess, refused_url

CHAT = reverse("agents:chat")
NEW = reverse("agents:chat_new")
STREAM = reverse("agents:chat_stream")


def conversation_of(client, session_id) -> str:  # type: ignore[no-untyped-def]
    return client.get(reverse("agents:chat_session", args=[session_id])).content.decode()


def messages_in(html: str) -> str:
    """The conversation's messages on a page, without the form and the list of conversations."""
    return html.split('id="conversation"')[1].split('id="chat-form"')[0]


@pytest.fixture
def smollm2(embedded_model: ModelHostProcess, settings, db) -> ModelHostProcess:  # type: ignore[no-untyped-def]
    """A fresh install: Ollama (first of the default providers) refuses, the embedded SmolLM2 answers."""
    settings.OLLAMA_HOST = refused_url()
    return embedded_model


def test_the_chat_page_is_at_chat_and_starts_empty(staff_client):
    assert CHAT == "/chat"
    response = staff_client.get(CHAT)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Chat with Timmy" in html
    assert "No messages yet." in html
    assert "A new conversation." in html
    assert f'action="{CHAT}"' in html  # the form works without JavaScript
    assert f'data-stream-url="{STREAM}"' in html  # and static/js/chat.js streams the reply with it
    assert '<script src="/static/js/chat.js" defer></script>' in html
    assert "Your past conversations will be listed here." in html


def test_the_message_box_does_not_cut_a_long_paste_and_says_the_limit(staff_client):
    html = staff_client.get(CHAT).content.decode()
    textarea = re.search(r"<textarea [^>]*>", html)
    assert textarea is not None
    assert "maxlength" not in textarea.group(0)
    assert f'data-limit="{MESSAGE_MAX}"' in html
    assert "Up to 8,000 characters." in html


def test_anonymous_visitors_are_sent_to_log_in(client):
    response = client.get(CHAT)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_a_logged_in_user_who_is_not_staff_is_forbidden(plain_client, ollama):
    assert plain_client.get(CHAT).status_code == 403
    assert plain_client.post(CHAT, {"message": "Hello"}).status_code == 403
    assert not ollama.chats
    assert not ChatMessage.objects.exists()


def test_posting_without_javascript_redirects_to_the_conversation(staff_client, staff_user, ollama):
    response = staff_client.post(CHAT, {"message": "Hello Timmy"}, follow=True)
    assert response.redirect_chain == [(CHAT, 302)]
    html = response.content.decode()
    assert "Hello Timmy" in html
    assert "Echo: Hello Timmy" in html
    assert "via ollama · llama3.2" in html
    session = ChatSession.objects.get(owner=staff_user)
    assert staff_client.session[SESSION_KEY] == str(session.pk)
    assert f"--session {session.pk}" in html


def test_timmy_answers_paris_through_the_page(staff_client, smollm2):
    response = staff_client.post(CHAT, {"message": "What is the capital of France? Answer with one word."}, follow=True)
    reply = ChatMessage.objects.get(role=ChatMessage.Role.ASSISTANT)
    assert "Paris" in reply.content
    assert (reply.provider, reply.model) == ("embedded", "SmolLM2-135M-Instruct")
    html = response.content.decode()
    assert "Paris" in html
    assert f"via embedded · SmolLM2-135M-Instruct · {reply.tokens_in} tokens in, {reply.tokens_out} out" in html
    assert f" · {reply.latency_ms} ms" in html


def test_the_conversation_continues_across_posts(staff_client, ollama):
    staff_client.post(CHAT, {"message": "My name is Ada."})
    staff_client.post(CHAT, {"message": "Who am I?"})
    assert ChatSession.objects.count() == 1
    assert [m["content"] for m in ollama.chats[1]["messages"][1:]] == [
        "My name is Ada.",
        "Echo: My name is Ada.",
        "Who am I?",
    ]
    html = staff_client.get(CHAT).content.decode()
    assert html.index("My name is Ada.") < html.index("Echo: Who am I?")


def test_text_is_escaped_on_the_page(staff_client, ollama):
    ollama.reply = "<img src=x onerror=alert(2)>"
    attack = "<script>alert(1)</script>"
    html = staff_client.post(CHAT, {"message": attack}, follow=True).content.decode()
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html


def test_a_reply_renders_as_markdown_with_its_code_indented(staff_client, ollama):
    ollama.reply = "Use **two** steps:\n\n1. read\n2. write\n\n```python\ndef f():\n    return 1\n```"
    html = staff_client.post(CHAT, {"message": "How?"}, follow=True).content.decode()
    assert "Use <strong>two</strong> steps:" in html
    assert "<ol>\n<li>read</li>\n<li>write</li>\n</ol>" in html
    assert "<pre><code>def f():\n    return 1\n</code></pre>" in html


def test_a_stored_reply_with_a_script_or_a_javascript_link_is_inert(staff_client, ollama):
    ollama.reply = (
        '<script>alert(1)</script> [click](javascript:alert(2)) <a href="javascript:alert(3)">x</a> '
        "![pixel](http://203.0.113.9/t.png) [docs](https://example.com/docs)"
    )
    staff_client.post(CHAT, {"message": "Say something nasty"})
    html = staff_client.get(CHAT).content.decode()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "javascript:alert(2)" in html  # as text, not as a link
    assert '<a href="javascript' not in html
    assert "203.0.113.9" not in html  # no image that would load from elsewhere
    assert '<a href="https://example.com/docs" rel="noopener noreferrer nofollow">docs</a>' in html


@pytest.mark.parametrize(
    "attack",
    [
        "[x](JaVaScRiPt:alert(1))",
        "<javascript:alert(1)>",
        "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        "[x](vbscript:msgbox(1))",
        '<a href="javascript:alert(1)">x</a>',
        "<img src=x onerror=alert(1)>",
        "![x](javascript:alert(1))",
        '[x](https://example.com "a" onmouseover="alert(1)")',
        "<style>body{display:none}</style><iframe src=https://example.com></iframe>",
    ],
)
def test_markdown_never_renders_a_script_a_handler_or_a_dangerous_link(attack):
    html = str(render_markdown(attack))
    tags = re.findall(r"<([a-z0-9]+)([^>]*)>", html)
    assert {tag for tag, _ in tags} <= {"p", "a"}, html
    for tag, attributes in tags:
        assert " on" not in attributes and "style" not in attributes, html
        if tag == "a":
            assert re.fullmatch(r' href="https://[^"]*" rel="noopener noreferrer nofollow"', attributes), html


def test_a_message_over_the_limit_is_refused_with_the_limit_and_kept_whole(staff_client, ollama):
    paste = "x" * 22_000
    response = staff_client.post(CHAT, {"message": paste})
    assert response.status_code == 400
    html = response.content.decode()
    assert "The message is 22,000 characters; the limit is 8,000." in html
    assert paste in html  # the box still holds all of it, to shorten
    assert not ollama.chats
    assert not ChatMessage.objects.exists()


def test_a_message_at_the_limit_is_sent_whole(staff_client, ollama):
    staff_client.post(CHAT, {"message": "y" * MESSAGE_MAX})
    assert len(ChatMessage.objects.get(role=ChatMessage.Role.USER).content) == MESSAGE_MAX


def test_when_no_provider_answers_the_plain_page_keeps_the_message_and_shows_why(staff_client, all_down):
    response = staff_client.post(CHAT, {"message": "Anyone there?"}, follow=True)
    assert response.redirect_chain == [(CHAT, 302)]
    html = response.content.decode()
    assert "Anyone there?" in html
    assert '<p class="chat-error" role="alert"><strong>No reply.</strong> No LLM provider answered.' in html
    assert "local: " in html and "backup: " in html
    assert staff_client.session[SESSION_KEY] == str(ChatSession.objects.get().pk)


@pytest.mark.parametrize("message", ["", "   ", "\x07\x1b[2J"])
def test_an_empty_message_is_refused_with_the_reason(staff_client, ollama, message):
    response = staff_client.post(CHAT, {"message": message})
    assert response.status_code == 400
    html = response.content.decode()
    assert "This field is required." in html or "The message is empty." in html
    assert not ollama.chats


def test_new_conversation_starts_over(staff_client, ollama):
    staff_client.post(CHAT, {"message": "Remember this"})
    response = staff_client.post(NEW, follow=True)
    assert response.redirect_chain == [(CHAT, 302)]
    assert SESSION_KEY not in staff_client.session
    html = response.content.decode()
    assert "Remember this" not in messages_in(html)
    assert "A new conversation." in html
    staff_client.post(CHAT, {"message": "Fresh start"})
    assert ChatSession.objects.count() == 2
    assert [m["content"] for m in ollama.chats[-1]["messages"][1:]] == ["Fresh start"]


def test_new_conversation_needs_a_post(staff_client):
    assert staff_client.get(NEW).status_code == 405


def test_another_users_session_in_the_browser_session_is_never_shown(staff_client, ollama):
    theirs = chat_send(user=StaffFactory(username="someone-else"), message="private note")
    session = staff_client.session
    session[SESSION_KEY] = theirs.session_id
    session.save()
    html = staff_client.get(CHAT).content.decode()
    assert "private note" not in html
    staff_client.post(CHAT, {"message": "Mine"})
    assert ChatMessage.objects.filter(session_id=theirs.session_id).count() == 2
    assert [m["content"] for m in ollama.chats[-1]["messages"][1:]] == ["Mine"]


# --- past conversations ---


def test_past_conversations_are_listed_newest_first_with_a_preview(staff_client, staff_user, ollama):
    first = chat_send(user=staff_user, message="About the garden")
    second = chat_send(user=staff_user, message="About the ledger " + "z" * 200)
    chat_send(user=StaffFactory(username="neighbour"), message="Their own secret")
    html = staff_client.get(CHAT).content.decode()
    listed = html.split('class="chat-sessions"')[1].split("</ol>")[0]
    assert listed.index(f"/chat/{second.session_id}") < listed.index(f"/chat/{first.session_id}")
    assert "About the garden" in listed
    assert "About the ledger zzz" in listed and "z" * 100 not in listed  # a preview, not the whole message
    assert "2 messages" in listed
    assert "<time datetime=" in listed
    assert "Their own secret" not in html


def test_a_past_conversation_reopens_and_continues(staff_client, staff_user, ollama):
    old = chat_send(user=staff_user, message="The first topic")
    staff_client.post(CHAT, {"message": "Another topic"})
    current = staff_client.session[SESSION_KEY]
    assert current != old.session_id

    html = conversation_of(staff_client, old.session_id)
    assert "The first topic" in messages_in(html) and "Another topic" not in messages_in(html)
    assert f'<input type="hidden" name="session" value="{old.session_id}"' in html
    assert f'href="/chat/{old.session_id}" aria-current="page"' in html

    # The form of the reopened conversation continues it, whatever the browser session said last.
    response = staff_client.post(CHAT, {"message": "Back to it", "session": old.session_id}, follow=True)
    assert [m.content for m in ChatMessage.objects.filter(session_id=old.session_id)] == [
        "The first topic",
        "Echo: The first topic",
        "Back to it",
        "Echo: Back to it",
    ]
    assert staff_client.session[SESSION_KEY] == old.session_id
    assert "Back to it" in messages_in(response.content.decode())


def test_another_users_conversation_cannot_be_opened_or_continued(staff_client, ollama):
    theirs = chat_send(user=StaffFactory(username="someone-else"), message="private note")
    assert staff_client.get(reverse("agents:chat_session", args=[theirs.session_id])).status_code == 404
    assert staff_client.get(reverse("agents:chat_session", args=[uuid.uuid4()])).status_code == 404
    response = staff_client.post(CHAT, {"message": "Let me in", "session": theirs.session_id})
    assert response.status_code == 400
    assert "That conversation is not yours or no longer exists." in response.content.decode()
    assert ChatMessage.objects.filter(session_id=theirs.session_id).count() == 2
    assert len(ollama.chats) == 1


def test_the_page_reads_a_conversation_in_a_constant_number_of_queries(staff_client, staff_user, ollama):
    staff_client.post(CHAT, {"message": "one"})
    with CaptureQueriesContext(connection) as short:
        staff_client.get(CHAT)
    session_id = staff_client.session[SESSION_KEY]
    for n in range(10):
        chat_send(user=staff_user, message=f"more {n}", session_id=session_id)
        chat_send(user=staff_user, message=f"elsewhere {n}")
    with CaptureQueriesContext(connection) as long:
        html = staff_client.get(CHAT).content.decode()
    assert "Echo: more 9" in html
    assert "elsewhere 9" in html  # in the list of conversations
    assert len(long) == len(short)
