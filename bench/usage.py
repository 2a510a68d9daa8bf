"""Benchmark of the usage page (see docs/benchmarks.md): `/router/usage` with 1,000,000 request records, as a ratio
to the same page with 1,000 (target: at most 2x).

Two copies of the migrated database are filled by SQL with the same mix of request records spread evenly over the
last 30 days: the four default providers, two models each, six callers (five agents through their traces, and
calls for no agent), 5 % provider failures, 2 % caller errors (prompt too long), a third streamed (with a time to
first token), latencies spread from 50 ms to 3 s. Then the rollup is rebuilt from the rows by `usage_rebuild`, the
same path as `manage.py usage_rebuild`, and checked against the rows' own counts. The page reads only the rollup,
so its work grows with days x providers x models x agents, not with requests. The two sizes are measured
alternately, round after round, through Django's test client as a logged-in staff user (middleware, session,
queries, template), for each window, and compared by their medians.

Run from the project root: `.venv/bin/python bench/usage.py` (`--help` for sizes and repeats; about 2 minutes).
Everything happens in a fresh temporary TIMMY_DATA_DIR that is removed at exit, with DEBUG off. Progress goes to
stderr; the last line of stdout is one JSON object with the figures.
"""

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from isolated import (  # first: sets up Django in a temporary data dir, removed at exit
    DATA_DIR,
    code_version,
    migrate_fresh_database,
    say,
)

# isort: split
import django
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Sum
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.providers.models import ModelCall, Provider, ProviderRequest, UsageDay
from apps.providers.services import model_call_record, providers_ensure_defaults, usage_rebuild
from apps.swarm.models import Agent

TARGET = 2.0
SPAN_SECONDS = 30 * 86400
WINDOWS = ("24h", "7d", "30d")

FILL_SQL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count),
rows AS (
    SELECT i,
        CASE WHEN i % 20 = 0 THEN 'failure' WHEN i % 50 = 1 THEN 'failure' ELSE 'success' END AS outcome,
        CASE WHEN i % 20 = 0 THEN (CASE WHEN i % 3 = 0 THEN 'timeout' ELSE 'connection' END)
             WHEN i % 50 = 1 THEN 'context_length' ELSE '' END AS error_class,
        50 + (i * 7919) % 2950 AS latency,
        :start + (i * :span) / :count AS at
    FROM n
)
INSERT INTO provider_requests (provider_id, model, started_at, latency_ms, time_to_first_token_ms, tokens_in,
                               tokens_out, outcome, error_class, model_call_id)
SELECT {provider},
    'model-' || (i / 24 % 2),
    strftime('%Y-%m-%d %H:%M:%f', at, 'unixepoch'),
    latency,
    CASE WHEN outcome = 'success' AND i % 3 = 0 THEN latency / 5 END,
    100 + i % 900,
    CASE WHEN outcome = 'success' THEN 10 + i % 300 ELSE 0 END,
    outcome,
    error_class,
    {call}
