"""Search quality on the evaluation set (issue 18), with the real all-MiniLM-L6-v2 and the real index of the test
database: SQLite here, PostgreSQL in `make test-pg`. One test measures once (storing 170 facts and asking about 250
questions three ways takes seconds) and checks every target, so a failure shows all the figures at once."""

import json
from collections.abc import Iterator

import pytest

from apps.memory.embeddings import PACKAGED_MODEL_NAME, Embedder, get_embedder, reset_embedder
from tests.factories import UserFactory
from tests.memory.memory_eval import FACTS
from tests.memory.search_quality import SIDES, evaluate

# One question's worth of slack when hybrid is compared with the better single side: the two engines rank ties and
# near ties differently (bm25 and ts_rank, exact cosine and HNSW), so one question can swap places between SQLite
# and PostgreSQL without the fusion being any worse. Anything more is a real loss.
ONE_QUESTION = 1 / len(FACTS)
RECALL_AT_3 = 0.95
# Issue 18 asks for 0.90 and it is not met yet: with the MiniLM cosine alone, off-topic questions score up to 0.63
# against a stored fact ("who discovered penicillin?" against an allergy to it) while the weakest right answers
# score 0.21, so a floor that keeps every answer keeps most of them too (docs/architecture.md, memory). What the
# floor does today is guarded here: the clearly unrelated questions get nothing.
UNANSWERABLE_QUIET = 0.20


@pytest.fixture
def minilm(settings) -> Iterator[Embedder]:
    """The process's embedder, made to be MiniLM if the settings chose another."""
    if get_embedder().name == PACKAGED_MODEL_NAME:
        yield get_embedder()
        return
    settings.EMBEDDING_BACKEND, settings.EMBEDDING_MODEL_PATH = "minilm", ""
    reset_embedder()
    yield get_embedder()
    reset_embedder()


def test_search_finds_what_was_meant_at_least_as_well_as_either_half_and_the_floor_keeps_the_unrelated_out(db, minilm):
    figures, failures = evaluate(UserFactory(username="evaluator"), embedder=minilm)
    assert figures["embedder"] == PACKAGED_MODEL_NAME

    unmet = []
    for measure in ("recall_at_1", "recall_at_3", "mrr"):
        better_half = max(figures[f"{side}_{measure}"] for side in SIDES if side != "hybrid")
        if figures[f"hybrid_{measure}"] < better_half - ONE_QUESTION:
            unmet.append(f"hybrid {measure} {figures[f'hybrid_{measure}']} < better single side's {better_half}")
    if figures["hybrid_recall_at_3"] < RECALL_AT_3:
        unmet.append(f"hybrid recall@3 {figures['hybrid_recall_at_3']} < {RECALL_AT_3}")
    if figures["hybrid_lookup_recall_at_1"] < figures["vector_lookup_recall_at_1"]:
        unmet.append(
            f"a name or code typed as stored comes first less often than by the vectors alone: "
            f"{figures['hybrid_lookup_recall_at_1']} < {figures['vector_lookup_recall_at_1']}"
        )
    if figures["hybrid_unanswerable_quiet"] < UNANSWERABLE_QUIET:
        unmet.append(f"unanswerable questions quiet {figures['hybrid_unanswerable_quiet']} < {UNANSWERABLE_QUIET}")

    assert not unmet, "\n".join(
        [
            *unmet,
            f"figures: {json.dumps(figures)}",
            "hybrid missed the top 3 for: " + "; ".join(failures["missed"]),
            "unanswerable, yet hybrid returned memories for: " + "; ".join(failures["loud"]),
        ]
    )
