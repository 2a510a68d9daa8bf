"""Benchmark of who wins the auction: the persona evaluation set (tests/swarm/persona_eval.py) through the real
services, against the substring rule that bids were made by before issue 17.

One run, in a fresh temporary data dir (migrated, DEBUG off), with the persona agents of the data migrations all
online and the configured embedder (all-MiniLM-L6-v2 unless EMBEDDING_BACKEND says otherwise). Each task of the set
is posted (`task_post`: the agents bid with jitter from a seeded generator) and its auction closed; the winner is
compared with the persona an operator would pick. That is repeated for --seeds jitter seeds (default 5).

- `persona_accuracy`: the share of (task, seed) pairs won by the expected persona, and its worst seed
  (`persona_accuracy_min_seed`).
- `keyword_baseline_accuracy`: the same set under the old rule, reimplemented here: a persona bids its base price
  when the task contains one of its 0002 keywords at the start of a word, base x off_topic_multiplier otherwise,
  plus the same jitter; the lowest bid wins, ties to the first bidder.
- `argmax_accuracy`: the share whose best match (before prices and jitter) is the expected persona.
- `persona_holdout_accuracy`: the same auctions on PERSONA_HOLDOUT, tasks written by someone who had not read the
  profiles and never used to tune them (the set above was written with the profiles in view).

Run from the project root: `.venv/bin/python bench/personas.py` (about 20 s; --help). Progress goes to stderr; the
last line of stdout is one JSON object with the figures; the misses are printed to stderr.
"""

import argparse
import importlib
import json
import os
import platform
import random
import re
import time
from datetime import UTC, datetime, timedelta

os.environ.setdefault("EMBEDDING_BACKEND", "minilm")

from isolated import code_version, say  # first: sets up Django in a temporary data dir, removed at exit

# isort: split
from django.core.management import call_command

from apps.memory.embeddings import get_embedder
from apps.swarm import matching, services
from apps.swarm.models import Agent
from tests.swarm.persona_eval import PERSONA_EVAL, PERSONA_HOLDOUT

# The keywords the old rule matched, as the migration that introduced them wrote them.
OLD_PERSONAS = importlib.import_module("apps.swarm.migrations.0002_personas").PERSONAS


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def keyword_bid(persona: dict, description: str, rng: random.Random) -> int:
    """The bid of the substring rule that issue 17 replaced."""
    text = " " + _words(description)
    keywords = [_words(keyword) for keyword in persona["keywords"]]
    matches = any(f" {keyword}" in text for keyword in keywords if keyword)
    base = persona["base_bid_sats"] * (1 if matches else 3)
    jitter = persona["bid_jitter_sats"]
    return max(1, base + rng.randint(-jitter, jitter))


def keyword_winner(description: str, rng: random.Random) -> str:
    bids = [
        (keyword_bid(p, description, rng), i, p["name"])
        for i, p in enumerate(OLD_PERSONAS)
        if p.get("bids_on_tasks", True)
    ]
    return min(bids)[2]


def auction_winner(description: str, rng: random.Random) -> str:
    task = services.task_post(description=description, auction_seconds=1, rng=rng)
    task = services.auction_close(task_id=task.pk, now=task.auction_closes_at + timedelta(milliseconds=1))
    assert task.assigned_agent is not None, task
    return task.assigned_agent.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="jitter seeds to run the set with (default 5)")
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    services.agents_bring_online(source="bench")
    embedder = get_embedder()
    say(f"embedder {embedder.name}; {len(PERSONA_EVAL)} tasks x {args.seeds} seeds")

    descriptions = [description for description, _ in PERSONA_EVAL]
    started = time.monotonic()
    agents = list(Agent.objects.filter(bids_on_tasks=True))
    matches = matching.task_matches(descriptions, agents)
    by_id = {agent.pk: agent.name for agent in agents}
    best = [by_id[max(m, key=lambda pk: (m[pk].similarity, -pk))] for m in matches]
    argmax_hits = sum(b == expected for b, (_, expected) in zip(best, PERSONA_EVAL, strict=True))
    leads = sorted(
        sorted(x.similarity for x in m.values())[-1] - sorted(x.similarity for x in m.values())[-2] for m in matches
    )
    say(f"matched the set in one batch in {time.monotonic() - started:.2f} s")

    hits = baseline_hits = 0
    per_seed = []
    misses: dict[tuple[str, str, str], int] = {}
    started = time.monotonic()
    for seed in range(args.seeds):
        rng, baseline_rng = random.Random(seed), random.Random(seed)
        seed_hits = 0
        for description, expected in PERSONA_EVAL:
            winner = auction_winner(description, rng)
            seed_hits += winner == expected
            if winner != expected:
                misses[(description, expected, winner)] = misses.get((description, expected, winner), 0) + 1
            baseline_hits += keyword_winner(description, baseline_rng) == expected
        hits += seed_hits
        per_seed.append(seed_hits / len(PERSONA_EVAL))
        say(f"seed {seed}: {seed_hits}/{len(PERSONA_EVAL)}")
    auction_seconds = time.monotonic() - started
    holdout_hits = 0
    for seed in range(args.seeds):
        rng = random.Random(seed)
        for description, expected in PERSONA_HOLDOUT:
            winner = auction_winner(description, rng)
            holdout_hits += winner == expected
            if winner != expected and seed == 0:
                say(f"  holdout miss: expected {expected}, won by {winner}: {description}")
    for (description, expected, winner), count in sorted(misses.items(), key=lambda item: -item[1]):
        say(f"  miss ({count}/{args.seeds} seeds): expected {expected}, won by {winner}: {description}")

    runs = len(PERSONA_EVAL) * args.seeds
    figures = {
        "persona_accuracy": round(hits / runs, 3),
        "persona_accuracy_min_seed": round(min(per_seed), 3),
        "keyword_baseline_accuracy": round(baseline_hits / runs, 3),
        "argmax_accuracy": round(argmax_hits / len(PERSONA_EVAL), 3),
        "items": len(PERSONA_EVAL),
        "persona_holdout_accuracy": round(holdout_hits / (len(PERSONA_HOLDOUT) * args.seeds), 3),
        "holdout_items": len(PERSONA_HOLDOUT),
        "seeds": args.seeds,
        "match_margin_p10": round(leads[len(leads) // 10], 3),
        "match_margin_median": round(leads[len(leads) // 2], 3),
        "mismatch_lead": matching.MISMATCH_LEAD,
        "auction_ms_per_task": round(1000 * auction_seconds / runs, 1),
        "embedder": embedder.name,
        "code": code_version(),
        "python": platform.python_version(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
