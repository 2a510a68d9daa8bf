import json
import re
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from typing import Any

from django.conf import settings
from django.db import connections, router, transaction
from django.utils import timezone

from apps.events.feed import feed_nudger
from apps.events.models import Event, is_known_event_type

REDACTED = "[REDACTED]"
FIELD_MAX = 64
KEY_MAX = 100
STRING_MAX = 2000
LIST_MAX = 100
DEPTH_MAX = 8
DATA_MAX_BYTES = 16 * 1024

# ANSI/VT escape sequences first (CSI, OSC, two-byte ESC), then any control or invisible formatting
# character left: a forged "\r\n2026-01-01 INFO ..." or a terminal escape never reaches a log or a page.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]|\x9b[0-?]*[ -/]*[@-~]")
_WHITESPACE_CONTROLS = re.compile(r"[\t\n\v\f\r\u0085\u2028\u2029]+")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_NEEDS_CLEANING = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")

# A secret's name may follow "_" (DB_PASSWORD=, ?access_token=), where \b would not match.
_SECRET_VALUE = re.compile(
    r"(?P<bearer>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|(?P<l402>\bL402\s+)[A-Za-z0-9+/=_-]+:[0-9A-Fa-f]+"
    r"|(?P<assign>(?<![A-Za-z0-9])"
    r"(?:macaroon|password|passwd|pwd|secret|token|api[_-]?key|preimage)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"',;&]+"
    r"|(?P<url>://[^/\s:@]+:)[^@\s/]+@"
    r"|\bsk-[A-Za-z0-9_-]{16,}"
    r"|\btt_[A-Za-z0-9_-]{20,}",
    re.IGNORECASE,
)
_SECRET_KEY_WORDS = frozenset(
    {
        "token", "secret", "password", "passwd", "pwd", "macaroon", "authorization", "preimage", "apikey",
        "cookie", "credential", "credentials", "privkey", "mnemonic", "seed",
    }
)  # fmt: skip
_SECRET_KEY_PAIRS = frozenset({("api", "key"), ("private", "key"), ("access", "key"), ("secret", "key")})
_KEY_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z])(?=[A-Z])")


class InvalidEvent(ValueError):
    """The event cannot be logged as given (unknown type, data that is not JSON)."""


def _redact_match(m: re.Match[str]) -> str:
    for group in ("bearer", "l402", "assign"):
        if m.group(group):
            return m.group(group) + REDACTED
    if m.group("url"):
        return m.group("url") + REDACTED + "@"
    return REDACTED


def clean_text(value: str, max_length: int = STRING_MAX) -> str:
    if _NEEDS_CLEANING.search(value):
        value = _ANSI.sub("", value)
        value = _WHITESPACE_CONTROLS.sub(" ", value)
        value = _CONTROLS.sub("", value)
    value = _SECRET_VALUE.sub(_redact_match, value)
    if len(value) > max_length:
        value = value[: max_length - 1] + "…"
    return value


_CONTROLS_BUT_NEWLINE_TAB = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)


def clean_multiline_text(value: str) -> str:
    """For stored text that may keep its lines (a task's description): no escapes or invisible controls."""
    value = value.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    return _CONTROLS_BUT_NEWLINE_TAB.sub("", _ANSI.sub("", value))


@lru_cache(maxsize=2048)
def _is_secret_key(key: str) -> bool:
    words = [w for w in _KEY_WORD_SPLIT.split(_CAMEL_BOUNDARY.sub("_", key).lower()) if w]
    if any(w in _SECRET_KEY_WORDS for w in words):
        return True
    return any(pair in _SECRET_KEY_PAIRS for pair in pairwise(words))


