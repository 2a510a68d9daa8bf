"""The streamed chat: the page's `POST /chat/stream` and `POST /api/v1/chat` with "stream": true.

Streams are read through Django's real ASGI handler (as daphne runs it), which is also how a client that hangs up
is simulated: the handler gets `http.disconnect` and cancels the response, as it does when the Stop button aborts
the fetch. The chat runs in a thread of its own with its own database connection: these tests commit.
"""

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
from django.core.asgi import get_asgi_application
from django.test import Client
from django.urls import reverse

from apps.agents.models import ChatMessage, ChatSession
from apps.agents.services import chat_send
from apps.agents.views import SESSION_KEY
from apps.core.services import api_token_create
from tests.factories import StaffFactory
from tests.llm_servers import ModelHostProcess, refused_url

STREAM = reverse("agents:chat_stream")
API = "/api/v1/chat"
PARIS = "What is the capital of France? Answer with one word."
# Long enough that SmolLM2 writes until its token limit: a minute or more here, unless it is stopped.
LONG = "Write a long story about a dragon."
STREAM_SECONDS = 60
committed = pytest.mark.django_db(transaction=True)


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # When each event arrived (time.monotonic()), in order.
    arrivals: list[float] = field(default_factory=list)

    @property
    def events(self) -> list[tuple[str, dict[str, Any]]]:
        found = []
        for block in self.body.decode().split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "event" in lines:
                found.append((lines["event"], json.loads(lines["data"])))
        return found

    def named(self, name: str) -> list[dict[str, Any]]:
        return [data for event, data in self.events if event == name]

    def json(self) -> Any:
        return json.loads(self.body)


async def _asgi_post(path: str, body: bytes, headers: dict[str, str], *, hang_up_after: int | None) -> Answer:
    application = get_asgi_application()
    answer = Answer()
    hung_up = asyncio.Event()
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await hung_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message.get("body"):
            answer.body += message["body"]
            answer.arrivals += [time.monotonic()] * message["body"].count(b"\n\n")
            if hang_up_after is not None and answer.body.count(b"event: chunk") >= hang_up_after:
                hung_up.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in {"host": "testserver", **headers}.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    await asyncio.wait_for(application(scope, receive, send), STREAM_SECONDS)
    return answer


def asgi_post(path: str, body: bytes, headers: dict[str, str], *, hang_up_after: int | None = None) -> Answer:
    """POST through Django's ASGI handler; with hang_up_after, the client goes away after that many chunks."""
    return asyncio.run(_asgi_post(path, body, headers, hang_up_after=hang_up_after))


class Browser:
    """A logged-in browser's cookies and CSRF token, to post the chat form as static/js/chat.js does."""

    def __init__(self, user: Any) -> None:
        self.client = Client()
        self.client.force_login(user)
        self.client.get(reverse("agents:chat"))  # sets the CSRF cookie

    def post(self, message: str, *, hang_up_after: int | None = None, session: str = "") -> Answer:
        cookies = self.client.cookies
        token = cookies["csrftoken"].value
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            "cookie": f"sessionid={cookies['sessionid'].value}; csrftoken={token}",
            "x-csrftoken": token,
        }
        body = urlencode({"message": message, "session": session}).encode()
        return asgi_post(STREAM, body, headers, hang_up_after=hang_up_after)


def api_post(token: str, payload: dict[str, Any], *, hang_up_after: int | None = None) -> Answer:
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    return asgi_post(API, json.dumps(payload).encode(), headers, hang_up_after=hang_up_after)


