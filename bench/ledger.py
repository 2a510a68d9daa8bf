"""Benchmark of the ledger (see docs/benchmarks.md): `get_balance()` and the `/lightning/ledger` page with
1,000,000 entries, as ratios to the same with 1,000 (target: within 3x for each).

Two copies of the migrated database are filled by SQL with the same mix of entries spread evenly over the last
year (65 % incoming, mostly L402 earnings, 35 % outgoing payments to agents; 85 % settled, 5 % pending, 5 % expired,
5 % failed), then the running totals and the daily sums are rebuilt from the rows, as the services keep them, and
checked with `services.totals_drift()`. The two sizes are measured alternately, round after round, and compared by
their medians: get_balance() as a call, and the page through Django's test client as a logged-in staff user
(middleware, session, queries, template): the default page, filtered by type and status, pending entries only, and
the last 30 days. Each page shows the same number of rows at both sizes. The CSV export streams every matching row,
so it grows with the ledger by design; it is not measured.

Run from the project root: `.venv/bin/python bench/ledger.py` (`--help` for sizes and repeats; about 3 minutes).
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
from datetime import UTC, datetime, timedelta
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
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.ledger import services

TARGET = 3.0
YEAR_SECONDS = 365 * 86400

FILL_SQL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count),
rows AS (
    SELECT i,
        CASE WHEN i % 20 < 13 THEN 'incoming' ELSE 'outgoing' END AS tx_type,
        CASE i % 20 WHEN 0 THEN 'pending' WHEN 1 THEN 'expired' WHEN 13 THEN 'failed' WHEN 14 THEN 'pending'
            ELSE 'settled' END AS status,
        :start + (i * :span) / :count AS at
    FROM n
)
INSERT INTO ledger (tx_type, status, payment_hash, amount_sats, memo, invoice, preimage, source, created_at,
                    settled_at, expires_at, fee_sats, failure_reason)
SELECT tx_type,
    CASE WHEN tx_type = 'outgoing' AND status = 'expired' THEN 'settled' ELSE status END,
    printf('%064x', i),
    CASE WHEN tx_type = 'incoming' THEN 100 ELSE 10 + i % 190 END,
    CASE WHEN tx_type = 'incoming' THEN 'L402: serve/chat' ELSE 'Task ' || (i / 3) || ': research' END,
    'lnbcrt1' || printf('%064x', i),
    CASE WHEN status = 'settled' OR (tx_type = 'outgoing' AND status = 'expired') THEN printf('%064x', i * 7)
        ELSE '' END,
    CASE WHEN tx_type = 'outgoing' THEN 'swarm' WHEN i % 10 = 0 THEN 'api:admin' ELSE 'l402:serve/chat' END,
    strftime('%Y-%m-%d %H:%M:%f', at, 'unixepoch'),
    CASE WHEN status = 'settled' OR (tx_type = 'outgoing' AND status = 'expired')
        THEN strftime('%Y-%m-%d %H:%M:%f', at + 20, 'unixepoch') END,
    CASE WHEN tx_type = 'incoming' THEN strftime('%Y-%m-%d %H:%M:%f', at + 3600, 'unixepoch') END,
    CASE WHEN tx_type = 'outgoing' AND status <> 'failed' THEN i % 3 ELSE 0 END,
    CASE WHEN status = 'failed' THEN 'FAILURE_REASON_NO_ROUTE' ELSE '' END
FROM rows
"""
TOTALS_SQL = [
    "DELETE FROM ledger_totals",
    """INSERT INTO ledger_totals (tx_type, status, count, amount_sats, fee_sats)
       SELECT tx_type, status, count(*), sum(amount_sats), sum(fee_sats) FROM ledger GROUP BY tx_type, status""",
    "DELETE FROM ledger_daily",
    """INSERT INTO ledger_daily (day, tx_type, source, count, amount_sats, fee_sats)
       SELECT date(settled_at), tx_type, source, count(*), sum(amount_sats), sum(fee_sats) FROM ledger
       WHERE status = 'settled' GROUP BY 1, 2, 3""",
]


def fill(count: int, end_epoch: int) -> float:
    """`count` entries ending at end_epoch, and the totals and daily sums rebuilt from them."""
    connection.ensure_connection()
    db = connection.connection
    start = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    db.execute(FILL_SQL, {"count": count, "start": end_epoch - YEAR_SECONDS, "span": YEAR_SECONDS})
    for sql in TOTALS_SQL:
        db.execute(sql)
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("ANALYZE")
    return time.perf_counter() - start


