"""The registry of event types (apps/events/registry.py): every type the code logs is declared, and every declared
type reads as words on the pages, rendered from a real event of that type."""

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.urls import reverse

from apps.events import registry
from apps.events.models import EventType
from apps.events.services import log_event
from tests.events.factories import EventFactory, persona
from tests.events.pages import row_words

ROOT = Path(__file__).resolve().parents[2]
URL = reverse("events:list")
TYPE = re.compile(rf"(?:{'|'.join(registry.FAMILIES)})\.[a-z][a-z0-9_]*")

UPGRADE = {"upgrade_id": 7, "branch": "self-modify/7", "status": "proposed", "by": "system"}
OUTGOING = {"payment_hash": "ab" * 32, "tx_type": "outgoing", "amount_sats": 77, "source": "swarm"}
INCOMING = {"payment_hash": "cd" * 32, "tx_type": "incoming", "amount_sats": 100, "source": "receive:reviewer"}

# Each declared type: the data its service logs (apps/<app>/services.py, router.py) and the words it reads as.
# Every event is logged for task 1 by the agent "echo" (a persona of the data migration).
SAMPLES: dict[str, tuple[dict[str, Any], str]] = {
    "task.created": (
        {"description": "Research the mempool", "posted_by": "reviewer"},
        "New task: Research the mempool",
    ),
    "task.bidding": ({"auction_seconds": 15, "closes_at": "2026-03-01T10:00:15+00:00"}, "Auction opened for 15 s"),
    "bid.submitted": ({"agent": "echo", "amount_sats": 42, "match": 0.61, "rank": 1}, "Bid 42 sats"),
    "task.assigned": ({"agent": "echo", "amount_sats": 42, "bids": 3}, "Assigned for 42 sats"),
    "task.started": ({"worker": "w1", "attempt": 2}, "Started (attempt 2)"),
    "task.completed": (
        {"result": "The mempool is calm.", "winning_bid_sats": 42},
        "Completed: The mempool is calm.",
    ),
    "task.failed": ({"reason": "No agent bid.", "auctions": 1}, "Failed: No agent bid."),
    "agent.joined": ({"agent": "echo", "persona": "echo"}, "Agent joined"),
    "agent.left": ({"agent": "echo"}, "Agent left"),
    "tool.called": (
        {"tool": "llm.complete", "agent": "echo", "persona": "echo", "worker": "w1", "attempt": 1},
        "Tool call: llm.complete",
    ),
    "tool.completed": (
        {
            "tool": "llm.complete",
            "ok": True,
            "provider": "ollama",
            "model": "llama3.2",
            "latency_ms": 812,
            "tokens_in": 120,
            "tokens_out": 45,
            "duration_ms": 815.2,
        },
        "Tool completed: llm.complete (ollama / llama3.2, 120 → 45 tokens, 812 ms)",
    ),
    "system.error": (
        {
            "error": "no LLM provider answered",
            "providers": [
                {"provider": "ollama", "reason": "cannot connect", "error_class": "connection"},
                {"provider": "openai", "reason": "disabled (set OPENAI_BASE_URL)", "error_class": "disabled"},
            ],
        },
        "Error: no LLM provider answered — ollama: cannot connect; openai: disabled (set OPENAI_BASE_URL)",
    ),
    "provider.failover": (
        {"from": "ollama", "to": "openai", "reason": "connection refused", "error_class": "connection"},
        "ollama → openai: connection refused",
    ),
    "provider.circuit_opened": (
        {"provider": "ollama", "reason": "5 consecutive failures", "error_class": "connection"},
        "ollama: circuit breaker opened (5 consecutive failures)",
    ),
    "provider.circuit_closed": (
        {"provider": "ollama", "reason": "a request succeeded"},
        "ollama: circuit breaker closed (a request succeeded)",
    ),
    "provider.circuit_reset": (
        {"provider": "ollama", "by": "reviewer", "previous_state": "open", "consecutive_failures": 5},
        "ollama: circuit breaker reset by reviewer (was open, 5 failures)",
    ),
    "provider.health_checked": (
        {"provider": "ollama", "ok": True, "message": "ok", "error_class": "", "latency_ms": 12, "by": "reviewer"},
        "ollama: health check passed in 12 ms",
    ),
    "payment.invoice_created": (
        {**INCOMING, "memo": "top up", "expires_at": "2026-03-01T11:00:00+00:00"},
        "Invoice for 100 sats: top up",
    ),
    "payment.sending": (OUTGOING, "Paying 77 sats to echo for task 1"),
    "payment.settled": ({**OUTGOING, "fee_sats": 1}, "echo was paid 77 sats for task 1 (fee 1 sat)"),
    "payment.failed": ({**OUTGOING, "reason": "no route"}, "Payment of 77 sats to echo for task 1 failed: no route"),
    "payment.expired": (INCOMING, "Invoice for 100 sats expired"),
    "payment.waiting": (
        {
            "reason": "waiting for funds: needs 77 sats, 20 available",
            "amount_sats": 77,
            "needed_sats": 77,
            "available_sats": 20,
        },
        "Payment of 77 sats to echo for task 1: waiting for funds: needs 77 sats, 20 available",
    ),
    "payment.simulated": ({**INCOMING, "by": "reviewer"}, "Simulated paying the invoice for 100 sats (by reviewer)"),
    "memory.stored": (
        {
            "memory_id": 5,
            "context_type": "conversation",
            "shared": True,
            "public": False,
            "characters": 1234,
            "embedding_model": "hashed-ngram",
        },
        "echo stored memory #5 (conversation, 1,234 characters, shared)",
    ),
    "memory.forgotten": (
        {"memory_id": 5, "by": "reviewer", "reason": "wrong"},
        "Forgot memory #5 (by reviewer): wrong",
    ),
    "memory.published": ({"memory_id": 5, "public": True, "by": "reviewer"}, "Made memory #5 public (by reviewer)"),
    "memory.unpublished": ({"memory_id": 5, "public": False}, "Made memory #5 no longer public"),
    "upgrade.requested": ({"request_id": 3, "by": "reviewer"}, "Change request #3 by reviewer for task 1"),
    "upgrade.request_released": (
        {"request_id": 3, "worker": "w1", "reason": "the worker is stopping", "released": True},
        "Change request #3 handed back by worker w1: the worker is stopping",
    ),
    "upgrade.request_failed": ({"request_id": 3, "reason": "tests failed"}, "Change request #3 failed: tests failed"),
    "upgrade.request_retried": (
        {"request_id": 3, "by": "reviewer", "previous_error": "timeout", "previous_attempts": 3},
        "Change request #3 queued again by reviewer",
    ),
    "upgrade.proposed": (
        {**UPGRADE, "files": 2, "risk": "low", "tests_passed": True, "attempts": 1, "sandbox": "bwrap"},
        "Upgrade #7 proposed on self-modify/7 (2 files, low risk, tests passed)",
    ),
    "upgrade.approved": ({**UPGRADE, "by": "reviewer", "automatic": False}, "Upgrade #7 approved by reviewer"),
    "upgrade.rejected": (
        {**UPGRADE, "by": "reviewer", "reason": "too risky"},
        "Upgrade #7 rejected by reviewer: too risky",
    ),
    "upgrade.expired": ({**UPGRADE, "hours": 24}, "Upgrade #7 expired after 24 h without a decision"),
    "upgrade.applying": ({**UPGRADE, "worker": "w1", "attempt": 1}, "Upgrade #7 being applied by worker w1"),
    "upgrade.applied": (
        {**UPGRADE, "commit": "0123456789abcdef0123", "replaced": "fedcba9876543210fedc"},
        "Upgrade #7 applied as 0123456789ab",
    ),
    "upgrade.failed": ({**UPGRADE, "reason": "merge conflict"}, "Upgrade #7 failed to apply: merge conflict"),
    "upgrade.released": (
        {**UPGRADE, "worker": "w1", "reason": "the worker is stopping"},
        "Upgrade #7 handed back by worker w1: the worker is stopping",
    ),
    "upgrade.rollback_requested": ({**UPGRADE, "by": "reviewer"}, "Rollback of upgrade #7 requested by reviewer"),
    "upgrade.rolling_back": (
        {**UPGRADE, "worker": "w1", "attempt": 2},
        "Upgrade #7 being rolled back by worker w1 (attempt 2)",
    ),
    "upgrade.rolled_back": (
        {**UPGRADE, "by": "reviewer", "commit": "fedcba9876543210", "worker": "w1"},
        "Upgrade #7 rolled back by reviewer, revert fedcba987654",
    ),
    "upgrade.rollback_failed": ({**UPGRADE, "reason": "conflict"}, "Rollback of upgrade #7 failed: conflict"),
    "upgrade.rollback_released": (
        {**UPGRADE, "worker": "w1", "reason": "stopping"},
        "Rollback of upgrade #7 handed back by worker w1: stopping",
    ),
    "auth.login_throttled": (
        {"username": "alice", "address": "10.0.0.9", "locked": "account", "until": "2026-03-01T10:15:00+00:00"},
        "Sign-in as alice from 10.0.0.9 refused: the account is locked after too many failures until 10:15:00 UTC",
    ),
}


