"""Benchmarks of the audit trail (see docs/benchmarks.md).

1. log_event throughput as a ratio to a raw INSERT loop into the same event_log table, each event committed in its
   own transaction on both sides (target: >= 0.40).
2. /swarm/events with 1,000,000 events as a ratio to the same page with 1,000 events: the default page, the page
   filtered by event_type, task_id and agent_id, and an "Older" page (target: <= 2.0 for each); also, for
   information, a page bounded by `until` in the middle of the log.

Run from the project root: `.venv/bin/python bench/events.py` (`--help` for sizes and repeats). Everything happens
in a fresh temporary TIMMY_DATA_DIR that is removed at exit, so ./data is never touched. Progress goes to stderr; the
last line of stdout is one JSON object with the figures.

The machine may be noisy: the two sides of each ratio are measured alternately, round after round, and compared by
their medians. Django runs with DEBUG off, the production setting. `make run` turns DEBUG on, which makes Django
record every query (on SQLite, quoting its parameters with one more query): log_event in that mode is reported as
extra information (`debug_on`).
"""

import argparse
import json
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from isolated import (  # first: sets up Django in a temporary data dir, removed at exit
    DATA_DIR,
    code_version,
    migrate_fresh_database,
    say,
)

# isort: split
import django
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import Client

from apps.events.services import log_event
from apps.swarm.models import Agent

LOG_EVENT_TARGET = 0.40
PAGE_RATIO_TARGET = 2.0

RAW_INSERT = "INSERT INTO event_log (event_type, source, task_id, agent_id, data, timestamp) VALUES (?, ?, ?, ?, ?, ?)"


# --- 1. log_event against a raw INSERT ---


@dataclass(frozen=True)
class SampleEvent:
    event_type: str
    task_id: int
    agent_id: int
    data: dict[str, Any]


DESCRIPTIONS = [
    "Summarise the overnight build failures",
    "Research sovereign Lightning wallets",
    "Write the release notes for 0.4",
    "Audit the worker for leaked secrets",
    "Plot the auction prices of last week",
]


def sample_events(agents: list[Agent], count: int = 512) -> list[SampleEvent]:
    """What the swarm logs: bids, assignments and completions, with a few keys of data each."""
    types = ["bid.submitted", "bid.submitted", "bid.submitted", "task.assigned", "task.started", "task.completed"]
    events = []
    for i in range(count):
        agent = agents[i % len(agents)]
        events.append(
            SampleEvent(
                event_type=types[i % len(types)],
                task_id=1000 + i // len(types),
                agent_id=agent.pk,
                data={
                    "agent": agent.name,
                    "amount_sats": 90 + (i * 37) % 400,
                    "description": f"{DESCRIPTIONS[i % len(DESCRIPTIONS)]} (task {1000 + i // len(types)})",
                    "attempt": 1 + i % 3,
                },
            )
        )
    return events


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float  # this process only: time that other processes on the machine take is not counted

    @classmethod
    def now(cls) -> "Timing":
        return cls(time.perf_counter(), time.process_time())

    def elapsed(self) -> "Timing":
        now = Timing.now()
        return Timing(now.wall - self.wall, now.cpu - self.cpu)


def run_log_event(events: list[SampleEvent], *, per_event: bool) -> Timing:
    start = Timing.now()
    if per_event:
        for e in events:
            with transaction.atomic():
                log_event(e.event_type, source="swarm", task_id=e.task_id, agent_id=e.agent_id, data=e.data)
    else:
        with transaction.atomic():
            for e in events:
                log_event(e.event_type, source="swarm", task_id=e.task_id, agent_id=e.agent_id, data=e.data)
    return start.elapsed()


def _utc_text() -> str:
    # How Django's SQLite backend stores an aware datetime: naive UTC, ISO with a space.
    return datetime.now(UTC).replace(tzinfo=None).isoformat(" ")


def run_raw_insert(events: list[SampleEvent], *, per_event: bool) -> Timing:
    # The DB-API connection Django opened: same file, same PRAGMAs, in autocommit between transactions.
    connection.ensure_connection()
    cursor = connection.connection.cursor()
    start = Timing.now()
    if per_event:
        for e in events:
            # Django's atomic() on this backend runs BEGIN IMMEDIATE (transaction_mode in settings) ... COMMIT.
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute(
                RAW_INSERT,
                (e.event_type, "swarm", str(e.task_id), str(e.agent_id), json.dumps(e.data), _utc_text()),
            )
            cursor.execute("COMMIT")
    else:
        cursor.execute("BEGIN IMMEDIATE")
        for e in events:
            cursor.execute(
                RAW_INSERT,
                (e.event_type, "swarm", str(e.task_id), str(e.agent_id), json.dumps(e.data), _utc_text()),
            )
        cursor.execute("COMMIT")
    elapsed = start.elapsed()
    cursor.close()
    return elapsed


