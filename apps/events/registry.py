"""Every event type the project logs, each with its family, a label and a one-line summary built from its data.

This is the one list: `log_event` refuses any other type, the filters offer these, and every page (and the live
feed's payload) says what an event means through `summarise`. A new `log_event(...)` type goes here first
(tests/events/test_registry.py finds every type the code logs and fails on one that is missing).

Summaries are plain text, escaped where they are shown. Event data is whatever the row holds, old rows and
hostile values included, so a summary reads it only through `Facts`, whose getters never raise: a missing or
odd-shaped value leaves a phrase out, and an event with nothing usable reads as its label.
"""

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

SUMMARY_MAX = 500
UNKNOWN_DATA_MAX = 200


class Facts:
    """An event's data and references, read defensively."""

    def __init__(self, data: object, *, task_id: str = "", agent_id: str = "", agent_name: str | None = None):
        self.data: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
        self.task_id = str(task_id or "")
        self.agent_id = str(agent_id or "")
        named = self.data.get("agent")
        self.agent_name = named if isinstance(named, str) and named else (agent_name or "")

    def text(self, key: str) -> str:
        value = self.data.get(key)
        if isinstance(value, str):
            return " ".join(value.split())
        if isinstance(value, bool) or value is None or isinstance(value, dict | list):
            return ""
        return str(value)

    def number(self, key: str) -> int | float | None:
        value = self.data.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    def whole(self, key: str) -> int | None:
        value = self.number(key)
        return value if isinstance(value, int) else None

    def flag(self, key: str) -> bool:
        return self.data.get(key) is True

    def items(self, key: str) -> list[Mapping[str, Any]]:
        value = self.data.get(key)
        return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []

    @property
    def agent(self) -> str:
        """The agent by name when known, else by id; "" when the event has no agent."""
        if self.agent_name:
            return self.agent_name
        return f"agent {self.agent_id}" if self.agent_id else ""

    @property
    def task(self) -> str:
        return f"task {self.task_id}" if self.task_id else ""


def sats(amount: int | float | None) -> str:
    if amount is None:
        return ""
    return f"{amount:,} sat" if amount == 1 else f"{amount:,} sats"


def _join(*parts: str, sep: str = " ") -> str:
    return sep.join(p for p in parts if p)


def _with(prefix: str, value: str) -> str:
    return f"{prefix}{value}" if value else ""


def _colon(head: str, detail: str) -> str:
    return f"{head}: {detail}" if detail else head


def _paren(detail: str) -> str:
    return f" ({detail})" if detail else ""


Summary = Callable[[Facts], str]


@dataclass(frozen=True)
class EventKind:
    event_type: str
    label: str
    summary: Summary

    @property
    def family(self) -> str:
        return self.event_type.split(".", 1)[0]


# The families in the order the filters list them, with the names they are listed under.
FAMILIES: dict[str, str] = {
    "task": "Tasks",
    "bid": "Bids",
    "agent": "Agents",
    "tool": "Tools and model calls",
    "system": "System",
    "payment": "Payments",
    "memory": "Memory",
    "provider": "LLM providers",
    "upgrade": "Self-upgrades",
    "auth": "Sign-in",
}
FAMILY_WILDCARD = ".*"

KINDS: dict[str, EventKind] = {}


def _kind(event_type: str, label: str) -> Callable[[Summary], Summary]:
    def register(summary: Summary) -> Summary:
        assert event_type not in KINDS, event_type
        assert event_type.split(".", 1)[0] in FAMILIES, event_type
        KINDS[event_type] = EventKind(event_type, label, summary)
        return summary

    return register


# --- Swarm (apps.swarm.services): the twelve types of ADR-017 ---


@_kind("task.created", "Task created")
def _task_created(f: Facts) -> str:
    return f"New task: {f.text('description')}" if f.text("description") else ""


@_kind("task.bidding", "Auction opened")
def _task_bidding(f: Facts) -> str:
    if f.flag("extended"):
        return _colon(f"Auction extended ({f.text('extension')} of {f.text('of')})", f.text("reason"))
    seconds = f.number("auction_seconds")
    return f"Auction opened for {seconds:g} s" if seconds else "Auction opened"


@_kind("bid.submitted", "Bid submitted")
def _bid_submitted(f: Facts) -> str:
    amount = f.number("amount_sats")
    return f"Bid {sats(amount)}" if amount is not None else ""