def _clean_value(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= DEPTH_MAX:
        return "[too deep]"
    if isinstance(value, dict):
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            key = str(key)
            cleaned[clean_text(key, KEY_MAX)] = REDACTED if _is_secret_key(key) else _clean_value(item, depth + 1)
        return cleaned
    items = [_clean_value(item, depth + 1) for item in list(value)[:LIST_MAX]]
    if len(value) > LIST_MAX:
        items.append(f"[+{len(value) - LIST_MAX} more]")
    return items


def sanitize_data(data: Any) -> dict[str, Any]:
    return _sanitize_and_encode(data)[0]


def _sanitize_and_encode(data: Any) -> tuple[dict[str, Any], str]:
    if data is None:
        return {}, "{}"
    if not isinstance(data, dict):
        raise InvalidEvent(f"event data must be a JSON object, not {type(data).__name__}")
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidEvent(f"event data is not JSON: {exc}") from exc
    cleaned: dict[str, Any] = _clean_value(data, 0)
    encoded = json.dumps(cleaned, ensure_ascii=False)
    if len(encoded.encode()) > DATA_MAX_BYTES:
        cleaned = {"_truncated": True, "preview": encoded[:STRING_MAX]}
        encoded = json.dumps(cleaned, ensure_ascii=False)
    return cleaned, encoded


def _clean_field(value: object | None) -> str:
    if value is None:
        return ""
    return clean_text(str(value), FIELD_MAX)


def log_event(
    event_type: str,
    *,
    source: str,
    task_id: object | None = None,
    agent_id: object | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    """Record one audit event in the caller's transaction, sanitised (see the module's patterns).

    Raises InvalidEvent for an unknown type or data that is not a JSON object.
    """
    if not is_known_event_type(event_type):
        raise InvalidEvent(f"unknown event type {event_type!r} (every type is declared in apps/events/registry.py)")
    cleaned, encoded = _sanitize_and_encode(data)
    event = Event(
        event_type=event_type,
        source=_clean_field(source) or "unknown",
        task_id=_clean_field(task_id),
        agent_id=_clean_field(agent_id),
        data=cleaned,
        timestamp=timezone.now(),
    )
    alias = router.db_for_write(Event)
    event.id = _insert(event, encoded, alias)
    event._state.adding = False
    event._state.db = alias
    if settings.REDIS_URL:
        # Live clients in every web process hear of it at once; without Redis they do at the next poll.
        feed_nudger.schedule(alias)
    return event


_INSERT_SQL = (
    "INSERT INTO event_log (event_type, source, task_id, agent_id, data, timestamp) "
    "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id"
)
# On PostgreSQL, ids are handed out before commit, so two transactions could commit their events out of id
# order and a follower of the log (the live feed) could step over the late one. A transaction-scoped advisory
# lock makes event writers commit in id order, as SQLite's single writer does by itself.
_INSERT_SQL_POSTGRES = (
    "WITH ordered AS (SELECT pg_advisory_xact_lock(7310021)) "
    "INSERT INTO event_log (event_type, source, task_id, agent_id, data, timestamp) "
    "SELECT %s, %s, %s, %s, CAST(%s AS jsonb), %s FROM ordered RETURNING id"
)


def _insert(event: Event, encoded_data: str, alias: str) -> int:
    # Every state change of every app goes through here, so it skips the ORM's per-save machinery
    # (signals, field preparation): one prepared INSERT with the JSON already encoded above.
    connection = connections[alias]
    sql = _INSERT_SQL_POSTGRES if connection.vendor == "postgresql" else _INSERT_SQL
    params = [
        event.event_type,
        event.source,
        event.task_id,
        event.agent_id,
        encoded_data,
        connection.ops.adapt_datetimefield_value(event.timestamp),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return int(row[0])


PRUNE_BATCH = 5000


def events_prune(*, older_than: datetime) -> int:
    """Delete events older than `older_than` in small batches, so the worker and pages are never blocked long."""
    removed = 0
    while True:
        with transaction.atomic():
            ids = list(
                Event.objects.filter(timestamp__lt=older_than).order_by("id").values_list("id", flat=True)[:PRUNE_BATCH]
            )
            if not ids:
                return removed
            removed += Event.objects.filter(id__in=ids).delete()[0]


def events_prune_days(*, days: int) -> tuple[int, datetime]:
    cutoff = timezone.now() - timedelta(days=days)
    return events_prune(older_than=cutoff), cutoff