def compare(events: list[SampleEvent], *, per_event: bool, rounds: int) -> dict[str, float]:
    """log_event and the raw INSERT in alternation, each round starting with the other.

    The ratio is the median of the ratios within a round: a burst of load from another process hits the two
    batches of one round more alike than it hits the medians of all batches.
    """
    run_log_event(events, per_event=per_event)  # warm-up
    run_raw_insert(events, per_event=per_event)
    pairs: list[tuple[Timing, Timing]] = []
    for r in range(rounds):
        if r % 2 == 0:
            ours = run_log_event(events, per_event=per_event)
            raw = run_raw_insert(events, per_event=per_event)
        else:
            raw = run_raw_insert(events, per_event=per_event)
            ours = run_log_event(events, per_event=per_event)
        pairs.append((ours, raw))
    n = len(events)
    return {
        "log_event_per_s": n / statistics.median(ours.wall for ours, _ in pairs),
        "raw_insert_per_s": n / statistics.median(raw.wall for _, raw in pairs),
        "ratio": statistics.median(raw.wall / ours.wall for ours, raw in pairs),
        "ratio_cpu": statistics.median(raw.cpu / ours.cpu for ours, raw in pairs),
        "ratio_min": min(raw.wall / ours.wall for ours, raw in pairs),
        "ratio_max": max(raw.wall / ours.wall for ours, raw in pairs),
    }


@contextmanager
def debug_mode() -> Iterator[None]:
    previous = settings.DEBUG
    settings.DEBUG = True
    try:
        yield
    finally:
        settings.DEBUG = previous
        connection.queries_log.clear()