@_kind("task.assigned", "Task assigned")
def _task_assigned(f: Facts) -> str:
    if f.flag("recovered") or f.flag("released"):
        return _colon("Assigned again", f.text("reason"))
    amount = f.number("amount_sats")
    return f"Assigned for {sats(amount)}" if amount is not None else ""


@_kind("task.started", "Task started")
def _task_started(f: Facts) -> str:
    attempt = f.whole("attempt")
    return f"Started (attempt {attempt})" if attempt and attempt > 1 else "Started"


@_kind("task.completed", "Task completed")
def _task_completed(f: Facts) -> str:
    return _colon("Completed", f.text("result"))


@_kind("task.failed", "Task failed")
def _task_failed(f: Facts) -> str:
    return _colon("Failed", f.text("reason"))


@_kind("agent.joined", "Agent joined")
def _agent_joined(f: Facts) -> str:
    return "Agent joined"


@_kind("agent.left", "Agent left")
def _agent_left(f: Facts) -> str:
    return "Agent left"


@_kind("tool.called", "Tool called")
def _tool_called(f: Facts) -> str:
    return f"Tool call: {f.text('tool')}" if f.text("tool") else ""


@_kind("tool.completed", "Tool completed")
def _tool_completed(f: Facts) -> str:
    tool = f.text("tool")
    if not tool:
        return ""
    if f.data.get("ok") is False:
        return f"Tool completed: {tool} (failed: {f.text('error')})"
    # A model call (apps.agents.services._llm_completed_data) says who answered and how much it cost.
    model = _join(f.text("provider"), f.text("model"), sep=" / ")
    tokens_in, tokens_out = f.whole("tokens_in"), f.whole("tokens_out")
    tokens = f"{tokens_in} → {tokens_out} tokens" if tokens_in is not None and tokens_out is not None else ""
    return f"Tool completed: {tool}{_paren(_join(model, tokens, _ms(f.number('latency_ms')), sep=', '))}"


def _ms(value: int | float | None) -> str:
    return f"{value:g} ms" if value is not None else ""


@_kind("system.error", "Error")
def _system_error(f: Facts) -> str:
    # The worker and the job pool write the exception's class as `error` and its text as `message`; the router
    # writes what went wrong as `error`, with each provider tried and why.
    error, message = f.text("error"), f.text("message")
    if error and message:
        text = f"{error}: {message}" if _is_class_name(error) else f"{error} ({message})"
    else:
        text = message or error
    tried = "; ".join(
        _colon(str(p.get("provider") or "?"), " ".join(str(p.get("reason") or "").split()))
        for p in f.items("providers")
    )
    where = f.text("step") or f.text("job") or f.text("job_source") or f.text("heartbeat")
    if not (text or tried):
        return ""
    return f"Error: {_join(text, _with('— ', tried))}{_paren(_with('in ', where))}"


def _is_class_name(value: str) -> bool:
    return value.isidentifier() and value[:1].isupper()


# --- LLM providers (apps.providers.router and services) ---


@_kind("provider.failover", "Provider failover")
def _provider_failover(f: Facts) -> str:
    source, target = f.text("from"), f.text("to")
    if not (source and target):
        return ""
    return _colon(f"{source} → {target}", f.text("reason"))


@_kind("provider.circuit_opened", "Circuit breaker opened")
def _circuit_opened(f: Facts) -> str:
    if not f.text("provider"):
        return ""
    return f"{f.text('provider')}: circuit breaker opened{_paren(f.text('reason'))}"


@_kind("provider.circuit_closed", "Circuit breaker closed")
def _circuit_closed(f: Facts) -> str:
    if not f.text("provider"):
        return ""
    return f"{f.text('provider')}: circuit breaker closed{_paren(f.text('reason'))}"


@_kind("provider.circuit_reset", "Circuit breaker reset")
def _circuit_reset(f: Facts) -> str:
    if not f.text("provider"):
        return ""
    failures = f.whole("consecutive_failures")
    was = _join(
        _with("was ", f.text("previous_state")),
        f"{failures} failure{'s' if failures != 1 else ''}" if failures is not None else "",
        sep=", ",
    )
    return f"{f.text('provider')}: circuit breaker reset{_with(' by ', f.text('by'))}{_paren(was)}"


