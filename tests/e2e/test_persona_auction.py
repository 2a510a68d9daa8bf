import importlib
import re
import time
from collections.abc import Iterator

import pytest
from django.apps import apps as django_apps
from playwright.sync_api import Page, expect

from apps.swarm.models import Agent, Task
from tests.e2e.conftest import POST_TASK_TIMEOUT_MS, Worker, reload_until
from tests.llm_servers import OllamaServer
from tests.providers.factories import ProviderFactory

pytestmark = pytest.mark.e2e

WORKER_START_SECONDS = 20


@pytest.fixture
def e2e_env(e2e_env: dict[str, str]) -> dict[str, str]:
    # Daphne loads the embedding model as it starts (it bids for the agents when the task is posted), as it does
    # outside tests; and Forge answers a code task itself here, rather than proposing an upgrade of this checkout.
    return {**e2e_env, "PRELOAD_MODELS": "1", "FORGE_PROPOSES_UPGRADES": "0"}


@pytest.fixture
def personas(transactional_db: None) -> None:
    """The persona agents as the migrations make them (an earlier browser test may have flushed them), offline."""
    for migration, function in (("0002_personas", "load_personas"), ("0005_persona_profiles", "write_profiles")):
        getattr(importlib.import_module(f"apps.swarm.migrations.{migration}"), function)(django_apps, None)


@pytest.fixture
def model_server(transactional_db: None) -> Iterator[OllamaServer]:
    with OllamaServer() as server:
        ProviderFactory(name="ollama", base_url=server.url, model=server.models[0], priority=1)
        yield server


def test_the_code_task_posted_on_the_swarm_page_reaches_forge(
    staff_page: Page, personas: None, worker: Worker, model_server: OllamaServer
):
    page = staff_page
    worker.start()
    deadline = time.monotonic() + WORKER_START_SECONDS
    while Agent.objects.filter(bids_on_tasks=True, status=Agent.Status.IDLE).count() < 6:
        assert time.monotonic() < deadline, f"the worker's agents did not come online:\n{worker.output()}"
        time.sleep(0.2)

    page.goto("/swarm/")
    page.get_by_label("Description").fill("Write a Python function is_palindrome(s) that ignores case")
    # The first post may wait for daphne to finish loading the embedding model (a few seconds on a busy machine).
    page.get_by_role("button", name="Post task").click(timeout=POST_TASK_TIMEOUT_MS)
    message = page.locator(".messages li").filter(has_text="posted")
    expect(message).to_have_text(re.compile(r"Task \d+ posted; 6 bid\(s\) so far"), timeout=15_000)
    task = Task.objects.get(pk=int(re.search(r"Task (\d+)", message.inner_text()).group(1)))  # type: ignore[union-attr]

    # Quill ("write", and the cheapest persona) used to win this; now the worker gives it to Forge.
    page.goto(task.get_absolute_url())
    reload_until(page, page.get_by_text(re.compile(r"^forge for \d+ sats$")))
    bids = page.locator("ol.bids li")
    expect(bids).to_have_count(6)
    expect(bids.first).to_contain_text("by forge")
    expect(bids.first.locator(".bid-match")).to_have_text(re.compile(r"^match 0\.\d{3}$"))
    task.refresh_from_db()
    assert task.assigned_agent is not None and task.assigned_agent.name == "forge"
