"""Timmy's chat and the router's status page in a real browser, against daphne and a local model server."""

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from apps.providers.models import CircuitState, Provider, ProviderMetrics
from apps.providers.services import breaker_record_failure, breaker_record_success
from tests.e2e.conftest import RecordedPage, WebServer, log_in
from tests.llm_servers import OllamaServer, refused_url
from tests.providers.factories import ProviderFactory

pytestmark = pytest.mark.e2e
FIRST_MESSAGE_MS = 60_000


@pytest.fixture
def model_server(transactional_db: None) -> Iterator[OllamaServer]:
    with OllamaServer() as server:
        ProviderFactory(name="ollama", base_url=server.url, model=server.models[0], priority=1)
        yield server


def say(page: Page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


def test_chat_answers_through_the_local_model_and_keeps_the_conversation(staff_page: Page, model_server):
    page = staff_page
    page.goto("/chat")
    say(page, "What is a <sat>?")
    conversation = page.locator("#conversation")
    # The web process loads the embedding model for Timmy's memory on its first message: seconds, once.
    expect(conversation.locator(".chat-assistant .chat-meta")).to_contain_text(
        "via ollama · llama3.2", timeout=FIRST_MESSAGE_MS
    )
    expect(conversation).to_contain_text("Echo: What is a <sat>?")  # shown as text, not markup

    say(page, "And a millisat?")
    expect(conversation.locator(".chat-assistant .chat-meta")).to_have_count(2)
    # The second request carried the first exchange: the conversation is one history.
    sent = [m["content"] for m in model_server.chats[-1]["messages"] if m["role"] != "system"]
    assert sent == ["What is a <sat>?", "Echo: What is a <sat>?", "And a millisat?"]

    page.reload()
    expect(conversation.locator(".chat-msg")).to_have_count(4)
    page.get_by_role("button", name="New conversation").click()
    expect(conversation.locator(".chat-msg")).to_have_count(0)


def test_chat_works_without_javascript(browser: Browser, web_server: WebServer, staff: Any, model_server):
    context = browser.new_context(base_url=web_server.url, java_script_enabled=False)
    try:
        page = context.new_page()
        log_in(page, staff.username, next_path="/chat")
        expect(page.get_by_role("button", name="Stop")).to_be_hidden()
        page.get_by_label("Message").fill("Hello without scripts")
        page.get_by_role("button", name="Send").click()
        # The plain form: the page comes back with the exchange (no streaming).
        expect(page.locator("#conversation .chat-assistant")).to_contain_text(
            "Echo: Hello without scripts", timeout=FIRST_MESSAGE_MS
        )
        assert urlsplit(page.url).path == "/chat"
        expect(page.locator(".chat-sessions a")).to_contain_text("Hello without scripts")
    finally:
        context.close()


def test_chat_says_plainly_when_no_model_answers(staff_page: Page, transactional_db):
    ProviderFactory(name="ollama", base_url=refused_url(), priority=1)
    page = staff_page
    page.goto("/chat")
    say(page, "Anyone there?")
    alert = page.locator("#conversation .chat-error")
    expect(alert).to_contain_text("No LLM provider answered", timeout=FIRST_MESSAGE_MS)
    expect(alert).to_contain_text("ollama: cannot connect")
    expect(page.locator("#conversation")).to_contain_text("Anyone there?")  # the question is kept


def test_router_status_draws_the_charts_and_resets_an_open_breaker(
    staff_page: Page, recorded_page: RecordedPage, transactional_db
):
    now = timezone.now()
    dead = ProviderFactory(name="ollama", base_url=refused_url(), priority=1)
    live = ProviderFactory(name="backup", base_url=refused_url(), priority=2)
    breaker_record_success(live, now=now, latency_ms=120)
    for _ in range(5):
        breaker_record_failure(dead, now=now, error_class="connection", message="cannot connect")
    assert ProviderMetrics.objects.get(provider=dead).circuit_state == CircuitState.OPEN
    ProviderFactory(name="openai", kind=Provider.Kind.OPENAI, enabled=False, priority=3)

    page = staff_page
    page.goto("/router/status")
    card = page.locator("#provider-ollama")
    expect(card.locator(".badge[class*=circuit-]")).to_contain_text("circuit open")
    expect(page.locator("#provider-openai")).to_contain_text("set OPENAI_BASE_URL or OPENAI_API_KEY")
    # Chart.js drew into each enabled provider's canvas.
    page.wait_for_function("() => document.querySelectorAll('canvas[data-provider]').length >= 2")
    drawn = page.evaluate(
        "() => [...document.querySelectorAll('canvas[data-provider]')].every(c => c.width > 0 && c.height > 0)"
    )
    assert drawn

    card.get_by_role("button", name="Reset breaker").click()
    expect(page.locator("#provider-ollama .badge[class*=circuit-]")).to_contain_text("circuit closed")
    assert ProviderMetrics.objects.get(provider=dead).circuit_state == CircuitState.CLOSED
    assert recorded_page.js_errors == []
    assert recorded_page.external_requests() == []