@_kind("provider.health_checked", "Health check")
def _health_checked(f: Facts) -> str:
    provider = f.text("provider")
    if not provider:
        return ""
    latency = _ms(f.number("latency_ms"))
    if f.data.get("ok") is True:
        return f"{provider}: health check passed{_with(' in ', latency)}"
    return _colon(f"{provider}: health check failed", f.text("message") or f.text("error_class"))


# --- Payments (apps.ledger.services): every data has payment_hash, tx_type, amount_sats, source ---


def _payment_ref(f: Facts) -> str:
    """ "to echo for task 1": whom and what an outgoing payment is for, as far as the event knows."""
    return _join(_with("to ", f.agent), _with("for ", f.task))


@_kind("payment.invoice_created", "Invoice created")
def _invoice_created(f: Facts) -> str:
    amount = sats(f.number("amount_sats"))
    return _colon(f"Invoice for {amount}", f.text("memo")) if amount else ""


@_kind("payment.sending", "Payment sending")
def _payment_sending(f: Facts) -> str:
    amount = sats(f.number("amount_sats"))
    return _join(f"Paying {amount}", _payment_ref(f)) if amount else ""


@_kind("payment.settled", "Payment settled")
def _payment_settled(f: Facts) -> str:
    amount = sats(f.number("amount_sats"))
    if not amount:
        return ""
    fee = f.whole("fee_sats")
    fee_text = f" (fee {sats(fee)})" if fee else ""
    if f.text("tx_type") == "incoming":
        return f"Received {amount}{_with(' for ', f.task)}{fee_text}"
    if f.agent:
        return f"{f.agent} was paid {amount}{_with(' for ', f.task)}{fee_text}"
    return f"Paid {amount}{_with(' for ', f.task)}{fee_text}"


@_kind("payment.failed", "Payment failed")
def _payment_failed(f: Facts) -> str:
    amount = sats(f.number("amount_sats"))
    head = _join(f"Payment of {amount}", _payment_ref(f), "failed") if amount else "Payment failed"
    return _colon(head, f.text("reason"))


@_kind("payment.expired", "Invoice expired")
def _payment_expired(f: Facts) -> str:
    amount = sats(f.number("amount_sats"))
    return f"Invoice for {amount} expired" if amount else ""


@_kind("payment.waiting", "Payment waiting for funds")
def _payment_waiting(f: Facts) -> str:
    amount = sats(f.number("amount_sats"))
    if not (amount or f.text("reason")):
        return ""
    head = _join(f"Payment of {amount}" if amount else "Payment", _payment_ref(f))
    return _colon(head, f.text("reason") or "waiting for funds")


@_kind("payment.simulated", "Payment simulated")
def _payment_simulated(f: Facts) -> str:
    amount = sats(f.number("amount_sats"))
    return f"Simulated paying the invoice for {amount}{_paren(_with('by ', f.text('by')))}" if amount else ""


# --- Memory (apps.memory.services): never the content, which may be private ---


def _memory(f: Facts) -> str:
    memory_id = f.whole("memory_id")
    return f"memory #{memory_id}" if memory_id is not None else "a memory"


@_kind("memory.stored", "Memory stored")
def _memory_stored(f: Facts) -> str:
    if f.whole("memory_id") is None:
        return ""
    characters = f.whole("characters")
    scope = "public" if f.flag("public") else "shared" if f.flag("shared") else "private" if "shared" in f.data else ""
    detail = _join(
        f.text("context_type"), f"{characters:,} characters" if characters is not None else "", scope, sep=", "
    )
    who = f"{f.agent} stored" if f.agent else "Stored"
    return f"{who} {_memory(f)}{_paren(detail)}"


@_kind("memory.forgotten", "Memory forgotten")
def _memory_forgotten(f: Facts) -> str:
    if f.whole("memory_id") is None:
        return ""
    return _colon(f"Forgot {_memory(f)}{_paren(_with('by ', f.text('by')))}", f.text("reason"))


@_kind("memory.published", "Memory made public")
def _memory_published(f: Facts) -> str:
    if f.whole("memory_id") is None:
        return ""
    return f"Made {_memory(f)} public{_paren(_with('by ', f.text('by')))}"


@_kind("memory.unpublished", "Memory no longer public")
def _memory_unpublished(f: Facts) -> str:
    if f.whole("memory_id") is None:
        return ""
    return f"Made {_memory(f)} no longer public{_paren(_with('by ', f.text('by')))}"


