"""Paying agents for completed tasks never takes the balance below zero: a payment the wallet cannot cover waits,
visibly, and is paid by the worker once an incoming payment brings the funds. The embedded dev node, real
transactions (`transactional_db`: an outgoing payment refuses to start inside one)."""

import logging
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from apps.events.models import Event
from apps.ledger import selectors, services, worker
from apps.ledger.backends.dev import DevBackend
from apps.ledger.models import LedgerEntry, TxStatus, TxType
from apps.swarm.models import Agent, Task
from tests.factories import AgentFactory, StaffFactory, TaskFactory

pytestmark = pytest.mark.usefixtures("transactional_db")


def receive(sats: int) -> LedgerEntry:
    """Funds arrive: an invoice of ours, paid from outside (the dev node's simulated payment, as on the page)."""
    entry = services.create_invoice_entry(amount_sats=sats, memo="top up", source="test")
    return services.dev_simulate_payment(payment_hash=entry.payment_hash, actor=StaffFactory())


def completed(bid: int, *, agent: Agent | None = None, finished_ago: timedelta = timedelta(0)) -> Task:
    return TaskFactory(
        status=Task.Status.COMPLETED,
        assigned_agent=agent or AgentFactory(),
        winning_bid_sats=bid,
        finished_at=timezone.now() - finished_ago,
    )


def outgoing() -> list[LedgerEntry]:
    return list(LedgerEntry.objects.filter(tx_type=TxType.OUTGOING).order_by("id"))


def available() -> int:
    return services.get_balance()["available_sats"]


def waiting_events() -> list[Event]:
    return list(Event.objects.filter(event_type="payment.waiting").order_by("id"))


def test_a_payment_the_balance_cannot_cover_waits_visibly_and_is_paid_once_funds_arrive(dev_node, staff_client, caplog):
    receive(20)
    task = completed(135)
    with caplog.at_level(logging.WARNING, logger="timmy.ledger"):
        assert worker.pay_completed_tasks(timezone.now()) == 0
        assert worker.pay_completed_tasks(timezone.now()) == 0  # a second cycle: still waiting, said once

    assert outgoing() == [] and available() == 20
    [event] = waiting_events()
    assert event.task_id == str(task.pk)
    assert event.data["reason"] == "waiting for funds: needs 135 sats, 20 available"
    assert [r.getMessage() for r in caplog.records] == [
        f"payment for task {task.pk} waits for funds: needs 135 sats, 20 available"
    ]
    page = staff_client.get(reverse("swarm:task", args=[task.pk])).content.decode()
    assert '<dd class="payment-waiting">waiting for funds: needs 135 sats, 20 available</dd>' in page
    [row] = selectors.payments_waiting()
    assert (row.task, row.reason) == (task, "needs 135 sats, 20 available")
    ledger_region = render_to_string("ledger/_waiting.html")
    assert f"Task {task.pk}" in ledger_region and "needs 135 sats, 20 available" in ledger_region

    receive(200)
    assert worker.pay_completed_tasks(timezone.now()) == 1
    [paid] = outgoing()
    assert (paid.status, paid.amount_sats, paid.task_id) == (TxStatus.SETTLED, 135, task.pk)
    assert available() == 85
    assert selectors.payments_waiting() == [] and "No payment is waiting" in render_to_string("ledger/_waiting.html")
    page = staff_client.get(reverse("swarm:task", args=[task.pk])).content.decode()
    assert '<dt>Payment</dt><dd class="payment-paid">paid 135 sats</dd>' in page
    assert worker.pay_completed_tasks(timezone.now()) == 0 and len(outgoing()) == 1


def test_funds_pay_the_waiting_tasks_oldest_first_as_far_as_they_go(dev_node):
    oldest = completed(50, finished_ago=timedelta(minutes=3))
    middle = completed(60, finished_ago=timedelta(minutes=2))
    newest = completed(70, finished_ago=timedelta(minutes=1))
    assert worker.pay_completed_tasks(timezone.now()) == 0  # a fresh install: nothing to pay with
    assert len(waiting_events()) == 3 and outgoing() == [] and available() == 0

    receive(115)
    assert worker.pay_completed_tasks(timezone.now()) == 2
    assert [(e.task_id, e.amount_sats) for e in outgoing()] == [(oldest.pk, 50), (middle.pk, 60)]
    assert available() == 5
    assert [row.task for row in selectors.payments_waiting()] == [newest]
    assert len(waiting_events()) == 3


def test_a_waiting_payment_outlives_the_seven_day_window_while_a_task_never_tried_that_old_is_left(dev_node):
    waited = completed(40)
    worker.pay_completed_tasks(timezone.now())
    Task.objects.filter(pk=waited.pk).update(finished_at=timezone.now() - timedelta(days=30))
    # Completed long before this ledger could pay it (an install from before payments existed, say).
    ancient = completed(40, finished_ago=timedelta(days=30))

    receive(100)
    assert worker.pay_completed_tasks(timezone.now()) == 1
    assert [e.task_id for e in outgoing()] == [waited.pk]
    assert ancient not in services.tasks_to_pay()


def test_a_failed_payment_shows_its_reason_on_the_task_page_and_in_the_log(dev_node, tmp_path, staff_client, caplog):
    receive(100)
    task = completed(30)
    (tmp_path / "elsewhere").mkdir()

    class OnlyForeignInvoices(DevBackend):
        """This node, handed the invoice of another node to pay (the dev node can only pay its own)."""

        def create_invoice(self, *, amount_sats: int, memo: str, expiry_seconds: int):
            return DevBackend(tmp_path / "elsewhere").create_invoice(
                amount_sats=amount_sats, memo=memo, expiry_seconds=expiry_seconds
            )

    with caplog.at_level(logging.WARNING, logger="timmy.ledger"):
        entry = services.pay_task(task=task, backend=OnlyForeignInvoices(tmp_path))
    assert entry.status == TxStatus.FAILED
    assert [r.getMessage() for r in caplog.records] == [
        f"payment {entry.payment_hash[:12]}… for task {task.pk} failed: the dev node can only pay its own invoices"
    ]
    caplog.clear()
    page = staff_client.get(reverse("swarm:task", args=[task.pk])).content.decode()
    assert "payment failed: the dev node can only pay its own invoices" in page
    assert available() == 100
    # Not paid again by itself: a person looks at it on the ledger.
    with caplog.at_level(logging.WARNING, logger="timmy.ledger"):
        assert worker.pay_completed_tasks(timezone.now()) == 0
    assert len(outgoing()) == 1 and caplog.records == []


def test_two_payers_racing_never_overdraw(dev_node):
    receive(100)
    agent = AgentFactory()
    tasks = [completed(30, agent=agent) for _ in range(6)]
    start = threading.Barrier(3)
    errors: list[Exception] = []

    def payer() -> None:
        start.wait()
        try:
            for _ in range(3):
                for task in services.tasks_to_pay():
                    try:
                        services.pay_task(task=task)
                    except (services.PaymentWaiting, services.AlreadyPaid):
                        continue
        except Exception as exc:  # any error fails the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=payer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    paid = [e for e in outgoing() if e.status == TxStatus.SETTLED]
    assert len(paid) == 3 and len({e.task_id for e in paid}) == 3 and {e.task_id for e in paid} <= {t.pk for t in tasks}
    assert available() == 10 and services.totals_drift() == []