# --- The registry is the list of what the code logs ---


def _permission_names() -> set[str]:
    """`app_label.codename` of every permission: strings that look like event types but are not."""
    names = set()
    for model in django_apps.get_models():
        meta = model._meta
        names |= {f"{meta.app_label}.{action}_{meta.model_name}" for action in meta.default_permissions}
        names |= {f"{meta.app_label}.{codename}" for codename, _ in meta.permissions}
    return names


def _types_in_the_code() -> dict[str, list[str]]:
    """Every event type named in a module that logs events (a string, or an EventType member), with where."""
    found: dict[str, list[str]] = {}
    permissions = _permission_names()
    for path in sorted((ROOT / "apps").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        source = path.read_text()
        if relative == "apps/events/registry.py" or "/migrations/" in relative:
            continue
        if "apps.events.services import" not in source and "apps.events.models import" not in source:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and TYPE.fullmatch(node.value):
                if node.value not in permissions:
                    found.setdefault(node.value, []).append(f"{relative}:{node.lineno}")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "EventType":
                found.setdefault(EventType[node.attr].value, []).append(f"{relative}:{node.lineno}")
    return found


def test_every_event_type_the_code_logs_is_declared_in_the_registry():
    undeclared = {t: where for t, where in _types_in_the_code().items() if not registry.is_known_event_type(t)}

    assert undeclared == {}, "declare these in apps/events/registry.py (log_event refuses them)"


def test_every_declared_type_is_logged_somewhere():
    logged = set(_types_in_the_code())

    assert sorted(set(registry.KINDS) - logged) == []


def test_the_swarm_types_of_adr_017_are_declared():
    assert set(EventType.values) <= set(registry.KINDS)


def test_every_declared_type_has_a_family_a_label_and_an_example_here():
    for kind in registry.KINDS.values():
        assert kind.family in registry.FAMILIES
        assert kind.label and kind.label[0].isupper()
    assert sorted(SAMPLES) == sorted(registry.KINDS)


# --- Every type in words, from a real event ---


@pytest.mark.parametrize("event_type", sorted(registry.KINDS))
def test_every_declared_type_reads_as_its_summary_on_the_events_page(staff_client, event_type):
    echo = persona("echo")
    data, words = SAMPLES[event_type]
    log_event(event_type, source="test", task_id=1, agent_id=echo.pk, data=data)

    response = staff_client.get(URL, {"event_type": event_type})

    assert response.status_code == 200
    assert row_words(response.content.decode()) == [words]


@pytest.mark.parametrize("event_type", sorted(registry.KINDS))
def test_an_event_whose_data_says_nothing_reads_as_its_label(event_type):
    assert registry.summarise(event_type, {}) == registry.KINDS[event_type].label or event_type in (
        # Their words need nothing from the data.
        "task.started",
        "task.completed",
        "task.failed",
    )


ODD_VALUES = [None, True, 0, -1, 1.5, "", "  ", [], {}, ["x"], {"a": {"b": []}}, "x" * 5000]


@pytest.mark.parametrize("event_type", sorted(registry.KINDS))
def test_a_summary_never_breaks_on_data_of_another_shape(event_type):
    data, _ = SAMPLES[event_type]
    for odd in ODD_VALUES:
        summary = registry.summarise(event_type, dict.fromkeys(data, odd), task_id="1", agent_id="x")
        assert isinstance(summary, str) and 0 < len(summary) <= registry.SUMMARY_MAX
    # Not an object, or cut down by the sanitiser: as if it said nothing.
    nothing = registry.summarise(event_type, {})
    assert registry.summarise(event_type, ["not", "an", "object"]) == nothing
    assert registry.summarise(event_type, {"_truncated": True, "preview": "{...}"}) == nothing


def test_a_system_error_of_the_router_reads_its_error_and_of_the_worker_its_class_and_message(staff_client):
    log_event("system.error", source="providers.router", data={"error": "no LLM provider answered", "providers": []})
    log_event(
        "system.error",
        source="worker",
        data={"step": "close_due_auctions", "error": "OperationalError", "message": "database is locked"},
    )
    log_event("system.error", source="worker", data={"job": "task 4", "error": "KeyError", "message": "'x'"})

    rows = row_words(staff_client.get(URL).content.decode())

    assert rows == [
        "Error: KeyError: 'x' (in task 4)",
        "Error: OperationalError: database is locked (in close_due_auctions)",
        "Error: no LLM provider answered",
    ]


def test_an_old_row_of_a_type_no_longer_declared_reads_as_its_type_and_data(staff_client):
    EventFactory(event_type="upgrade.vanished", data={"upgrade": 7, "note": "<b>old</b>"})
    EventFactory(event_type="legacy.thing", data={})

    html = staff_client.get(URL).content.decode()

    assert row_words(html) == ["legacy.thing", 'upgrade.vanished: {"note": "<b>old</b>", "upgrade": 7}']
    assert "<b>old</b>" not in html
    # Its rows link to their type, and the filter takes it: its rows are in the log.
    response = staff_client.get(URL, {"event_type": "upgrade.vanished"})
    assert response.status_code == 200
    assert len(row_words(response.content.decode())) == 1


def test_a_long_summary_is_cut_to_one_readable_line():
    summary = registry.summarise("task.failed", {"reason": "word " * 1000})

    assert len(summary) == registry.SUMMARY_MAX
    assert summary.endswith("…")
    assert "  " not in summary