# --- Self-upgrades (apps.upgrades.services): upgrade events carry upgrade_id, branch, status and `by` ---


def _upgrade(f: Facts) -> str:
    upgrade_id = f.whole("upgrade_id")
    return f"Upgrade #{upgrade_id}" if upgrade_id is not None else ""


def _request(f: Facts) -> str:
    request_id = f.whole("request_id")
    return f"Change request #{request_id}" if request_id is not None else ""


def _by(f: Facts) -> str:
    # "system": nobody decided (the worker, a timeout); said only when a person did.
    by = f.text("by")
    return f" by {by}" if by and by != "system" else ""


def _by_worker(f: Facts) -> str:
    return _with(" by worker ", f.text("worker"))


def _attempt(f: Facts) -> str:
    attempt = f.whole("attempt")
    return f" (attempt {attempt})" if attempt and attempt > 1 else ""


@_kind("upgrade.requested", "Change requested")
def _upgrade_requested(f: Facts) -> str:
    request = _request(f)
    if not request:
        return ""
    branch = f.text("branch")
    return f"{request}{_by(f)}{_with(': branch ', branch)}{_with(' for ', f.task) if not branch else ''}"


@_kind("upgrade.request_released", "Change request handed back")
def _request_released(f: Facts) -> str:
    request = _request(f)
    return _colon(f"{request} handed back{_by_worker(f)}", f.text("reason")) if request else ""


@_kind("upgrade.request_failed", "Change request failed")
def _request_failed(f: Facts) -> str:
    request = _request(f)
    return _colon(f"{request} failed", f.text("reason")) if request else ""


@_kind("upgrade.request_retried", "Change request retried")
def _request_retried(f: Facts) -> str:
    request = _request(f)
    return f"{request} queued again{_by(f)}" if request else ""


@_kind("upgrade.proposed", "Upgrade proposed")
def _upgrade_proposed(f: Facts) -> str:
    upgrade = _upgrade(f)
    if not upgrade:
        return ""
    files = f.whole("files")
    passed = f.data.get("tests_passed")
    detail = _join(
        f"{files} file{'s' if files != 1 else ''}" if files is not None else "",
        f"{f.text('risk')} risk" if f.text("risk") else "",
        "tests passed" if passed is True else "tests failed" if passed is False else "",
        sep=", ",
    )
    return f"{upgrade} proposed{_with(' on ', f.text('branch'))}{_paren(detail)}"


@_kind("upgrade.approved", "Upgrade approved")
def _upgrade_approved(f: Facts) -> str:
    upgrade = _upgrade(f)
    if not upgrade:
        return ""
    return f"{upgrade} approved automatically" if f.flag("automatic") else f"{upgrade} approved{_by(f)}"


@_kind("upgrade.rejected", "Upgrade rejected")
def _upgrade_rejected(f: Facts) -> str:
    upgrade = _upgrade(f)
    return _colon(f"{upgrade} rejected{_by(f)}", f.text("reason")) if upgrade else ""


@_kind("upgrade.expired", "Upgrade expired")
def _upgrade_expired(f: Facts) -> str:
    upgrade = _upgrade(f)
    if not upgrade:
        return ""
    hours = f.number("hours")
    return f"{upgrade} expired{f' after {hours:g} h without a decision' if hours is not None else ''}"


@_kind("upgrade.applying", "Upgrade being applied")
def _upgrade_applying(f: Facts) -> str:
    upgrade = _upgrade(f)
    return f"{upgrade} being applied{_by_worker(f)}{_attempt(f)}" if upgrade else ""


@_kind("upgrade.applied", "Upgrade applied")
def _upgrade_applied(f: Facts) -> str:
    upgrade = _upgrade(f)
    if not upgrade:
        return ""
    merged = " (it was merged already)" if f.flag("already_merged") else ""
    return f"{upgrade} applied{_with(' as ', f.text('commit')[:12])}{merged}"


@_kind("upgrade.failed", "Upgrade failed")
def _upgrade_failed(f: Facts) -> str:
    upgrade = _upgrade(f)
    return _colon(f"{upgrade} failed to apply", f.text("reason")) if upgrade else ""


@_kind("upgrade.released", "Upgrade handed back")
def _upgrade_released(f: Facts) -> str:
    upgrade = _upgrade(f)
    return _colon(f"{upgrade} handed back{_by_worker(f)}", f.text("reason")) if upgrade else ""


