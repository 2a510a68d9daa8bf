"""The index on its own: what a vector search returns compared with an exact search over the same rows, the
scope, (SQLite) the migration to the two-pass index carrying existing vectors over, and what the keyword side
counts as a match."""

import numpy as np
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from apps.memory import index

ROWS = 1500
OWNERS = (1, 2, index.SHARED)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def indexed(db):
    """ROWS memories around 60 topics, of three owners, two agents and all three types, indexed (no entries
    needed)."""
    rng = np.random.default_rng(7)
    topics = unit(rng.normal(size=(60, index.DIMENSIONS)))
    vectors = unit(topics[rng.integers(0, 60, ROWS)] + rng.normal(scale=0.06, size=(ROWS, index.DIMENSIONS)))
    owners = rng.choice(OWNERS, ROWS)
    agents = rng.choice([index.SHARED, 5], ROWS)
    types = rng.choice(["conversation", "fact", "document"], ROWS)
    index.index_add(
        [
            index.IndexRow(i + 1, vectors[i], f"memory {i + 1}", int(owners[i]), str(types[i]), int(agents[i]))
            for i in range(ROWS)
        ]
    )
    return vectors, owners, agents, types, rng


def exact(vectors, mask, query, k):
    ids = np.flatnonzero(mask)
    similarity = vectors[ids] @ query
    return [int(ids[i]) + 1 for i in np.argsort(-similarity)[:k]]


def test_a_search_finds_the_memory_a_query_paraphrases_and_its_cosine(indexed):
    vectors, owners, *_, rng = indexed
    for target in rng.choice(np.flatnonzero(owners == 1), 25, replace=False):
        query = unit(vectors[target] + rng.normal(scale=0.03, size=index.DIMENSIONS))
        [(memory_id, similarity)] = index.vector_search(query, scope=index.Scope(owner_ids=(1, index.SHARED)), k=1)
        assert memory_id == target + 1
        assert similarity == pytest.approx(float(vectors[target] @ query), abs=1e-5)


def test_a_scoped_search_returns_k_visible_rows_mostly_the_exact_best(indexed):
    vectors, owners, agents, types, rng = indexed
    scopes = [
        (index.Scope(owner_ids=(1, index.SHARED)), np.isin(owners, (1, index.SHARED))),
        (index.Scope(owner_ids=(2,), context_type="fact"), (owners == 2) & (types == "fact")),
        (index.Scope(owner_ids=(1, index.SHARED), agent_id=5), np.isin(owners, (1, index.SHARED)) & (agents == 5)),
        (index.Scope(owner_ids=None), np.ones(ROWS, bool)),
    ]
    for scope, mask in scopes:
        found = 0
        for target in rng.integers(0, ROWS, 20):
            query = unit(vectors[target] + rng.normal(scale=0.06, size=index.DIMENSIONS))
            hits = index.vector_search(query, scope=scope, k=10)
            ids = [m for m, _ in hits]
            assert len(ids) == 10 and all(mask[m - 1] for m in ids)
            assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
            found += len(set(ids) & set(exact(vectors, mask, query, 10)))
        assert found / 200 >= 0.9, scope


def test_forgotten_and_re_embedded_rows_are_searched_as_they_are_now(indexed):
    vectors, owners, *_ = indexed
    scope = index.Scope(owner_ids=None)
    index.index_remove([1])
    assert index.vector_search(vectors[0], scope=scope, k=1)[0][0] != 1
    index.index_replace_vectors([(2, vectors[0])])
    assert index.vector_search(vectors[0], scope=scope, k=1)[0] == (2, pytest.approx(1.0, abs=1e-5))
    [stored] = index.index_vectors([2])[2]  # one chunk
    assert stored == pytest.approx(vectors[0])
    # The re-embedded row kept its scope.
    other = next(owner for owner in OWNERS if owner != owners[1])
    assert index.vector_search(vectors[0], scope=index.Scope(owner_ids=(int(owners[1]),)), k=1)[0][0] == 2
    assert all(m != 2 for m, _ in index.vector_search(vectors[0], scope=index.Scope(owner_ids=(other,)), k=5))