def bench_log_event(*, batch: int, rounds: int) -> dict[str, Any]:
    events = sample_events(list(Agent.objects.order_by("pk")))
    events = (events * (batch // len(events) + 1))[:batch]

    say(f"log_event vs raw INSERT, one transaction per event: {rounds} rounds of {batch} events each")
    per_event = compare(events, per_event=True, rounds=rounds)
    say(
        f"  log_event {per_event['log_event_per_s']:,.0f}/s, raw {per_event['raw_insert_per_s']:,.0f}/s, "
        f"ratio {per_event['ratio']:.3f} (rounds {per_event['ratio_min']:.3f}..{per_event['ratio_max']:.3f}), "
        f"CPU-time ratio {per_event['ratio_cpu']:.3f}"
    )
    say(f"log_event vs raw INSERT, all {batch} events of a batch in one transaction (extra information)")
    one_tx = compare(events, per_event=False, rounds=rounds)
    say(f"  ratio {one_tx['ratio']:.3f}")
    say("log_event with DEBUG on, as under `make run`, one transaction per event (extra information)")
    with debug_mode():
        debug = compare(events, per_event=True, rounds=rounds)
    say(f"  ratio {debug['ratio']:.3f}")

    return {
        "log_event_per_s": round(per_event["log_event_per_s"]),
        "raw_insert_per_s": round(per_event["raw_insert_per_s"]),
        "log_event_vs_raw_insert": round(per_event["ratio"], 3),
        "log_event_vs_raw_insert_cpu": round(per_event["ratio_cpu"], 3),
        "mode": (
            "one transaction per event: transaction.atomic() around each log_event (BEGIN IMMEDIATE ... COMMIT) "
            "vs BEGIN IMMEDIATE; INSERT; COMMIT per row on the same DB-API connection; WAL, synchronous=NORMAL; "
            "ratio = median over rounds of the within-round speed ratio"
        ),
        "one_transaction": {
            "log_event_per_s": round(one_tx["log_event_per_s"]),
            "raw_insert_per_s": round(one_tx["raw_insert_per_s"]),
            "log_event_vs_raw_insert": round(one_tx["ratio"], 3),
        },
        "debug_on": {
            "log_event_per_s": round(debug["log_event_per_s"]),
            "log_event_vs_raw_insert": round(debug["ratio"], 3),
        },
        "batch": batch,
        "rounds": rounds,
    }


# --- 2. /swarm/events at 1k and at 1M events ---

# One task's life in 16 events: posted, auctioned, six bids, assigned, run with a tool call, finished (one in ten
# fails), paid; then a memory write and, now and then, an agent joining or leaving or an error.
FILL_SQL = """
INSERT INTO event_log (event_type, source, task_id, agent_id, data, timestamp)
WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < :count),
e AS (
    SELECT n, n % 16 AS slot, n / 16 + 1 AS task, (n / 16 + n % 16) % :agents AS agent_index FROM seq
),
t AS (
    SELECT n, slot, task, agent_index,
        CASE
            WHEN slot = 0 THEN 'task.created'
            WHEN slot = 1 THEN 'task.bidding'
            WHEN slot BETWEEN 2 AND 7 THEN 'bid.submitted'
            WHEN slot = 8 THEN 'task.assigned'
            WHEN slot = 9 THEN 'task.started'
            WHEN slot = 10 THEN 'tool.called'
            WHEN slot = 11 THEN 'tool.completed'
            WHEN slot = 12 THEN CASE WHEN task % 10 = 0 THEN 'task.failed' ELSE 'task.completed' END
            WHEN slot = 13 THEN 'payment.settled'
            WHEN slot = 14 THEN 'memory.stored'
            ELSE CASE task % 8 WHEN 0 THEN 'agent.joined' WHEN 1 THEN 'agent.left' WHEN 2 THEN 'system.error'
                 ELSE 'tool.called' END
        END AS event_type
    FROM e
)
SELECT
    event_type,
    CASE WHEN slot IN (10, 11) THEN 'worker' ELSE 'swarm' END,
    CASE WHEN slot <= 13 THEN CAST(task AS TEXT) ELSE '' END,
    CASE WHEN slot <= 1 OR event_type = 'system.error' THEN ''
         ELSE CAST(json_extract(:agent_ids, '$[' || agent_index || ']') AS TEXT) END,
    json_object(
        'agent', json_extract(:agent_names, '$[' || agent_index || ']'),
        'amount_sats', 90 + (n * 37) % 400,
        'description', 'Task ' || task || ': summarise the overnight build failures',
        'attempt', 1 + n % 3
    ),
    datetime(:start + n * 2, 'unixepoch')
FROM t
ORDER BY n
"""


def fill_events(count: int, agents: list[Agent], start_epoch: int) -> float:
    connection.ensure_connection()
    db = connection.connection
    start = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    db.execute(
        FILL_SQL,
        {
            "count": count,
            "agents": len(agents),
            "agent_ids": json.dumps([a.pk for a in agents]),
            "agent_names": json.dumps([a.name for a in agents]),
            "start": start_epoch,
        },
    )
    db.execute("COMMIT")
    # A fresh 1M-row WAL would make every read search the WAL index; a running site checkpoints as it goes.
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - start


def use_database(path: Path) -> None:
    connection.close()
    connection.settings_dict["NAME"] = str(path)


def page_queries(count: int, agents: list[Agent], start_epoch: int) -> dict[str, dict[str, str]]:
    """Query strings of the measured pages; each shows as many rows at one size as at the other."""
    tasks = count // 16
    middle_task = tasks // 2
    return {
        "default": {},
        "event_type": {"event_type": "bid.submitted"},
        # A task has 14 events at either size (FILL_SQL), so this page is short at both.
        "task_id": {"task_id": str(middle_task)},
        "agent_id": {"agent_id": str(agents[2].pk)},
        "older": {"before": str(count // 2)},
        # Events are 2 s apart (FILL_SQL): this bound falls in the middle of the table at either size.
        # Not a target (see main()).
        "until": {"until": datetime.fromtimestamp(start_epoch + count, UTC).strftime("%Y-%m-%dT%H:%M:%S")},
    }


def time_page(client: Client, query: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    response = client.get("/swarm/events", query)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"/swarm/events {query} answered {response.status_code}")
    return elapsed * 1000, response.content.count(b"<tr>") - 1  # minus the header row


def bench_pages(*, small: int, large: int, rounds: int, repeats: int) -> dict[str, Any]:
    agents = list(Agent.objects.order_by("pk"))
    user = get_user_model().objects.create_user("bench", is_staff=True)
    # A host in ALLOWED_HOSTS: "testserver" is only allowed under Django's test runner.
    client = Client(SERVER_NAME="127.0.0.1")
    client.force_login(user)
    base = Path(connection.settings_dict["NAME"])
    # Two copies of the migrated database (with the user, its session and the agents), one per size.
    sizes = {small: DATA_DIR / "events-small.sqlite3", large: DATA_DIR / "events-large.sqlite3"}
    with connection.cursor() as cursor:
        for path in sizes.values():
            cursor.execute("VACUUM INTO %s", [str(path)])
    starts = {count: int(time.time()) - 2 * count for count in sizes}
    for count, path in sizes.items():
        use_database(path)
        say(f"filling {path.name} with {count:,} events ...")
        say(f"  {fill_events(count, agents, starts[count]):.1f} s")

    pages = {count: page_queries(count, agents, starts[count]) for count in sizes}
    rows: dict[str, dict[int, int]] = {name: {} for name in pages[small]}
    samples: dict[str, dict[int, list[float]]] = {name: {count: [] for count in sizes} for name in pages[small]}
    say(f"/swarm/events: {rounds} rounds x {repeats} requests per page and size, sizes alternating")
    for r in range(rounds):
        # Switch size for every page, so that load from other processes falls on both sizes alike.
        for name in samples:
            for count in sizes if r % 2 == 0 else reversed(sizes):
                use_database(sizes[count])
                time_page(client, pages[count][name])  # warm-up: connection, page cache
                for _ in range(repeats):
                    ms, rows[name][count] = time_page(client, pages[count][name])
                    samples[name][count].append(ms)
        say(f"  round {r + 1}/{rounds} done")
    use_database(base)

    result: dict[str, Any] = {}
    for name, by_size in samples.items():
        if rows[name][small] != rows[name][large]:
            raise RuntimeError(f"page {name!r} shows {rows[name]} rows: the two sizes are not comparable")
        small_ms, large_ms = statistics.median(by_size[small]), statistics.median(by_size[large])
        result[name] = {
            "page_1k_ms": round(small_ms, 2),
            "page_1m_ms": round(large_ms, 2),
            "page_1m_vs_1k": round(large_ms / small_ms, 3),
            "rows": rows[name][small],
            "query_1k": pages[small][name],
            "query_1m": pages[large][name],
        }
        say(f"  {name:10} {small_ms:7.2f} ms at {small:,}  {large_ms:7.2f} ms at {large:,}  x{large_ms / small_ms:.2f}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the large table (default 1M)")
    parser.add_argument("--small", type=int, default=1_000, help="events in the small table (default 1k)")
    parser.add_argument("--batch", type=int, default=500, help="events per log_event or raw INSERT batch")
    parser.add_argument("--rounds", type=int, default=41, help="rounds of log_event vs raw INSERT, per mode")
    parser.add_argument("--page-rounds", type=int, default=15, help="rounds of page requests")
    parser.add_argument("--repeats", type=int, default=5, help="requests per page, size and round")
    args = parser.parse_args()

    migrate_fresh_database(f"SQLite {connection.Database.sqlite_version}")

    figures = bench_log_event(batch=args.batch, rounds=args.rounds)
    pages = bench_pages(small=args.small, large=args.events, rounds=args.page_rounds, repeats=args.repeats)
    connection.close()

    default = pages.pop("default")
    # Time bounds filter on the timestamp, not on id: exact even when the clock moved, but a bound far in the
    # past makes SQLite walk the ids down to it. Measured and shown, not part of the target.
    until = pages.pop("until")
    targets_met = figures["log_event_vs_raw_insert"] >= LOG_EVENT_TARGET and all(
        page["page_1m_vs_1k"] <= PAGE_RATIO_TARGET for page in [default, *pages.values()]
    )
    print(
        json.dumps(
            {
                **figures,
                "page_1k_ms": default["page_1k_ms"],
                "page_1m_ms": default["page_1m_ms"],
                "page_1m_vs_1k": default["page_1m_vs_1k"],
                "filtered": pages,
                "until_no_target": until,
                "events": args.events,
                "small_events": args.small,
                "targets": {
                    "log_event_vs_raw_insert": f">= {LOG_EVENT_TARGET}",
                    "page_1m_vs_1k": f"<= {PAGE_RATIO_TARGET}",
                },
                "targets_met": targets_met,
                "debug": False,
                "code": code_version(),
                "sqlite": connection.Database.sqlite_version,
                "django": django.get_version(),
                "python": platform.python_version(),
                "date": datetime.now(UTC).date().isoformat(),
            }
        )
    )


if __name__ == "__main__":
    main()
