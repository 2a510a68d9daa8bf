"""How well memory search finds what a question means, on the evaluation set in memory_eval (issue 18).

Shared by tests/memory/test_search_quality.py and bench/memory.py. `measure` stores every fact for one user in
one batch, then asks every question three ways: `search_memories` end to end (hybrid), the vector index alone and
the keyword index alone, each for the top 10 in the user's scope. For the answerable questions it reports
recall@1, recall@3 and MRR (the reciprocal rank of the fact's memory, 0 when it is not in the top 10); for the
unanswerable ones, the share that stays quiet, i.e. brings back nothing above the similarity floor; the same for
the near misses kept apart (memory_eval.NEAR_MISSES), for information; and recall@1 of the look-ups
(memory_eval.LOOKUPS: a name or code typed as it is stored).

What "above the floor" means per side:
- hybrid: anything `search_memories` returns (applying the floor is the search's job);
- vector alone: a similarity at or above the embedder's floor (`similarity_floor`); with no floor known,
  anything returned, so that side is never quiet;
- keyword alone: anything returned (a keyword match has no similarity to compare).
"""

from collections.abc import Callable, Sequence
from typing import Any

from apps.memory import embeddings, index, services
from apps.memory.embeddings import Embedder, get_embedder
from tests.memory.memory_eval import FACTS, LOOKUPS, NEAR_MISSES, UNANSWERABLE

K = 10
SIDES = ("hybrid", "vector", "keyword")


def similarity_floor(embedder: Embedder) -> float | None:
    """The similarity below which a vector match means nothing for this embedder, wherever apps.memory defines it:
    a `similarity_floor(embedder)` function, a `similarity_floor` attribute of the embedder, a per-embedder-name
    mapping `SIMILARITY_FLOORS`, or one `SIMILARITY_FLOOR`. None when there is none yet."""
    for module in (services, embeddings, index):
        found = getattr(module, "similarity_floor", None)
        if callable(found):
            return _number(found(embedder))
    own = getattr(embedder, "similarity_floor", None)
    if own is not None:
        return _number(own() if callable(own) else own)
    for module in (services, embeddings, index):
        floors = getattr(module, "SIMILARITY_FLOORS", None)
        if isinstance(floors, dict) and embedder.name in floors:
            return _number(floors[embedder.name])
        floor = getattr(module, "SIMILARITY_FLOOR", None)
        if floor is not None:
            return _number(floor)
    return None


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def store_facts(user: Any, facts: Sequence[tuple[str, str]] = FACTS) -> list[int]:
    """Each fact as a private memory of `user`, in one batch; their ids in the order of `facts`."""
    # keep_both: the set has near neighbours on purpose ("Alex's passport…", "My passport…"); should one ever
    # reach the near-duplicate threshold, it must still be its own memory, or its question has no answer.
    stored = services.store_memories(
        [services.NewMemory(fact, "fact", "memory-eval", owner=user) for fact, _ in facts], keep_both=True
    )
    return [s.memory.pk for s in stored]


def _rank(ranked: Sequence[int], wanted: int) -> int | None:
    return ranked.index(wanted) + 1 if wanted in ranked else None


def measure(user: Any, **options: Any) -> dict[str, Any]:
    """Store the facts for `user` (who should own no memories yet) and measure the three searches on them; the
    options are evaluate's. Figures are rounded to 4 places."""
    return evaluate(user, **options)[0]


def evaluate(
    user: Any,
    *,
    embedder: Embedder | None = None,
    floor: float | None = None,
    facts: Sequence[tuple[str, str]] = FACTS,
    unanswerable: Sequence[str] = UNANSWERABLE,
    near_misses: Sequence[str] = NEAR_MISSES,
    lookups: Sequence[tuple[str, str]] = LOOKUPS,
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """measure's figures, and what went wrong on the hybrid side: the questions whose fact was not in the top 3
    ("missed") and the unanswerable ones that brought something back ("loud"). `floor` overrides the vector
    side's similarity floor (see similarity_floor)."""
    embedder = embedder or get_embedder()
    if floor is None:
        floor = similarity_floor(embedder)
    memory_ids = store_facts(user, facts)
    scope = index.Scope(owner_ids=services.visible_owner_ids(user))

    def rankings(question: str) -> dict[str, list[tuple[int, float | None]]]:
        hybrid = services.search_memories(question, user=user, limit=K)
        return {
            "hybrid": [(hit.memory.pk, hit.similarity) for hit in hybrid],
            "vector": list(index.vector_search(embedder.embed_one(question), scope=scope, k=K)),
            "keyword": [(m, None) for m, _ in index.keyword_search(question, scope=scope, k=K)],
        }

    ranks: dict[str, list[int | None]] = {side: [] for side in SIDES}
    failures: dict[str, list[str]] = {"missed": [], "loud": []}
    for (_, question), wanted in zip(facts, memory_ids, strict=True):
        for side, ranked in rankings(question).items():
            ranks[side].append(_rank([m for m, _ in ranked], wanted))
        if (rank := ranks["hybrid"][-1]) is None or rank > 3:
            failures["missed"].append(f"{question} (rank {rank})")

    above: dict[str, Callable[[float | None], bool]] = {
        "hybrid": lambda similarity: True,
        "vector": lambda similarity: floor is None or (similarity is not None and similarity >= floor),
        "keyword": lambda similarity: True,
    }

    def quiet(questions: Sequence[str], *, record: bool) -> dict[str, float]:
        loud = dict.fromkeys(SIDES, 0)
        for question in questions:
            for side, ranked in rankings(question).items():
                loud[side] += any(above[side](similarity) for _, similarity in ranked)
                if record and side == "hybrid" and ranked:
                    failures["loud"].append(question)
        return {side: _share(len(questions) - loud[side], len(questions)) for side in SIDES}

    by_fact = {fact: memory_id for (fact, _), memory_id in zip(facts, memory_ids, strict=True)}
    lookup_ranks: dict[str, list[int | None]] = {side: [] for side in SIDES}
    for question, fact in lookups:
        if fact in by_fact:
            for side, ranked in rankings(question).items():
                lookup_ranks[side].append(_rank([m for m, _ in ranked], by_fact[fact]))

    unanswerable_quiet = quiet(unanswerable, record=True)
    near_miss_quiet = quiet(near_misses, record=False)

    figures: dict[str, Any] = {}
    for side in SIDES:
        found = ranks[side]
        figures[f"{side}_recall_at_1"] = _share(sum(r == 1 for r in found), len(found))
        figures[f"{side}_recall_at_3"] = _share(sum(r is not None and r <= 3 for r in found), len(found))
        figures[f"{side}_mrr"] = _share(sum(1 / r for r in found if r is not None), len(found))
    for side in SIDES:
        figures[f"{side}_unanswerable_quiet"] = unanswerable_quiet[side]
    for side in SIDES:
        figures[f"{side}_near_miss_quiet"] = near_miss_quiet[side]
    for side in SIDES:
        found = lookup_ranks[side]
        figures[f"{side}_lookup_recall_at_1"] = _share(sum(r == 1 for r in found), len(found))
    figures["facts"] = len(facts)
    figures["questions_unanswerable"] = len(unanswerable)
    figures["questions_near_miss"] = len(near_misses)
    figures["lookups"] = len(lookup_ranks["hybrid"])
    figures["similarity_floor"] = floor
    figures["embedder"] = embedder.name
    return figures, failures


def _share(part: float, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0