def test_rows_moved_to_the_public_key_are_searched_there_alone_and_k_of_them_come_back(indexed):
    vectors, owners, *_ = indexed
    moved = [int(i) + 1 for i in np.flatnonzero(owners == index.SHARED)[:40]]
    index.index_set_owner(moved, index.PUBLIC)
    public = index.Scope(owner_ids=(index.PUBLIC,))
    for memory_id in moved[:10]:
        hits = index.vector_search(vectors[memory_id - 1], scope=public, k=10)
        assert len(hits) == 10 and {m for m, _ in hits} <= set(moved)
        assert hits[0] == (memory_id, pytest.approx(1.0, abs=1e-5))
    shared = index.vector_search(vectors[moved[0] - 1], scope=index.Scope(owner_ids=(index.SHARED,)), k=20)
    assert len(shared) == 20 and not {m for m, _ in shared} & set(moved)
    assert {m for m, _ in index.keyword_search("memory", scope=public, k=100)} == set(moved)
    # Back to shared; a row no longer indexed (forgotten) is left out without error.
    index.index_remove(moved[:1])
    index.index_set_owner(moved, index.SHARED)
    assert index.vector_search(vectors[moved[1] - 1], scope=public, k=5) == []
    assert index.keyword_search("memory", scope=public, k=5) == []
    back = index.vector_search(vectors[moved[1] - 1], scope=index.Scope(owner_ids=(index.SHARED,)), k=1)
    assert back[0][0] == moved[1]


def test_vectors_stored_before_the_two_pass_index_are_still_found_after_it(transactional_db):
    rng = np.random.default_rng(3)
    vectors = unit(rng.normal(size=(30, index.DIMENSIONS)))
    executor = MigrationExecutor(connection)
    executor.migrate([("memory", "0001_initial")])
    try:
        # Migration 0001's table: vec0 floats on SQLite, pgvector on PostgreSQL (which 0002 leaves as it is).
        postgres = connection.vendor == "postgresql"
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO memory_vectors (memory_id, embedding, owner_id, context_type, agent_id) "
                f"VALUES (%s, %s{'::vector' if postgres else ''}, %s, 'fact', 0)",
                [
                    (i + 1, "[" + ",".join(map(str, v)) + "]" if postgres else v.tobytes(), 1 + i % 2)
                    for i, v in enumerate(vectors)
                ],
            )
    finally:
        executor.loader.build_graph()
        # On to the latest migration, not 0002 alone: the later tests need the whole schema back.
        executor.migrate(executor.loader.graph.leaf_nodes("memory"))
    for i in (0, 1, 17):
        assert index.vector_search(vectors[i], scope=index.Scope(owner_ids=(1 + i % 2,)), k=1)[0][0] == i + 1
    assert index.vector_search(vectors[0], scope=index.Scope(owner_ids=(2,)), k=1)[0][0] != 1


@pytest.fixture
def worded(db):
    """A few memories indexed with their words (the vectors do not matter to the keyword side)."""
    texts = [
        "Weekly backups go to an encrypted USB drive.",
        "The backup of the NAS failed twice in November.",
        "What is it that they were doing there?",
        "The 3D printer is a Prusa MK4 and prints PETG.",
    ]
    vector = unit(np.ones(index.DIMENSIONS))
    index.index_add([index.IndexRow(i + 1, vector, text, 1, "fact", None) for i, text in enumerate(texts)])
    return index.Scope(owner_ids=(1,))


def test_keywords_match_other_forms_of_a_word_and_ignore_stop_words(worded):
    # "backups" and "backup" are one word to both engines: stemmed in the memories and in the question.
    assert {m for m, _ in index.keyword_search("When do the backups happen?", scope=worded, k=10)} == {1, 2}
    assert index.keyword_search("what is it that they were doing there", scope=worded, k=10) == []
    assert index.keyword_terms("What is the Prusa's MK4 for? For what?") == ["prusa", "mk4"]


def test_every_word_finds_only_memories_holding_all_of_them_among_those_asked(worded):
    assert [m for m, _ in index.keyword_search("Prusa backups", scope=worded, k=10, every_word=True)] == []
    assert [m for m, _ in index.keyword_search("prusa mk4", scope=worded, k=10, every_word=True)] == [4]
    assert index.keyword_search("prusa mk4", scope=worded, k=10, every_word=True, among=[1, 2]) == []
    assert index.keyword_search("backups", scope=worded, k=10, among=[]) == []
    # Query syntax in the words is looked for as words, never parsed.
    assert [m for m, _ in index.keyword_search('"prusa" AND (mk4 NEAR', scope=worded, k=10)] == [4]
