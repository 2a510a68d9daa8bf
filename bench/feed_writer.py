"""The event writer of bench/feed.py: log_event at a steady rate, in a process of its own, as the worker would.

Each event is committed in its own transaction. Right after each commit (before log_event's own on_commit nudge
to Redis, when REDIS_URL is set) it writes "<id> <time.time()>" to --out: the commit time, which the benchmark joins
with the clients' receive times; it completes the line with the time after the nudge. The settings come from the
environment that bench/feed.py passes (TIMMY_DATA_DIR, REDIS_URL, ...). Prints "writing <CPU seconds>" once Django is
set up, and "done <count> <CPU seconds>" at the end.
"""

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timmy_site.settings")

import django  # noqa: E402

django.setup()

from django.db import transaction  # noqa: E402

from apps.events.services import log_event  # noqa: E402

# What the swarm logs most: a task's auction and run.
TYPES = ["task.created", "task.bidding", "bid.submitted", "bid.submitted", "task.assigned", "task.started"]
AGENTS = ["echo", "forge", "seer", "helm", "quill", "mace"]


def stamp(out: TextIO, event_id: list[int]) -> None:
    out.write(f"{event_id[0]} {time.time():.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--out", type=Path, required=True, help="file for '<id> <commit time>' lines")
    args = parser.parse_args()

    count = round(args.rate * args.duration)
    print(f"writing {time.process_time():.3f}", flush=True)
    with args.out.open("w", encoding="ascii") as out:
        start = time.monotonic()
        for i in range(count):
            # On a fixed schedule, so a slow commit does not push every later event back.
            delay = start + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            event_id: list[int] = []
            with transaction.atomic():
                # Registered before log_event's nudge, so it runs first after COMMIT: the commit time.
                transaction.on_commit(partial(stamp, out, event_id))
                event = log_event(
                    TYPES[i % len(TYPES)],
                    source="swarm",
                    task_id=1000 + i // len(TYPES),
                    agent_id=AGENTS[i % len(AGENTS)],
                    data={
                        "agent": AGENTS[i % len(AGENTS)],
                        "amount_sats": 90 + (i * 37) % 400,
                        "description": f"Summarise the overnight build failures (task {1000 + i // len(TYPES)})",
                        "attempt": 1 + i % 3,
                    },
                )
                event_id.append(event.id)
            # After log_event's own on_commit callbacks (the Redis nudge): what they cost the writer.
            out.write(f" {time.time():.6f}\n")
    print(f"done {count} {time.process_time():.3f}", flush=True)


if __name__ == "__main__":
    main()