def use_database(path: Path) -> None:
    connection.close()
    connection.settings_dict["NAME"] = str(path)


def pages() -> dict[str, dict[str, str]]:
    since = (timezone.localdate() - timedelta(days=29)).isoformat()
    return {
        "default": {},
        "incoming_settled": {"type": "incoming", "status": "settled"},
        "pending": {"status": "pending"},
        "last_30_days": {"since": since},
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries in the large ledger (default 1M)")
    parser.add_argument("--small", type=int, default=1_000, help="entries in the small ledger (default 1k)")
    parser.add_argument("--rounds", type=int, default=11, help="rounds, sizes alternating (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per figure, size and round")
    args = parser.parse_args()

    migrate_fresh_database(f"SQLite {connection.Database.sqlite_version}")
    user = get_user_model().objects.create_user("bench", is_staff=True)
    client = Client(SERVER_NAME="127.0.0.1")  # a host in ALLOWED_HOSTS
    client.force_login(user)
    url = reverse("ledger:index")

    sizes = {args.small: DATA_DIR / "ledger-small.sqlite3", args.entries: DATA_DIR / "ledger-large.sqlite3"}
    with connection.cursor() as cursor:
        for path in sizes.values():
            cursor.execute("VACUUM INTO %s", [str(path)])
    end = int(time.time())
    for count, path in sizes.items():
        use_database(path)
        say(f"filling {path.name} with {count:,} entries ...")
        say(f"  {fill(count, end):.1f} s")
        drift = services.totals_drift()
        if drift:
            raise RuntimeError(f"the rebuilt totals disagree with the rows: {drift}")

    def page(query: dict[str, str]) -> Callable[[], int]:
        def get() -> int:
            response = client.get(url, query)
            if response.status_code != 200:
                raise RuntimeError(f"{url} {query} answered {response.status_code}")
            return response.content.count(b"<tr")

        return get

    figures: dict[str, Callable[[], Any]] = {"get_balance": services.get_balance}
    figures.update({f"page_{name}": page(query) for name, query in pages().items()})
    samples: dict[str, dict[int, list[float]]] = {name: {count: [] for count in sizes} for name in figures}
    outputs: dict[str, dict[int, Any]] = {name: {} for name in figures}
    say(f"{args.rounds} rounds x {args.repeats} measurements per figure and size, sizes alternating")
    for r in range(args.rounds):
        for name, fn in figures.items():
            for count in sizes if r % 2 == 0 else reversed(list(sizes)):
                use_database(sizes[count])
                fn()  # warm-up: connection, page cache
                for _ in range(args.repeats):
                    ms, outputs[name][count] = timed(fn)
                    samples[name][count].append(ms)
        say(f"  round {r + 1}/{args.rounds} done")
    connection.close()

    small, large = args.small, args.entries
    result: dict[str, Any] = {}
    for name, by_size in samples.items():
        if name.startswith("page_") and outputs[name][small] != outputs[name][large]:
            raise RuntimeError(f"{name} shows {outputs[name]} table rows: the two sizes are not comparable")
        small_ms, large_ms = statistics.median(by_size[small]), statistics.median(by_size[large])
        result[name] = {
            "1k_ms": round(small_ms, 3),
            "1m_ms": round(large_ms, 3),
            "ratio": round(large_ms / small_ms, 2),
        }
        say(f"  {name:24} {small_ms:8.3f} ms at {small:,}  {large_ms:8.3f} ms at {large:,}  x{large_ms / small_ms:.2f}")
    print(
        json.dumps(
            {
                "benchmark": "ledger",
                "date": datetime.now(UTC).date().isoformat(),
                "code": code_version(),
                "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
                "sqlite": connection.Database.sqlite_version,
                "django": django.get_version(),
                "entries": large,
                "small_entries": small,
                "get_balance_1m_vs_1k": result["get_balance"]["ratio"],
                "page_1m_vs_1k": result["page_default"]["ratio"],
                "targets_met": all(figure["ratio"] <= TARGET for figure in result.values()),
                "figures": result,
            }
        )
    )


if __name__ == "__main__":
    main()
