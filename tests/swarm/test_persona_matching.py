import random
from collections.abc import Iterator

import pytest

from apps.memory.embeddings import SentenceTransformerEmbedder, get_embedder, reset_embedder
from apps.swarm.models import Agent
from apps.swarm.services import auction_close, task_post
from tests.swarm.helpers import after_auction
from tests.swarm.persona_eval import PERSONA_EVAL

REQUIRED_ACCURACY = 0.9


@pytest.fixture
def minilm(settings) -> Iterator[SentenceTransformerEmbedder]:
    settings.EMBEDDING_BACKEND = "minilm"
    reset_embedder()
    embedder = get_embedder()
    assert isinstance(embedder, SentenceTransformerEmbedder)
    yield embedder
    reset_embedder()


def test_the_evaluation_set_has_enough_varied_tasks_for_every_bidding_persona(db):
    bidding = set(Agent.objects.filter(bids_on_tasks=True).values_list("name", flat=True))
    counts = {name: sum(expected == name for _, expected in PERSONA_EVAL) for name in bidding}
    assert len(PERSONA_EVAL) >= 70
    assert min(counts.values()) >= 10, counts
    descriptions = [description.lower() for description, _ in PERSONA_EVAL]
    assert len(set(descriptions)) == len(descriptions)
    for start in ("write a python function is_palindrome", "write a function", "write a blog post", "research"):
        assert any(d.startswith(start) for d in descriptions), start
    assert any("tls certificate" in d for d in descriptions)


def test_the_persona_an_operator_would_pick_wins_at_least_90_percent_of_the_evaluation_set(personas, minilm):
    rng = random.Random(17)
    misses = []
    for description, expected in PERSONA_EVAL:
        task = task_post(description=description, rng=rng)
        task = auction_close(task_id=task.pk, now=after_auction(task))
        assert task.assigned_agent is not None
        if task.assigned_agent.name != expected:
            bids = ", ".join(f"{bid.agent.name} {bid.amount_sats} (match {bid.match})" for bid in task.bids.all())
            misses.append(f"{description!r}: expected {expected}, won by {task.assigned_agent.name}; bids {bids}")
    accuracy = 1 - len(misses) / len(PERSONA_EVAL)
    assert accuracy >= REQUIRED_ACCURACY, f"{accuracy:.1%} won by the expected persona; misses:\n" + "\n".join(misses)
