"""The streamed chat in a real browser: Chromium, daphne, and the real embedded SmolLM2 (Ollama refuses, as on a
fresh install), so what streams is what the model writes, token by token."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from apps.agents.models import ChatMessage
from tests.e2e.conftest import RecordedPage, WebServer
from tests.llm_servers import ModelHostProcess, refused_url

pytestmark = pytest.mark.e2e
# The web process loads the embedding model for Timmy's memory on its first message: seconds, once.
FIRST_REPLY_MS = 60_000
PARIS = "What is the capital of France? Answer with one word."
LONG = "Write a long story about a dragon."

# Records, in the page, what the reply showed while it was being written and once it was complete.
WATCH_REPLY = """() => {
  window.replySeen = { streamed: [], final: null };
  new MutationObserver(() => {
    const streaming = document.querySelector("#conversation .chat-assistant.is-streaming .chat-text");
    if (streaming && streaming.textContent) window.replySeen.streamed.push(streaming.textContent);
    const done = document.querySelector("#conversation .chat-assistant:not(.is-streaming) .chat-markdown");
    if (done && window.replySeen.final === null) window.replySeen.final = done.textContent.trim();
  }).observe(document.getElementById("conversation"), { childList: true, subtree: true, characterData: true });
}"""


@pytest.fixture
def web_server(e2e_env: dict[str, str], tmp_path: Path, model_host_process: ModelHostProcess) -> Iterator[WebServer]:
    """daphne with no Ollama and the session's embedded model host: the default providers of a fresh install."""
    env = {**e2e_env, **model_host_process.env, "OLLAMA_HOST": refused_url()}
    server = WebServer(env=env, log_path=tmp_path / "daphne.log")
    server.start()
    yield server
    server.stop()


def stored_reply(timeout: float = 30) -> ChatMessage:
    deadline = time.monotonic() + timeout
    while (reply := ChatMessage.objects.filter(role="assistant").order_by("-id").first()) is None:
        if time.monotonic() > deadline:
            pytest.fail("no reply was stored")
        time.sleep(0.1)
    return reply


def test_the_reply_streams_in_token_by_token_and_says_who_answered(
    staff_page: Page, recorded_page: RecordedPage, staff: Any
):
    page = staff_page
    page.goto("/chat")
    page.evaluate(WATCH_REPLY)
    box = page.get_by_label("Message")
    expect(page.locator("#chat-count")).to_contain_text("0 / 8,000 characters")

    # Shift+Enter is a new line; Enter sends.
    box.fill("What is the capital of France?")
    box.press("Shift+Enter")
    expect(box).to_have_value("What is the capital of France?\n")
    box.fill(PARIS)
    box.press("Enter")

    conversation = page.locator("#conversation")
    expect(conversation.locator(".chat-user")).to_have_text(f"You{PARIS}")  # shown at once, as sent
    expect(box).to_have_value("")
    # Ollama is down: the page says so in place while the embedded model takes over.
    expect(conversation.locator(".chat-failover")).to_contain_text("ollama did not answer", timeout=FIRST_REPLY_MS)
    reply = conversation.locator(".chat-assistant")
    expect(reply.locator(".chat-meta")).to_contain_text("via embedded · SmolLM2-135M-Instruct", timeout=FIRST_REPLY_MS)
    stored = stored_reply()
    expect(reply.locator(".chat-meta")).to_contain_text(
        f"{stored.tokens_in} tokens in, {stored.tokens_out} out · {stored.latency_ms} ms"
    )
    expect(reply.locator(".chat-markdown")).to_contain_text("Paris")
    expect(reply.locator(".chat-failover")).to_have_count(1)  # the failover stays above the reply it led to

    seen = page.evaluate("window.replySeen")
    assert seen["final"] == stored.content.strip()
    # The first piece was on the page, as plain text, before the reply was complete.
    assert seen["streamed"] and len(seen["streamed"][0]) < len(seen["final"])
    assert seen["streamed"][-1].strip() == seen["final"]

    # The reply is part of the conversation: after a reload it is there, rendered the same way.
    page.reload()
    expect(conversation.locator(".chat-msg")).to_have_count(2)
    expect(page.locator(".chat-sessions a")).to_contain_text(PARIS)
    assert recorded_page.js_errors == []
    assert recorded_page.external_requests() == []


def test_stop_stops_the_model_and_an_over_limit_message_is_refused(
    staff_page: Page, recorded_page: RecordedPage, staff: Any, model_host_process: ModelHostProcess
):
    page = staff_page
    page.goto("/chat")
    box = page.get_by_label("Message")
    conversation = page.locator("#conversation")

    # A 22k paste is kept whole, counted, and refused with the limit: never cut to fit.
    box.fill("x" * 22_000)
    expect(page.locator("#chat-count.is-over")).to_contain_text("22,000 / 8,000 characters")
    box.press("Enter")
    expect(page.locator(".chat-refused")).to_have_text(
        "The message is 22,000 characters; the limit is 8,000. Shorten it and send it again."
    )
    assert len(box.input_value()) == 22_000
    expect(conversation.locator(".chat-msg")).to_have_count(0)

    box.fill(LONG)
    expect(page.locator(".chat-refused")).to_be_hidden()
    page.get_by_role("button", name="Send").click()
    writing = conversation.locator(".chat-assistant.is-streaming .chat-text")
    expect(writing).not_to_be_empty(timeout=FIRST_REPLY_MS)
    page.get_by_role("button", name="Stop").click()
    expect(conversation.locator(".chat-assistant .chat-note")).to_contain_text("Stopped.")
    expect(page.get_by_role("button", name="Send")).to_be_visible()

    # The server stopped the model: the partial reply is stored as stopped, far short of the story's ~1,500 tokens.
    reply = stored_reply()
    deadline = time.monotonic() + 10
    while not reply.stopped and time.monotonic() < deadline:
        reply.refresh_from_db()
        time.sleep(0.1)
    assert reply.stopped and reply.tokens_out is not None and reply.tokens_out < 300
    health = model_host_process.health()
    assert health is not None and health["waiting"] == 0

    # The model is free at once for the next message, which continues the same conversation: had it gone on
    # writing the story, this request would have waited a minute for its turn.
    box.fill(PARIS)
    box.press("Enter")
    expect(conversation.locator(".chat-assistant").nth(1).locator(".chat-meta")).to_contain_text(
        "via embedded", timeout=FIRST_REPLY_MS
    )
    follow_up = ChatMessage.objects.filter(session_id=reply.session_id).order_by("id")
    assert follow_up.count() == 4
    assert follow_up.last().latency_ms < 10_000  # type: ignore[union-attr]

    # Reopened from the list of conversations, the stopped reply says so.
    page.get_by_role("button", name="New conversation").click()
    expect(conversation.locator(".chat-msg")).to_have_count(0)
    page.locator(".chat-sessions a").filter(has_text=LONG).click()
    expect(conversation.locator(".chat-msg")).to_have_count(4)
    expect(conversation.locator(".chat-stopped")).to_have_text("stopped")
    assert recorded_page.js_errors == []
