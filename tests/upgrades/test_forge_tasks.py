"""Forge's code tasks are delivered as proposed upgrades: the task waits, running, on its change request and ends
with it (completed naming the upgrade, or failed with the drafting error), and only a completed one is paid.
Real git repositories, a local Ollama-protocol server, the real worker steps and the embedded dev node."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.agents.worker import run_assigned_tasks
from apps.events.models import Event
from apps.ledger import services as ledger
from apps.ledger import worker as ledger_worker
from apps.ledger.models import LedgerEntry, TxStatus, TxType
from apps.swarm.models import Agent, Task
from apps.swarm.services import task_fail
from apps.upgrades import services, worker
from apps.upgrades.models import Upgrade, UpgradeRequest
from tests.factories import AgentFactory, StaffFactory, TaskFactory
from tests.upgrades.test_loop import GOOD

pytestmark = pytest.mark.usefixtures("isolated_git_config", "transactional_db")


@pytest.fixture
def forge(db) -> Agent:
    return AgentFactory(name="forge-agent", persona="forge", keywords=["code"], status=Agent.Status.IDLE)


@pytest.fixture
def funded(dev_node) -> None:
    """A wallet that can pay any bid here."""
    entry = ledger.create_invoice_entry(amount_sats=1000, memo="funds", source="test")
    ledger.dev_simulate_payment(payment_hash=entry.payment_hash, actor=StaffFactory())


def forge_task(forge: Agent, description: str = "Add a sub function to pkg/calc.py") -> Task:
    """Forge won the auction for 135 sats; the worker runs it: it waits on its change request."""
    task = TaskFactory(
        description=description,
        status=Task.Status.ASSIGNED,
        assigned_agent=forge,
        winning_bid_sats=135,
        assigned_at=timezone.now(),
    )
    assert run_assigned_tasks(timezone.now()) == 1
    task.refresh_from_db()
    assert task.status == Task.Status.RUNNING and task.claimed_by.startswith("change-request ")
    return task


def payments() -> list[LedgerEntry]:
    return list(LedgerEntry.objects.filter(tx_type=TxType.OUTGOING))


def test_a_forge_task_whose_draft_fails_ends_failed_with_the_drafting_error_and_nothing_is_paid(
    repo, model, forge, funded
):
    model("I cannot do that.")
    task = forge_task(forge)
    assert Agent.objects.get(pk=forge.pk).status == Agent.Status.BUSY
    assert ledger_worker.pay_completed_tasks(timezone.now()) == 0  # not delivered: nothing to pay yet

    assert worker.run_upgrade_requests(timezone.now()) == 1
    request = UpgradeRequest.objects.get(task=task)
    task.refresh_from_db()
    assert request.status == UpgradeRequest.Status.FAILED and "3 attempt" in request.error_message
    assert task.status == Task.Status.FAILED
    assert task.failure_reason == f"Change request {request.pk} failed: {request.error_message}"
    assert task.finished_at is not None and task.result == ""
    assert Agent.objects.get(pk=forge.pk).status == Agent.Status.IDLE
    assert Event.objects.filter(event_type="task.failed", task_id=str(task.pk)).count() == 1

    assert ledger_worker.pay_completed_tasks(timezone.now()) == 0
    assert payments() == [] and ledger.get_balance()["available_sats"] == 1000


def test_a_forge_task_whose_draft_proposes_an_upgrade_completes_naming_it_and_is_paid(repo, model, forge, funded):
    model(GOOD)
    task = forge_task(forge)
    assert worker.run_upgrade_requests(timezone.now()) == 1
    upgrade = Upgrade.objects.get()
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED and upgrade.status == Upgrade.Status.PROPOSED
    assert task.result.startswith(f"Proposed upgrade {upgrade.pk}: Add sub (its tests pass).")
    assert f"/self-modify/queue/{upgrade.pk}/diff" in task.result
    assert Agent.objects.get(pk=forge.pk).status == Agent.Status.IDLE

    assert ledger_worker.pay_completed_tasks(timezone.now()) == 1
    [paid] = payments()
    assert (paid.status, paid.amount_sats, paid.task_id, paid.agent_id) == (TxStatus.SETTLED, 135, task.pk, forge.pk)


def test_a_forge_task_failed_in_the_admin_while_drafting_stays_failed_and_unpaid(repo, model, forge, funded):
    model(GOOD)
    task = forge_task(forge)
    task_fail(task_id=task.pk, reason="Failed by admin in the admin: wrong repository")
    assert worker.run_upgrade_requests(timezone.now()) == 1

    assert UpgradeRequest.objects.get(task=task).status == UpgradeRequest.Status.DONE
    task.refresh_from_db()
    assert (task.status, task.failure_reason) == (Task.Status.FAILED, "Failed by admin in the admin: wrong repository")
    assert ledger_worker.pay_completed_tasks(timezone.now()) == 0 and payments() == []


def test_a_retried_request_whose_task_already_failed_leaves_it_failed_and_unpaid(repo, model, forge, funded):
    server = model("I cannot do that.")
    task = forge_task(forge)
    worker.run_upgrade_requests(timezone.now())
    request = UpgradeRequest.objects.get(task=task)
    assert Task.objects.get(pk=task.pk).status == Task.Status.FAILED

    server.reply = lambda messages: GOOD  # the model does better the second time
    services.upgrade_request_retry(request_id=request.pk, actor=StaffFactory())
    assert worker.run_upgrade_requests(timezone.now()) == 1
    assert UpgradeRequest.objects.get(pk=request.pk).status == UpgradeRequest.Status.DONE
    assert Task.objects.get(pk=task.pk).status == Task.Status.FAILED
    assert ledger_worker.pay_completed_tasks(timezone.now()) == 0 and payments() == []


def test_a_forge_task_whose_request_runs_out_of_attempts_fails_with_the_reason(forge, settings, dev_node):
    task = forge_task(forge)
    request = UpgradeRequest.objects.get(task=task)
    assert services.upgrade_request_claim(worker_id="w1") is not None
    UpgradeRequest.objects.filter(pk=request.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    settings.TASK_MAX_ATTEMPTS = 1

    assert worker.recover_stale_upgrades(timezone.now()) == 1
    task.refresh_from_db()
    assert task.status == Task.Status.FAILED
    assert task.failure_reason == (
        f"Change request {request.pk} failed: worker w1 stopped renewing its lease after 1 attempts"
    )
    assert Agent.objects.get(pk=forge.pk).status == Agent.Status.IDLE


def test_a_forge_task_too_long_for_a_change_request_fails_saying_why(forge, db):
    long = TaskFactory(
        description="Refactor " + "x" * 5000,
        status=Task.Status.ASSIGNED,
        assigned_agent=forge,
        winning_bid_sats=135,
        assigned_at=timezone.now(),
    )
    assert run_assigned_tasks(timezone.now()) == 1
    long.refresh_from_db()
    assert long.status == Task.Status.FAILED and "the limit is 4000" in long.failure_reason
    assert not UpgradeRequest.objects.exists()