FROM rows
"""


def fill_sql(provider_ids: list[int], call_ids: list[int]) -> str:
    """FILL_SQL with the providers' and the traces' ids put in: i % 4 picks the provider, i / 4 % 6 the caller
    (none, or an agent's trace) and i / 24 % 2 the model, so every 48 rows hold each combination once."""
    provider = "CASE i % 4 " + " ".join(f"WHEN {n} THEN {pk}" for n, pk in enumerate(provider_ids)) + " END"
    call = "CASE i / 4 % 6 " + " ".join(f"WHEN {n + 1} THEN {pk}" for n, pk in enumerate(call_ids)) + " END"
    return FILL_SQL.format(provider=provider, call=call)


def fill(count: int, sql: str, end_epoch: int) -> tuple[float, float]:
    """`count` request rows ending at end_epoch; then the rollup rebuilt from them. Seconds for each."""
    connection.ensure_connection()
    db = connection.connection
    start = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    db.execute(sql, {"count": count, "start": end_epoch - SPAN_SECONDS, "span": SPAN_SECONDS})
    db.execute("COMMIT")
    filled = time.perf_counter()
    usage_rebuild()
    rebuilt = time.perf_counter()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("ANALYZE")
    return filled - start, rebuilt - filled


def check(count: int) -> int:
    """The rollup's totals against the rows': a rebuild that lost or invented requests is no benchmark."""
    rolled = UsageDay.objects.aggregate(calls=Sum("calls"), tokens=Sum("tokens_in"))
    rows = ProviderRequest.objects.aggregate(tokens=Sum("tokens_in"))
    if rolled != {"calls": count, "tokens": rows["tokens"]}:
        raise RuntimeError(f"the rollup says {rolled}, the {count:,} rows say {rows['tokens']} tokens in")
    return UsageDay.objects.count()


def use_database(path: Path) -> None:
    connection.close()
    connection.settings_dict["NAME"] = str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000, help="request records, large (default 1M)")
    parser.add_argument("--small", type=int, default=1_000, help="request records, small (default 1k)")
    parser.add_argument("--rounds", type=int, default=11, help="rounds, sizes alternating (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="requests per window, size and round")
    args = parser.parse_args()

    migrate_fresh_database(f"SQLite {connection.Database.sqlite_version}")
    user = get_user_model().objects.create_user("bench", is_staff=True)
    providers_ensure_defaults()
    provider_ids = list(Provider.objects.order_by("priority").values_list("pk", flat=True))
    agent_ids = list(Agent.objects.order_by("pk").values_list("pk", flat=True)[:5])
    # One trace per agent: every request of that agent points to it (what the rebuild joins is the same).
    call_ids = [
        model_call_record(
            trace=None,
            started_at=timezone.now(),
            outcome=ModelCall.Outcome.OK,
            provider="ollama",
            model="model-0",
            latency_ms=1,
            messages=[],
            attempts=[],
            fitting={},
            request_ids=[],
        ).pk
        for _ in agent_ids
    ]
    for call_id, agent_id in zip(call_ids, agent_ids, strict=True):
        ModelCall.objects.filter(pk=call_id).update(agent_id=agent_id)
    client = Client(SERVER_NAME="127.0.0.1")  # a host in ALLOWED_HOSTS
    client.force_login(user)
    url = reverse("providers:usage")

    sizes = {args.small: DATA_DIR / "usage-small.sqlite3", args.requests: DATA_DIR / "usage-large.sqlite3"}
    with connection.cursor() as cursor:
        for path in sizes.values():
            cursor.execute("VACUUM INTO %s", [str(path)])
    end = int(time.time())
    sql = fill_sql(provider_ids, call_ids)
    rollup_rows: dict[int, int] = {}
    rebuild_seconds: dict[int, float] = {}
    for count, path in sizes.items():
        use_database(path)
        say(f"filling {path.name} with {count:,} request records ...")
        filled, rebuilt = fill(count, sql, end)
        rollup_rows[count] = check(count)
        rebuild_seconds[count] = rebuilt
        say(f"  {filled:.1f} s; rollup rebuilt in {rebuilt:.1f} s: {rollup_rows[count]:,} rows")

    def page(window: str) -> Callable[[], int]:
        def get() -> int:
            response = client.get(url, {"window": window})
            if response.status_code != 200:
                raise RuntimeError(f"{url} window={window} answered {response.status_code}")
            return response.content.count(b"<tr")

        return get

    figures = {window: page(window) for window in WINDOWS}
    samples: dict[str, dict[int, list[float]]] = {name: {count: [] for count in sizes} for name in figures}
    outputs: dict[str, dict[int, int]] = {name: {} for name in figures}
    say(f"{args.rounds} rounds x {args.repeats} requests per window and size, sizes alternating")
    for r in range(args.rounds):
        for name, get in figures.items():
            for count in sizes if r % 2 == 0 else reversed(list(sizes)):
                use_database(sizes[count])
                get()  # warm-up: connection, page cache
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    outputs[name][count] = get()
                    samples[name][count].append((time.perf_counter() - start) * 1000)
        say(f"  round {r + 1}/{args.rounds} done")
    connection.close()

    small, large = args.small, args.requests
    result = {}
    for name, by_size in samples.items():
        if outputs[name][small] != outputs[name][large]:
            raise RuntimeError(f"window {name} shows {outputs[name]} table rows: the two sizes are not comparable")
        small_ms, large_ms = statistics.median(by_size[small]), statistics.median(by_size[large])
        result[name] = {
            "1k_ms": round(small_ms, 3),
            "1m_ms": round(large_ms, 3),
            "ratio": round(large_ms / small_ms, 2),
        }
        say(
            f"  window {name:4} {small_ms:8.3f} ms at {small:,}  {large_ms:8.3f} ms at {large:,}  "
            f"x{large_ms / small_ms:.2f}"
        )
    main_figure = result["30d"]
    print(
        json.dumps(
            {
                "benchmark": "usage",
                "date": datetime.now(UTC).date().isoformat(),
                "code": code_version(),
                "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
                "sqlite": connection.Database.sqlite_version,
                "django": django.get_version(),
                "requests": large,
                "small_requests": small,
                "rollup_rows": {str(k): v for k, v in rollup_rows.items()},
                "rebuild_seconds": {str(k): round(v, 1) for k, v in rebuild_seconds.items()},
                "usage_page_p50_ms_1k": main_figure["1k_ms"],
                "usage_page_p50_ms_1m": main_figure["1m_ms"],
                "usage_page_ratio_1m_vs_1k": main_figure["ratio"],
                "targets_met": all(figure["ratio"] <= TARGET for figure in result.values()),
                "windows": result,
            }
        )
    )


if __name__ == "__main__":
    main()
