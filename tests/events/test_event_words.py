"""Events in words from the services that log them, the same words on every page that shows events, markup in any
field shown as text on all of them, and one way of showing times."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.agents.services import tool_run
from apps.core.services import LoginLockout, login_throttled
from apps.events.feed import FeedEvent
from apps.events.selectors import events_after
from apps.events.services import log_event
from apps.ledger import services as ledger
from apps.ledger import worker as ledger_worker
from apps.memory import services as memory
from apps.memory.embeddings import reset_embedder
from apps.providers import router
from apps.providers.models import Provider, ProviderRequest
from apps.providers.services import breaker_record_failure, breaker_reset
from apps.swarm.models import Task
from apps.swarm.services import agents_bring_online, auction_close, task_post
from apps.upgrades.services import upgrade_request_create
from tests.events.factories import EventFactory, persona
from tests.events.pages import row_words
from tests.events.test_registry import SAMPLES
from tests.factories import AgentFactory, StaffFactory, TaskFactory
from tests.llm_servers import refused_url
from tests.providers.factories import ProviderFactory

EVENTS = reverse("events:list")
LIVE = reverse("events:live")
HOME = reverse("home")
CHANGELIST = reverse("admin:events_event_changelist")
HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture
def hashed_embedder(settings: Any) -> Any:
    # Bids and memories embed text: the hashed embedder keeps these tests from loading a model.
    settings.EMBEDDING_BACKEND = "hashed"
    reset_embedder()
    yield
    reset_embedder()


def words(client: Any, **filters: str) -> list[str]:
    return row_words(client.get(EVENTS, filters).content.decode())


# --- Each app's events, logged by its own services, read as words ---


def test_a_task_posted_and_auctioned_reads_as_words(staff_client, staff_user, hashed_embedder):
    agents_bring_online(source="test")
    task = task_post(description="Research the mempool", posted_by=staff_user, auction_seconds=15)
    auction_close(task_id=task.pk, now=timezone.now() + timedelta(seconds=16))
    task.refresh_from_db()

    said = words(staff_client, task_id=str(task.pk))

    bids = task.bids.count()
    assert said[0] == f"Assigned for {task.winning_bid_sats} sats"
    assert all(line.startswith("Bid ") and line.endswith(" sats") for line in said[1 : 1 + bids])
    assert said[1 + bids :] == ["Auction opened for 15 s", "New task: Research the mempool"]
    assert words(staff_client, event_type="agent.joined")[0] == "Agent joined"


def test_a_tool_run_reads_as_words(staff_client):
    tool_run(name="swarm_status", arguments={}, source="cli")

    assert words(staff_client) == ["Tool completed: swarm_status", "Tool call: swarm_status"]


def test_a_router_with_no_provider_answering_logs_an_error_that_reads_its_text(staff_client):
    ProviderFactory(name="local", kind=Provider.Kind.OLLAMA, base_url=refused_url(), priority=1)

    with pytest.raises(router.AllProvidersFailed):
        router.complete([{"role": "user", "content": "hello"}])

    [error] = words(staff_client, event_type="system.error")
    assert error.startswith("Error: no LLM provider answered — local: cannot connect")


def test_a_breaker_that_opened_and_was_reset_reads_as_words(staff_client, staff_user, settings):
    provider = ProviderFactory(name="ollama")
    for _ in range(settings.CIRCUIT_BREAKER_THRESHOLD):
        breaker_record_failure(
            provider, now=timezone.now(), error_class=ProviderRequest.ErrorClass.CONNECTION, message="refused"
        )
    breaker_reset(provider, actor=staff_user)

    assert words(staff_client, event_type="provider.*") == [
        f"ollama: circuit breaker reset by reviewer (was open, {settings.CIRCUIT_BREAKER_THRESHOLD} failures)",
        f"ollama: circuit breaker opened ({settings.CIRCUIT_BREAKER_THRESHOLD} consecutive failures)",
    ]


def test_an_invoice_paid_on_the_dev_node_reads_as_words(staff_client, staff_user, dev_node):
    entry = ledger.create_invoice_entry(amount_sats=100, memo="top up", source="test")
    ledger.dev_simulate_payment(payment_hash=entry.payment_hash, actor=staff_user)

    assert words(staff_client, event_type="payment.*") == [
        "Received 100 sats",
        "Simulated paying the invoice for 100 sats (by reviewer)",
        "Invoice for 100 sats: top up",
    ]


@pytest.mark.django_db(transaction=True)  # an outgoing payment refuses to start inside a transaction
def test_an_agent_paid_for_its_task_reads_as_echo_was_paid(dev_node):
    funds = ledger.create_invoice_entry(amount_sats=200, memo="funds", source="test")
    ledger.dev_simulate_payment(payment_hash=funds.payment_hash, actor=StaffFactory(username="payer"))
    echo = persona("echo")
    task = TaskFactory(
        status=Task.Status.COMPLETED, assigned_agent=echo, winning_bid_sats=77, finished_at=timezone.now()
    )
    client = _logged_in(StaffFactory(username="reader"))

    assert ledger_worker.pay_completed_tasks(timezone.now()) == 1

    assert words(client, task_id=str(task.pk)) == [
        f"echo was paid 77 sats for task {task.pk}",
        f"Paying 77 sats to echo for task {task.pk}",
    ]


def _logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_memory_stored_published_and_forgotten_reads_as_words(staff_client, staff_user, hashed_embedder):
    echo = persona("echo")
    stored = memory.store_memory(content="The mempool is calm.", context_type="fact", source="test", agent_id=echo.pk)
    memory_id = stored.memory.pk
    memory.memory_set_public(memory_id=memory_id, public=True, actor=staff_user)
    memory.forget(memory_id=memory_id, actor=staff_user, reason="outdated")

    assert words(staff_client, event_type="memory.*") == [
        f"Forgot memory #{memory_id} (by reviewer): outdated",
        f"Made memory #{memory_id} public (by reviewer)",
        f"echo stored memory #{memory_id} (fact, 20 characters, shared)",
    ]


def test_a_change_request_reads_as_words(staff_client, staff_user):
    request = upgrade_request_create(instruction="Add a docstring to the worker.", actor=staff_user)

    assert words(staff_client, event_type="upgrade.*") == [f"Change request #{request.pk} by reviewer"]


def test_a_refused_sign_in_reads_as_words(staff_client):
    until = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)
    login_throttled(lockout=LoginLockout(kind="account", until=until), username="alice", address="10.0.0.9")

    assert words(staff_client, event_type="auth.*") == [
        "Sign-in as alice from 10.0.0.9 refused: the account is locked after too many failures until 10:15:00 UTC"
    ]


# --- The live feed carries the same words ---


def test_the_feed_sends_each_event_with_its_words_and_agents_name(db):
    echo = persona("echo")
    data, said = SAMPLES["payment.settled"]
    event = log_event("payment.settled", source="swarm", task_id=1, agent_id=echo.pk, data=data)

    # As the follower of each web process and a resuming client's replay read them (selectors.events_after).
    [read] = events_after(event.id - 1)
    payload = FeedEvent.of(read).frame

    assert f'"summary": "{said}"' in payload
    assert '"agent_name": "echo"' in payload


# --- Markup in any field is text on every page ---


def _hostile(value: Any) -> Any:
    if isinstance(value, str):
        return HOSTILE
    if isinstance(value, dict):
        return {key: _hostile(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_hostile(item) for item in value]
    return value


def test_markup_in_every_field_of_every_type_is_shown_as_text_on_every_page(staff_client, superuser_client):
    task = TaskFactory(description="a task")
    for event_type, (data, _) in SAMPLES.items():
        log_event(event_type, source=HOSTILE, task_id=task.pk, agent_id=HOSTILE, data=_hostile(data))
    log_event("task.created", source="swarm", task_id=HOSTILE, agent_id="1", data={"description": HOSTILE})

    pages = {
        "events": staff_client.get(EVENTS),
        "events, htmx": staff_client.get(EVENTS, {"event_type": "upgrade.*"}, headers={"HX-Request": "true"}),
        "events, agent filter": staff_client.get(EVENTS, {"agent_id": HOSTILE}),
        "live": staff_client.get(LIVE),
        "home": staff_client.get(HOME),
        "task": staff_client.get(task.get_absolute_url()),
        "admin": superuser_client.get(CHANGELIST),
    }

    for name, response in pages.items():
        html = response.content.decode()
        assert response.status_code == 200, name
        assert HOSTILE not in html, name
        assert ESCAPED in html, name
    # The words themselves carry the value, escaped: "Invoice for 100 sats: <script>…".
    assert f"Invoice for 100 sats: {ESCAPED}" in pages["events"].content.decode()
    assert f"New task: {ESCAPED}" in pages["live"].content.decode()
    assert f"Failed: {ESCAPED}" in pages["task"].content.decode()
    assert f"No agent is named “{ESCAPED}”" not in pages["events, agent filter"].content.decode()  # it has events


def test_an_agent_filter_naming_nobody_says_so_escaped(staff_client):
    html = staff_client.get(EVENTS, {"agent_id": HOSTILE}).content.decode()

    assert f"No events match these filters. No agent is named “{ESCAPED}”." in html


# --- Times ---


def test_every_page_shows_times_in_the_servers_zone_and_says_which(settings, staff_client):
    settings.TIME_ZONE = "Asia/Kolkata"  # UTC+05:30 all year
    task = TaskFactory(description="a task")
    at = datetime(2026, 3, 1, 10, 0, 5, tzinfo=UTC)
    EventFactory(task_id=str(task.pk), timestamp=at, data={"description": "x"})
    iso = at.isoformat()

    events = staff_client.get(EVENTS).content.decode()
    assert f'<time datetime="{iso}" title="{iso}">2026-03-01 15:30:05</time>' in events
    assert "<th>Time (Asia/Kolkata)</th>" in events
    for url in (LIVE, HOME):
        html = staff_client.get(url).content.decode()
        assert f'<time datetime="{iso}" title="{iso}">15:30:05</time>' in html
        # The script writes the times of the events that arrive later in this zone too.
        assert 'data-time-zone="Asia/Kolkata"' in html
        assert "times in Asia/Kolkata" in html
    page = staff_client.get(task.get_absolute_url()).content.decode()
    assert f'<time datetime="{iso}" title="{iso}">15:30:05</time>' in page
    assert "times in Asia/Kolkata" in page


# --- Query budgets ---


def _log_many(count: int) -> None:
    agents = AgentFactory.create_batch(5)
    for n in range(count):
        event_type, (data, _) = list(SAMPLES.items())[n % len(SAMPLES)]
        log_event(event_type, source="test", task_id=n, agent_id=agents[n % len(agents)].pk, data=data)


@pytest.mark.parametrize("url", [HOME, EVENTS, LIVE])
def test_pages_with_events_cost_the_same_few_queries_however_many_events(staff_client, url):
    _log_many(1)
    with CaptureQueriesContext(connection) as few:
        staff_client.get(url)
    _log_many(300)

    with CaptureQueriesContext(connection) as many:
        response = staff_client.get(url)

    assert response.status_code == 200
    assert len(many.captured_queries) <= len(few.captured_queries)


def test_events_page_filtered_by_family_and_agent_name_costs_six_queries(staff_client, django_assert_max_num_queries):
    _log_many(120)
    quill = persona("quill")
    for n in range(60):
        log_event("payment.settled", source="swarm", task_id=n, agent_id=quill.pk, data=SAMPLES["payment.settled"][0])

    # Session, user, the agent's name, the events, their agents' names, the nav's pending upgrades.
    with django_assert_max_num_queries(6):
        response = staff_client.get(EVENTS, {"event_type": "payment.*", "agent_id": "Quill"})

    assert len(row_words(response.content.decode())) == 50
