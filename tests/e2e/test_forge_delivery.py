"""Only delivered work is paid, in a real browser with the real worker: Forge wins a code task, its change request
is drafted against a real repository by a local Ollama-protocol server whose answer is no usable change, and the
task ends failed with the drafting error on its page, with nothing paid although the wallet could pay."""

import os
import shlex
import sys
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from apps.ledger.models import LedgerEntry, TxType
from apps.swarm.models import Agent, Task
from apps.upgrades.models import UpgradeRequest
from tests.agents.conftest import provider_at
from tests.factories import AgentFactory, TaskFactory
from tests.ledger.helpers import fund_wallet
from tests.llm_servers import OllamaServer
from tests.upgrades.test_gitops import make_repo

pytestmark = pytest.mark.e2e


def test_a_forge_task_whose_draft_fails_shows_failed_with_the_reason_and_nothing_is_paid(
    staff_page: Page, run_manage, tmp_path: Path, transactional_db
):
    page = staff_page
    env = {
        "SELF_MODIFY_REPO": str(make_repo(tmp_path)),
        "SELF_MODIFY_TEST_COMMAND": f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider -p no:django",
        "TIMMY_DATA_DIR": str(tmp_path / "data"),
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    fund_wallet(1000, node_dir=tmp_path / "node")
    forge = AgentFactory(name="forge-e2e", persona="forge", status=Agent.Status.IDLE)
    task = TaskFactory(
        description="Add a sub function to pkg/calc.py",
        status=Task.Status.ASSIGNED,
        assigned_agent=forge,
        winning_bid_sats=135,
        assigned_at=timezone.now(),
    )

    with OllamaServer(reply="I cannot do that.", delay=0) as model:
        provider_at("ollama", model.url, model=model.models[0], read_timeout_seconds=30.0)
        for _ in range(3):  # runs the task (it queues the change request), drafts the request, pays what is due
            result = run_manage("run_worker", "--once", timeout=120, env=env)
            assert result.returncode == 0, result.stdout + result.stderr
            task.refresh_from_db()
            if task.status in Task.TERMINAL:
                break

    request = UpgradeRequest.objects.get(task=task)
    assert task.status == Task.Status.FAILED, (task.status, request.status)
    page.goto(f"/swarm/tasks/{task.pk}/")
    expect(page.locator("h1 .badge")).to_have_text("failed")
    reason = page.locator("dt:has-text('Failed because') + dd")
    expect(reason).to_contain_text(f"Change request {request.pk} failed:")
    expect(reason).to_contain_text("3 attempt")
    expect(page.locator("dt:has-text('Payment') + dd")).to_have_text(
        "nothing paid: only delivered work is paid, and this task failed"
    )

    page.goto("/lightning/ledger?type=outgoing")
    expect(page.locator("#ledger-balance #balance-available .ledger-sats")).to_have_text("1,000")
    expect(page.locator("#ledger-waiting")).to_contain_text("No payment is waiting for funds.")
    expect(page.get_by_text("No entries match these filters.")).to_be_visible()
    assert not LedgerEntry.objects.filter(tx_type=TxType.OUTGOING).exists()