def stored_reply(*, timeout: float = STREAM_SECONDS) -> ChatMessage:
    """The assistant message, once the chat's thread has stored it (after a hang-up it finishes on its own)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = ChatMessage.objects.filter(role=ChatMessage.Role.ASSISTANT).order_by("-id").first()
        if reply is not None:
            return reply
        if time.monotonic() > deadline:
            pytest.fail("the stopped chat stored no reply")
        time.sleep(0.05)


@pytest.fixture
def smollm2(embedded_model: ModelHostProcess, settings: Any) -> ModelHostProcess:
    """A fresh install: Ollama (first of the default providers) refuses, the embedded SmolLM2 answers."""
    settings.OLLAMA_HOST = refused_url()
    return embedded_model


@pytest.fixture
def browser(staff_user: Any) -> Browser:
    return Browser(staff_user)


# --- the chat page's stream ---


@committed
def test_the_page_streams_the_reply_piece_by_piece_then_the_stored_messages(browser, staff_user, smollm2):
    answer = browser.post(PARIS)
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/event-stream"
    assert answer.headers["cache-control"] == "no-cache"
    names = [name for name, _ in answer.events]
    # Ollama refused, in place, before the first piece; then the reply as it was written; then the stored reply.
    assert names[0] == "failover" and names[-1] == "reply"
    assert set(names[1:-1]) == {"chunk"} and len(names) >= 4
    assert answer.named("failover")[0]["from"] == "ollama" and answer.named("failover")[0]["to"] == "embedded"
    assert "cannot connect" in answer.named("failover")[0]["reason"]
    # The first piece went out well before the reply was complete.
    assert answer.arrivals[1] < answer.arrivals[-1]

    reply = answer.named("reply")[0]
    stored = ChatMessage.objects.get(role=ChatMessage.Role.ASSISTANT)
    assert "Paris" in reply["response"]
    assert "".join(chunk["text"] for chunk in answer.named("chunk")) == reply["response"] == stored.content
    assert reply["provider"] == "embedded" and reply["model"] == "SmolLM2-135M-Instruct"
    assert (reply["tokens_in"], reply["tokens_out"], reply["latency_ms"]) == (
        stored.tokens_in,
        stored.tokens_out,
        stored.latency_ms,
    )
    assert reply["stopped"] is False
    assert "via embedded · SmolLM2-135M-Instruct" in reply["reply_html"]
    assert f'id="chat-message-{stored.pk}"' in reply["reply_html"]
    assert PARIS in reply["user_html"]
    assert f"<code>{reply['session_id']}</code>" in reply["session_html"]
    assert f'href="/chat/{reply["session_id"]}" aria-current="page"' in reply["conversations_html"]
    # The browser's session now continues this conversation, as after the plain form.
    assert browser.client.session[SESSION_KEY] == reply["session_id"] == str(stored.session_id)


@committed
def test_the_stream_continues_the_conversation_the_form_names(browser, staff_user, ollama):
    old = chat_send(user=staff_user, message="First")
    browser.post("Elsewhere")
    answer = browser.post("Second", session=old.session_id)
    assert answer.named("reply")[0]["session_id"] == old.session_id
    assert [m["content"] for m in ollama.chats[-1]["messages"][1:]] == ["First", "Echo: First", "Second"]


@committed
@pytest.mark.parametrize("client", ["page", "api"])
def test_stop_really_stops_the_model_and_keeps_what_it_wrote(browser, staff_token, smollm2, client):
    requests_before = smollm2.health()["requests"]  # type: ignore[index]
    if client == "page":
        answer = browser.post(LONG, hang_up_after=3)
    else:
        answer = api_post(staff_token, {"message": LONG, "stream": True}, hang_up_after=3)
    assert answer.status == 200
    assert not answer.named("reply")  # it hung up before the end

    reply = stored_reply()
    assert reply.stopped is True
    # Stopped after a few pieces: what came is kept, and it is short (the whole story runs to ~1,500 tokens).
    assert reply.content and len(reply.content) < 200
    assert reply.tokens_out is not None and reply.tokens_out < 40
    assert ChatMessage.objects.get(role=ChatMessage.Role.USER).content == LONG

    # The model host is free again at once: had generation gone on, the next request would wait a minute for its
    # turn behind the story.
    follow_up = chat_send(user=reply.session.owner, message=PARIS, session_id=reply.session_id)
    assert "Paris" in follow_up.response
    assert follow_up.reply_message.latency_ms is not None and follow_up.reply_message.latency_ms < 10_000
    assert smollm2.health()["requests"] == requests_before + 2  # type: ignore[index]
    page = browser.client.get(reverse("agents:chat_session", args=[reply.session_id])).content.decode()
    assert '<span class="badge chat-stopped">stopped</span>' in page


@committed
def test_when_no_provider_answers_the_stream_ends_with_the_message_kept_and_why(browser, all_down):
    answer = browser.post("Anyone there?")
    assert [name for name, _ in answer.events] == ["failover", "error"]
    assert answer.named("failover")[0]["from"] == "local" and answer.named("failover")[0]["to"] == "backup"
    error = answer.named("error")[0]
    kept = ChatMessage.objects.get()
    assert error["status"] == 503
    assert error["detail"] == kept.error and kept.error.startswith("No LLM provider answered.")
    assert "Anyone there?" in error["user_html"]
    alert = '<p class="chat-error" role="alert"><strong>No reply.</strong> No LLM provider answered.'
    assert alert in error["user_html"]
    assert browser.client.session[SESSION_KEY] == error["session_id"] == str(kept.session_id)


@committed
def test_a_streamed_reply_is_rendered_as_sanitised_markdown(browser, ollama):
    ollama.reply = "**Sure**: <script>alert(1)</script> [run](javascript:alert(2))\n\n```\nif x:\n    go()\n```"
    answer = browser.post("Show me")
    # Streamed as the plain text the model wrote (shown as text by the page's script)...
    assert "".join(chunk["text"] for chunk in answer.named("chunk")) == ollama.reply
    # ...and then as the sanitised HTML of the stored reply, which replaces it.
    html = answer.named("reply")[0]["reply_html"]
    assert "<strong>Sure</strong>" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # The reply's own text has no link (the header's link to the turn's trace is ours).
    text = html.split('class="chat-text chat-markdown">', 1)[1]
    assert "<a " not in text and "[run](javascript:alert(2))" in text
    assert "<pre><code>if x:\n    go()\n</code></pre>" in html


def test_the_stream_refuses_a_message_over_the_limit_with_the_limit(staff_client, ollama):
    response = staff_client.post(STREAM, {"message": "x" * 22_000})
    assert response.status_code == 422
    assert response.json() == {
        "detail": "The message is 22,000 characters; the limit is 8,000. Shorten it and send it again."
    }
    assert not ollama.chats
    assert not ChatMessage.objects.exists()


@pytest.mark.parametrize("message", ["", "  \n "])
def test_the_stream_refuses_an_empty_message(staff_client, ollama, message):
    response = staff_client.post(STREAM, {"message": message})
    assert response.status_code == 422
    assert response.json()["detail"] in ("This field is required.", "The message is empty.")
    assert not ollama.chats


def test_the_stream_refuses_another_users_conversation(staff_client, ollama):
    theirs = chat_send(user=StaffFactory(username="someone-else"), message="private note")
    response = staff_client.post(STREAM, {"message": "Let me in", "session": theirs.session_id})
    assert response.status_code == 404
    assert "not yours" in response.json()["detail"]
    assert len(ollama.chats) == 1


def test_the_stream_is_for_logged_in_staff_with_a_csrf_token(client, plain_client, staff_user, ollama):
    assert client.post(STREAM, {"message": "Hi"}).status_code == 401
    assert plain_client.post(STREAM, {"message": "Hi"}).status_code == 403
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(staff_user)
    assert strict.post(STREAM, {"message": "Hi"}).status_code == 403
    assert Client().get(STREAM).status_code == 405
    assert not ollama.chats


# --- the API's stream ---


@committed
def test_the_api_streams_timmys_answer_when_asked(staff_token, staff_user, smollm2):
    answer = api_post(staff_token, {"message": PARIS, "stream": True})
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/event-stream"
    assert answer.named("failover")[0]["to"] == "embedded"
    assert len(answer.named("chunk")) >= 2
    reply = answer.named("reply")[0]
    session = ChatSession.objects.get()
    stored = ChatMessage.objects.get(role=ChatMessage.Role.ASSISTANT)
    assert reply == {
        "response": stored.content,
        "provider": "embedded",
        "model": "SmolLM2-135M-Instruct",
        "session_id": str(session.pk),
        "tokens_in": stored.tokens_in,
        "tokens_out": stored.tokens_out,
        "latency_ms": stored.latency_ms,
        "stopped": False,
    }
    assert "Paris" in reply["response"]
    assert session.owner == staff_user


@committed
def test_the_api_stream_reports_that_no_provider_answered_and_keeps_the_message(staff_token, all_down):
    answer = api_post(staff_token, {"message": "Anyone home?", "stream": True})
    assert answer.status == 200
    error = answer.named("error")[0]
    kept = ChatMessage.objects.get()
    assert error == {"status": 503, "detail": kept.error, "session_id": str(kept.session_id)}
    assert "user_html" not in error


def test_the_api_stream_refuses_bad_input_before_any_event(api_client, staff_user, ollama):
    blank = api_client.post(API, {"message": "  ", "stream": True}, content_type="application/json")
    assert (blank.status_code, blank.json()) == (422, {"detail": "The message is empty."})
    long = api_client.post(API, {"message": "x" * 8_001, "stream": True}, content_type="application/json")
    assert long.status_code == 422 and "at most 8000 characters" in str(long.json()["detail"])
    theirs = chat_send(user=StaffFactory(username="other"), message="secret")
    other = api_client.post(
        API, {"message": "Hi", "session_id": theirs.session_id, "stream": True}, content_type="application/json"
    )
    assert (other.status_code, other.json()) == (404, {"detail": f"Chat session {theirs.session_id} not found."})
    plain = Client(headers={"Authorization": f"Bearer {api_token_create(user=StaffFactory(is_staff=False))[1]}"})
    assert plain.post(API, {"message": "Hi", "stream": True}, content_type="application/json").status_code == 403
    assert len(ollama.chats) == 1