@_kind("upgrade.rollback_requested", "Rollback requested")
def _rollback_requested(f: Facts) -> str:
    upgrade = _upgrade(f)
    return f"Rollback of {upgrade.lower()} requested{_by(f)}" if upgrade else ""


@_kind("upgrade.rolling_back", "Upgrade being rolled back")
def _rolling_back(f: Facts) -> str:
    upgrade = _upgrade(f)
    return f"{upgrade} being rolled back{_by_worker(f)}{_attempt(f)}" if upgrade else ""


@_kind("upgrade.rolled_back", "Upgrade rolled back")
def _rolled_back(f: Facts) -> str:
    upgrade = _upgrade(f)
    if not upgrade:
        return ""
    reverted = " (it was reverted already)" if f.flag("already_reverted") else ""
    return f"{upgrade} rolled back{_by(f)}{_with(', revert ', f.text('commit')[:12])}{reverted}"


@_kind("upgrade.rollback_failed", "Rollback failed")
def _rollback_failed(f: Facts) -> str:
    upgrade = _upgrade(f)
    return _colon(f"Rollback of {upgrade.lower()} failed", f.text("reason")) if upgrade else ""


@_kind("upgrade.rollback_released", "Rollback handed back")
def _rollback_released(f: Facts) -> str:
    upgrade = _upgrade(f)
    return _colon(f"Rollback of {upgrade.lower()} handed back{_by_worker(f)}", f.text("reason")) if upgrade else ""


# --- Sign-in (apps.core.services) ---


@_kind("auth.login_throttled", "Sign-in refused")
def _login_throttled(f: Facts) -> str:
    username, address = f.text("username"), f.text("address")
    if not (username or address):
        return ""
    locked = {"account": "the account", "address": "the address"}.get(f.text("locked"), "")
    until = _clock(f.text("until"))
    return _join(
        f"Sign-in{_with(' as ', username)}{_with(' from ', address)} refused:",
        f"{locked or 'it'} is locked after too many failures{_with(' until ', until)}",
    )


def _clock(iso: str) -> str:
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return ""
    if timezone.is_naive(moment):
        return ""
    return timezone.localtime(moment).strftime("%H:%M:%S %Z")


# --- Reading the registry ---


def is_known_event_type(value: str) -> bool:
    return value in KINDS


def is_family_wildcard(value: str) -> bool:
    return value.endswith(FAMILY_WILDCARD) and value[: -len(FAMILY_WILDCARD)] in FAMILIES


def is_listed(value: str) -> bool:
    """Whether a filter offers `value`: a registered type or a family."""
    return is_known_event_type(value) or is_family_wildcard(value)


def types_of_family(family: str) -> list[str]:
    return [t for t, kind in KINDS.items() if kind.family == family]


def types_matching(value: str) -> list[str]:
    """The registered types a filter value stands for: itself, or every type of a family (`payment.*`)."""
    if is_family_wildcard(value):
        return types_of_family(value[: -len(FAMILY_WILDCARD)])
    return [value] if value in KINDS else []


@dataclass(frozen=True)
class FamilyChoices:
    family: str
    name: str
    wildcard: str
    kinds: list[EventKind]


def grouped() -> Iterator[FamilyChoices]:
    """The families in their order, each with its types in order of registration (roughly the order they occur)."""
    for family, name in FAMILIES.items():
        kinds = [kind for kind in KINDS.values() if kind.family == family]
        if kinds:
            yield FamilyChoices(family, name, family + FAMILY_WILDCARD, kinds)


def label(event_type: str) -> str:
    kind = KINDS.get(event_type)
    return kind.label if kind else event_type


def summarise(
    event_type: str, data: object, *, task_id: str = "", agent_id: str = "", agent_name: str | None = None
) -> str:
    """One line of plain text saying what the event means. An unregistered (old) type reads as the type and its
    data; a registered type whose data says too little reads as its label."""
    kind = KINDS.get(event_type)
    if kind is None:
        if not data:
            return event_type
        text = json.dumps(data, ensure_ascii=False, separators=(", ", ": "), sort_keys=True)
        return f"{event_type}: {_clip(text, UNKNOWN_DATA_MAX)}"
    facts = Facts(data, task_id=task_id, agent_id=agent_id, agent_name=agent_name)
    return _clip(kind.summary(facts).strip(), SUMMARY_MAX) or kind.label


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
