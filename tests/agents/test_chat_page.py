import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from apps.agents.models import ChatMessage, ChatSession
from apps.agents.services import chat_send
from apps.agents.views import SESSION_KEY
from tests.factories import StaffFactory

CHAT = reverse("agents:chat")
NEW = reverse("agents:chat_new")
HTMX = {"HX-Request": "true"}


def test_the_chat_page_is_at_chat_and_starts_empty(staff_client):
    assert CHAT == "/chat"
    response = staff_client.get(CHAT)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Chat with Timmy" in html
    assert "No messages yet." in html
    assert "A new conversation." in html
    assert f'hx-post="{CHAT}"' in html
    assert f'action="{CHAT}"' in html  # the form works without JavaScript too


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


def test_posting_with_htmx_returns_a_fresh_form_and_appends_the_exchange(staff_client, ollama):
    response = staff_client.post(CHAT, {"message": "Hello Timmy"}, headers=HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html
    assert html.lstrip().startswith('<form id="chat-form"')
    assert '<textarea name="message"' in html and "Hello Timmy</textarea>" not in html
    assert '<div hx-swap-oob="beforeend:#conversation">' in html
    appended = html.split('hx-swap-oob="beforeend:#conversation"')[1]
    assert appended.index("Hello Timmy") < appended.index("Echo: Hello Timmy")
    session = ChatSession.objects.get()
    assert f'<p id="chat-session" class="help" hx-swap-oob="true">Conversation <code>{session.pk}</code>' in html


def test_the_conversation_continues_across_posts(staff_client, ollama):
    staff_client.post(CHAT, {"message": "My name is Ada."}, headers=HTMX)
    staff_client.post(CHAT, {"message": "Who am I?"}, headers=HTMX)
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
    htmx_html = staff_client.post(CHAT, {"message": attack}, headers=HTMX).content.decode()
    page_html = staff_client.get(CHAT).content.decode()
    for html in (htmx_html, page_html):
        assert "<script>alert(1)" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "<img src=x" not in html
        assert "&lt;img src=x onerror=alert(2)&gt;" in html


def test_when_no_provider_answers_htmx_shows_the_reason_in_an_error_box(staff_client, all_down):
    response = staff_client.post(CHAT, {"message": "Anyone there?"}, headers=HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    kept = ChatMessage.objects.get()
    assert kept.error.startswith("No LLM provider answered.")
    assert '<p class="chat-error" role="alert"><strong>No reply.</strong> No LLM provider answered.' in html
    assert "local: " in html and "backup: " in html
    assert "Anyone there?" in html
    assert "Echo:" not in html


def test_when_no_provider_answers_the_plain_page_keeps_the_message_and_shows_why(staff_client, all_down):
    response = staff_client.post(CHAT, {"message": "Anyone there?"}, follow=True)
    assert response.redirect_chain == [(CHAT, 302)]
    html = response.content.decode()
    assert "Anyone there?" in html
    assert '<p class="chat-error" role="alert"><strong>No reply.</strong> No LLM provider answered.' in html
    assert staff_client.session[SESSION_KEY] == str(ChatSession.objects.get().pk)


@pytest.mark.parametrize("message", ["", "   "])
def test_an_empty_message_is_refused_with_the_reason(staff_client, ollama, message):
    htmx = staff_client.post(CHAT, {"message": message}, headers=HTMX)
    assert htmx.status_code == 422
    assert "This field is required." in htmx.content.decode()
    plain = staff_client.post(CHAT, {"message": message})
    assert plain.status_code == 400
    assert "This field is required." in plain.content.decode()
    assert not ollama.chats


def test_new_conversation_starts_over(staff_client, ollama):
    staff_client.post(CHAT, {"message": "Remember this"})
    response = staff_client.post(NEW, follow=True)
    assert response.redirect_chain == [(CHAT, 302)]
    assert SESSION_KEY not in staff_client.session
    html = response.content.decode()
    assert "Remember this" not in html and "A new conversation." in html
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


def test_the_page_reads_a_conversation_in_a_constant_number_of_queries(staff_client, staff_user, ollama):
    staff_client.post(CHAT, {"message": "one"})
    with CaptureQueriesContext(connection) as short:
        staff_client.get(CHAT)
    session_id = staff_client.session[SESSION_KEY]
    for n in range(10):
        chat_send(user=staff_user, message=f"more {n}", session_id=session_id)
    with CaptureQueriesContext(connection) as long:
        html = staff_client.get(CHAT).content.decode()
    assert "Echo: more 9" in html
    assert len(long) == len(short)
