import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from apps.events.models import Event
from apps.ledger.models import LedgerEntry
from apps.swarm import services
from apps.swarm.models import Agent, Task
from tests.e2e.conftest import SUBPROCESS_SETTINGS, Worker, event_rows, post_task
from tests.factories import AgentFactory
from tests.ledger.helpers import fund_wallet
from tests.llm_servers import OllamaServer
from tests.providers.factories import ProviderFactory

pytestmark = pytest.mark.e2e


def wait_for_auction_to_close(task: Task) -> None:
    remaining = (task.auction_closes_at - timezone.now()).total_seconds()
    # The web server posted it, with the short auction it was started with.
    assert remaining <= int(SUBPROCESS_SETTINGS["AUCTION_SECONDS"]), remaining
    time.sleep(max(0.0, remaining) + 0.1)


@pytest.fixture
def model_server(transactional_db: None) -> Iterator[OllamaServer]:
    """The worker runs the tasks it assigns: through a local server that speaks Ollama's protocol."""
    with OllamaServer() as server:
        ProviderFactory(name="ollama", base_url=server.url, model=server.models[0], priority=1)
        yield server


def test_task_posted_on_the_page_is_created_then_assigned_in_the_event_log(
    staff_page: Page, worker: Worker, model_server: OllamaServer, tmp_path: Path
):
    page = staff_page
    fund_wallet(1000, node_dir=tmp_path / "node")  # the winner is paid only from funds the wallet holds
    researcher = AgentFactory(
        status=Agent.Status.IDLE, description="Research: finds and summarises sources.", base_bid_sats=50
    )
    AgentFactory(
        status=Agent.Status.IDLE,
        description="Code: writes and fixes programs.",
        capabilities=["coding"],
        base_bid_sats=100,
    )
    other = services.task_post(description="Someone else's task", auction_seconds=600)

    task = post_task(page, "Research the history of the sat")
    assert task.status == Task.Status.BIDDING
    assert task.posted_by.username == "operator"

    page.goto("/swarm/events")
    created = event_rows(page).filter(has_text="task.created").filter(has=page.locator(f'a[href="?task_id={task.pk}"]'))
    expect(created).to_have_count(1)
    expect(created).to_contain_text("Research the history of the sat")
    expect(event_rows(page).filter(has_text="task.assigned")).to_have_count(0)

    wait_for_auction_to_close(task)
    output = worker.run_once()
    # The auction closed, the winner ran the task, and was paid its bid.
    assert "Handled 3 item(s)." in output, output
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED
    assert task.result == "Echo: Research the history of the sat"
    payment = LedgerEntry.objects.get(task=task)
    assert (payment.tx_type, payment.status, payment.amount_sats) == ("outgoing", "settled", 50)
    assert payment.agent == researcher

    page.reload()
    assigned = (
        event_rows(page).filter(has_text="task.assigned").filter(has=page.locator(f'a[href="?task_id={task.pk}"]'))
    )
    expect(assigned).to_have_count(1)
    expect(assigned).to_contain_text(researcher.name)  # the best match bids its base price, 50 sats: the lowest
    expect(assigned).to_contain_text('"amount_sats": 50')
    # The page also shows events of other tasks and of no task until it is filtered.
    expect(event_rows(page).filter(has=page.locator(f'a[href="?task_id={other.pk}"]')).first).to_be_visible()

    assigned.get_by_role("link", name=f"#{task.pk}", exact=True).click()
    page.wait_for_url(lambda url: parse_qs(urlsplit(url).query).get("task_id") == [str(task.pk)])
    expect(page.get_by_role("textbox", name="Task", exact=True)).to_have_value(str(task.pk))
    rows = event_rows(page)
    expected = list(Event.objects.filter(task_id=str(task.pk)).values_list("event_type", flat=True))
    assert {"task.created", "task.bidding", "bid.submitted", "task.assigned"} <= set(expected)
    # Newest first: the winner paid its bid (the dev node pays its own invoice), and, as the researcher is an Echo
    # persona, what it found remembered once the task was done.
    assert expected[:7] == [
        "payment.settled", "payment.sending", "memory.stored", "task.completed", "tool.completed", "tool.called",
        "task.started",
    ]  # fmt: skip
    expect(rows).to_have_count(len(expected))
    expect(rows.filter(has=page.locator(f'a[href="?task_id={task.pk}"]'))).to_have_count(len(expected))
    expect(rows.locator("td:nth-child(3)")).to_have_text(expected)  # newest first, as stored
