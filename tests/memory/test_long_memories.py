"""Memories longer than the embedder's window (issue 18): cut into overlapping chunks, each indexed and searched on
its own, and returned as their memory. With the real all-MiniLM-L6-v2 and the real index of the test database:
SQLite here, PostgreSQL in `make test-pg`."""

import itertools
import re
from collections.abc import Iterator
from io import StringIO
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from apps.memory import index, services
from apps.memory.embeddings import (
    PACKAGED_MODEL_NAME,
    Embedder,
    HashedNgramEmbedder,
    SentenceTransformerEmbedder,
    get_embedder,
    reset_embedder,
)
from apps.memory.models import MemoryEntry
from tests.factories import StaffFactory, UserFactory
from tests.memory.test_store import FACTS

PLACES = ["Ghent", "the coast road", "Lyon", "the old quarry", "Bruges", "the ferry port", "Dijon", "the lake"]
FOODS = ["lentil soup", "a pear tart", "grilled sardines", "mushroom risotto", "rye bread with cheese", "a bean stew"]
PEOPLE = ["Marta", "Jonas", "Priya", "the twins", "Uncle Theo", "Lena"]
SENTENCES = [
    "On day {n} we left {place} early, before the mist had lifted from the fields.",
    "{person} kept the map on their knees and argued with the satnav about every roundabout.",
    "Lunch was {food}, eaten on a bench while a dog watched us with great patience.",
    "The rain came in sideways for an hour, then the sky cleared as if nothing had happened.",
    "We counted {count} windmills between the villages and gave each one a silly name.",
    "In the evening {person} read aloud from a paperback about lighthouse keepers.",
    "The campsite had a tiny shop that sold stamps, batteries and surprisingly good coffee.",
    "My left knee complained on the long climb, so we walked the bikes for the last stretch.",
    "At a market stall I bought a blue enamel mug and a postcard for my grandmother.",
    "The museum in {place} had a room full of clocks, all ticking slightly out of step.",
    "We played cards by torchlight until {person} won three games in a row and gloated.",
    "Dinner was {food}, cooked on the little gas stove that only works when you talk nicely to it.",
    "A farmer waved us through a gate and pointed out a heron standing in the ditch.",
    "The train back to {place} was late, and nobody seemed to mind very much.",
]


def diary(days: int, seed: int) -> list[str]:
    """Paragraphs of a holiday diary, a day each, none about keys or sheds."""
    rng = np.random.default_rng(seed)
    paragraphs = []
    for n in range(1, days + 1):
        picks = sorted(rng.choice(len(SENTENCES), 7, replace=False))
        paragraphs.append(
            " ".join(
                SENTENCES[i].format(
                    n=n,
                    place=PLACES[rng.integers(len(PLACES))],
                    food=FOODS[rng.integers(len(FOODS))],
                    person=PEOPLE[rng.integers(len(PEOPLE))],
                    count=rng.integers(3, 40),
                )
                for i in picks
            )
        )
    return paragraphs


ANSWER = (
    "Before flying home I hid the spare key to the bike shed inside the hollow stone frog next to the rain barrel, "
    "so that the neighbour can let herself in and water the tomatoes while we are away."
)
# About 1,570 words; the only thing said about the key is its last paragraph.
DIARY = "\n\n".join([*diary(14, seed=1), ANSWER])
QUESTION = "Where did I hide the spare key for the bike shed?"


@pytest.fixture
def minilm(settings: Any) -> Iterator[Embedder]:
    """The process's embedder, made to be MiniLM if the settings chose another."""
    if get_embedder().name == PACKAGED_MODEL_NAME:
        yield get_embedder()
        return
    settings.EMBEDDING_BACKEND, settings.EMBEDDING_MODEL_PATH = "minilm", ""
    reset_embedder()
    yield get_embedder()
    reset_embedder()


def remember(content: str, owner: Any = None) -> MemoryEntry:
    stored = services.store_memory(content=content, context_type="document", source="test", owner=owner)
    assert stored.created
    return stored.memory


def chunk_vectors(memory: MemoryEntry) -> np.ndarray:
    return index.index_vectors([memory.pk]).get(memory.pk, np.zeros((0, index.DIMENSIONS)))


def index_rows() -> tuple[int, ...]:
    """Rows of the vector side of the index: vectors, and on SQLite their codes."""
    tables = ["memory_vectors"] + (["memory_codes"] if connection.vendor == "sqlite" else [])
    with connection.cursor() as cursor:
        counts = []
        for table in tables:
            cursor.execute(f"SELECT count(*) FROM {table}")
            counts.append(int(cursor.fetchone()[0]))
    return tuple(counts)


def word_pieces(embedder: Embedder, text: str) -> int:
    assert isinstance(embedder, SentenceTransformerEmbedder)
    return len(embedder.model.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_a_question_about_the_last_paragraph_of_a_long_memory_finds_it_once_as_its_memory(db, minilm):
    alice = UserFactory(username="alice")
    services.store_memories([services.NewMemory(fact, "fact", "test") for fact in FACTS])
    long = remember(DIARY, owner=alice)
    chunks = minilm.chunk_texts([DIARY])[0]
    assert len(DIARY.split()) > 1500 and len(chunks) > 5
    assert len(chunk_vectors(long)) == len(chunks)

    hits = services.search_memories(QUESTION, user=alice, limit=10)
    assert hits[0].memory == long and hits[0].memory.content == DIARY
    assert [hit.memory.pk for hit in hits].count(long.pk) == 1
    # The last chunk, with the answer, is what matched; the memory embedded whole, as before chunks (the model read
    # its first 256 word pieces), is not even above the floor.
    question = minilm.embed_one(QUESTION)
    by_chunk = minilm.embed(chunks) @ question
    assert int(np.argmax(by_chunk)) == len(chunks) - 1
    assert hits[0].similarity == pytest.approx(float(by_chunk.max()), abs=1e-4)
    assert float(minilm.embed_one(DIARY) @ question) < services.similarity_floor(minilm)
    # The index alone returns it once too, though every chunk of it is nearer than the facts.
    found = [m for m, _ in index.vector_search(question, scope=index.Scope(owner_ids=(alice.pk, index.SHARED)), k=7)]
    assert found[0] == long.pk and len(found) == len(set(found)) == 7


def test_a_prompt_with_no_room_for_a_long_memory_gets_the_passage_that_answers_not_its_beginning(db, minilm):
    alice = UserFactory(username="alice")
    long = remember(DIARY, owner=alice)

    [hit] = services.search_memories(QUESTION, user=alice, limit=1)
    assert hit.memory == long and "hollow stone frog" in hit.passage and len(hit.passage) < len(DIARY) / 3
    context = services.get_memory_context(QUESTION, user=alice, max_tokens=400)
    assert "hollow stone frog next to the rain barrel" in context
    assert "On day 1 we left" not in context and len(context) <= 400 * 4
    # With room for all of it, the memory goes in whole.
    assert " ".join(DIARY.split()) in services.get_memory_context(QUESTION, user=alice, max_tokens=5000)


@pytest.mark.parametrize("name", ["minilm", "hashed"])
def test_chunks_overlap_so_a_sentence_a_cut_goes_through_is_whole_in_the_next_chunk(request, name):
    if name == "minilm":
        embedder: Embedder = request.getfixturevalue("minilm")
        size, overlap = embedder.chunk_size, embedder.chunk_overlap  # type: ignore[attr-defined]

        def units(text: str) -> int:
            return word_pieces(embedder, text)

    else:
        embedder = HashedNgramEmbedder()
        size, overlap = embedder.chunk_window.size, embedder.chunk_window.overlap

        def units(text: str) -> int:
            return len(text.split())

    chunks = embedder.chunk_texts([DIARY])[0]
    assert len(chunks) > 5
    spans: list[tuple[int, int]] = []
    for chunk in chunks:
        start = DIARY.index(chunk, spans[-1][0] + 1 if spans else 0)
        spans.append((start, start + len(chunk)))
    assert spans[0][0] == 0 and spans[-1][1] == len(DIARY)
    for (start, end), (next_start, next_end) in itertools.pairwise(spans):
        assert start < next_start < end < next_end, "each chunk begins inside the one before and ends after it"
        assert 0 < units(DIARY[next_start:end]) <= overlap
    for start, end in spans:
        assert units(DIARY[start:end]) <= size
        assert (start == 0 or DIARY[start - 1].isspace()) and (end == len(DIARY) or DIARY[end].isspace())

    sentences = [(m.start(), m.end()) for m in re.finditer(r"[^.!?\s][^.!?]*[.!?]", DIARY)]
    cut_through = [(s, e) for s, e in sentences if any(s < end < e for _, end in spans)]
    assert cut_through, "the window cuts through some sentences"
    for s, e in sentences:
        assert any(start <= s and e <= end for start, end in spans), DIARY[s:e]
    # Chunks after the first begin as sentences do.
    assert all(DIARY[start - 2 : start - 1] in ".!?\n" for start, _ in spans[1:])


@pytest.mark.parametrize("name", ["minilm", "hashed"])
def test_chunking_takes_odd_texts_in_its_stride_and_the_longest_memory_fits_the_index(request, name):
    embedder: Embedder = request.getfixturevalue("minilm") if name == "minilm" else HashedNgramEmbedder()
    one_long_word = ".".join(["abc"] * 2000)  # hundreds of word pieces and no whitespace to cut at
    assert embedder.chunk_texts([]) == []
    assert embedder.chunk_texts(["", " \n ", one_long_word]) == [[""], [" \n "], [one_long_word]]
    with pytest.raises(TypeError, match="embed_one"):
        embedder.chunk_texts(DIARY)  # type: ignore[arg-type]
    # The most chunks a memory can have: CONTENT_MAX characters of one-letter words.
    assert len(embedder.chunk_texts(["a " * (services.CONTENT_MAX // 2)])[0]) < index.CHUNKS_MAX


def test_a_memory_within_the_window_is_one_chunk_with_the_vector_it_always_had(db, minilm):
    short = FACTS[0]
    # More word pieces than a chunk of a long memory holds (200), fewer than the model reads (254).
    notes = [f"Note {n}: the spare fuse for circuit {n} is in the kitchen drawer." for n in range(1, 40)]
    fits = " ".join(notes[:16])
    too_long = " ".join(notes[:17])
    assert 200 < word_pieces(minilm, fits) <= 254 < word_pieces(minilm, too_long)
    assert minilm.chunk_texts([short, fits]) == [[short], [fits]]
    assert len(minilm.chunk_texts([too_long])[0]) == 2

    for text in (short, fits):
        [vector] = chunk_vectors(remember(text))
        np.testing.assert_allclose(vector, minilm.embed_one(text), atol=1e-6)
    assert len(chunk_vectors(remember(too_long))) == 2


def test_forgetting_a_long_memory_takes_every_chunk_out_of_the_index(db, minilm):
    alice = UserFactory(username="alice")
    long = remember(DIARY, owner=alice)
    kept = remember("The bike shed's padlock code is written in the address book.", owner=alice)
    assert index_rows()[0] > 2

    services.forget(memory_id=long.pk, actor=alice, reason="The trip is over.")
    assert len(chunk_vectors(long)) == 0
    assert set(index_rows()) == {1}
    assert long.pk not in [h.memory.pk for h in services.search_memories(QUESTION, user=alice, limit=50)]
    everyone = index.vector_search(minilm.embed_one(QUESTION), scope=index.Scope(owner_ids=None), k=10)
    assert [m for m, _ in everyone] == [kept.pk]


def test_another_users_long_private_memory_never_comes_back_by_any_of_its_chunks(db, minilm):
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    bobs = remember(DIARY, owner=bob)
    remember("The code of the bike shed's padlock is in my address book.", owner=alice)
    remember("The recycling goes out on Tuesday evenings.")

    for_alice = services.search_memories(QUESTION, user=alice, limit=50)
    assert for_alice and bobs.pk not in [h.memory.pk for h in for_alice]
    visible = index.Scope(owner_ids=services.visible_owner_ids(alice))
    assert bobs.pk not in [m for m, _ in index.vector_search(minilm.embed_one(QUESTION), scope=visible, k=50)]
    assert "stone frog" not in services.get_memory_context(QUESTION, user=alice)
    assert services.search_memories(QUESTION, user=bob)[0].memory == bobs


def test_a_long_shared_memory_made_public_is_found_by_its_last_chunk_and_only_while_public(db, minilm):
    staff = StaffFactory(username="keeper")
    shared = remember(DIARY)
    stranger = AnonymousUser()
    assert services.search_memories(QUESTION, user=stranger, public_only=True) == []

    services.memory_set_public(memory_id=shared.pk, public=True, actor=staff)
    # Found by its last chunk, the only one above the floor: every chunk moved to the public key.
    [hit] = services.search_memories(QUESTION, user=stranger, public_only=True)
    assert hit.memory.pk == shared.pk
    assert hit.similarity == pytest.approx(float(chunk_vectors(shared)[-1] @ minilm.embed_one(QUESTION)), abs=1e-5)

    services.memory_set_public(memory_id=shared.pk, public=False, actor=staff)
    assert services.search_memories(QUESTION, user=stranger, public_only=True) == []
    assert services.search_memories(QUESTION, user=staff)[0].memory.pk == shared.pk


def test_reindex_re_embeds_every_chunk_of_a_long_memory(db, embedder_backend):
    embedder_backend("hashed")
    long = remember(DIARY)
    hashed_chunks = HashedNgramEmbedder().chunk_texts([DIARY])[0]
    assert len(chunk_vectors(long)) == len(hashed_chunks)

    embedder_backend("minilm")
    out = StringIO()
    call_command("memory_reindex", stdout=out, stderr=StringIO())
    assert "Re-embedded 1 memory." in out.getvalue()
    minilm = get_embedder()
    chunks = minilm.chunk_texts([DIARY])[0]
    assert len(chunks) != len(hashed_chunks)
    np.testing.assert_allclose(chunk_vectors(long), minilm.embed(chunks), atol=1e-5)
    assert services.search_memories(QUESTION, user=StaffFactory())[0].memory == long


def test_long_memories_alike_in_their_beginning_or_their_subject_are_kept_and_a_copy_is_a_duplicate(db, minilm):
    alice = UserFactory(username="alice")
    first = remember(DIARY, owner=alice)
    same_beginning = "\n\n".join([*DIARY.split("\n\n")[:4], *diary(10, seed=3)])
    same_subject = "\n\n".join(diary(14, seed=2))
    copy = DIARY.replace("water the tomatoes", "water the tomato plants")
    same_subject_copy = same_subject.replace(".", "!", 1)

    stored = services.store_memories(
        [services.NewMemory(text, "document", "test", owner=alice) for text in (same_beginning, same_subject, copy)]
        + [services.NewMemory(same_subject_copy, "document", "test", owner=alice)]
    )
    assert [s.created for s in stored] == [True, True, False, False]
    assert stored[2].duplicate == "near" and stored[2].memory == first
    assert stored[3].duplicate == "near" and stored[3].memory == stored[1].memory

    # What comparing the first chunks, or the chunks' means, would have said (services._find_duplicates).
    diary_chunks, beginning_chunks, subject_chunks = (
        minilm.embed(minilm.chunk_texts([text])[0]) for text in (DIARY, same_beginning, same_subject)
    )
    assert float(diary_chunks[0] @ beginning_chunks[0]) > 0.99
    means = [c.mean(axis=0) / np.linalg.norm(c.mean(axis=0)) for c in (diary_chunks, subject_chunks)]
    assert float(means[0] @ means[1]) > 0.95


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def test_a_search_returns_k_memories_each_once_when_the_chunks_of_one_crowd_the_top(db):
    rng = np.random.default_rng(5)
    query = unit(rng.normal(size=index.DIMENSIONS))
    # One memory of 60 chunks, all nearer the query than any of 30 memories of one chunk, themselves farther and
    # farther away.
    crowd = unit(query + rng.normal(scale=0.02, size=(60, index.DIMENSIONS)))
    others = unit(query + rng.normal(size=(30, index.DIMENSIONS)) * np.linspace(0.05, 0.3, 30)[:, None])
    index.index_add(
        [index.IndexRow(1, crowd[0], "crowd", 1, "fact", None, chunks=tuple(crowd[1:]))]
        + [index.IndexRow(i + 2, v, f"memory {i + 2}", 1, "fact", None) for i, v in enumerate(others)]
    )
    hits = index.vector_search(query, scope=index.Scope(owner_ids=(1,)), k=10)
    ids = [m for m, _ in hits]
    assert len(ids) == len(set(ids)) == 10
    assert hits[0] == (1, pytest.approx(float(np.max(crowd @ query)), abs=1e-5))
    assert ids[1:] == [int(i) + 2 for i in np.argsort(-(others @ query))[:9]]


def _index_as_before_chunks(memories: list[MemoryEntry], vectors: np.ndarray) -> None:
    """Index rows as migration 0003 left them: one vector per memory, keyed by its id."""
    postgres = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        if postgres:
            cursor.executemany(
                "INSERT INTO memory_vectors (memory_id, embedding, owner_id, context_type, agent_id) "
                "VALUES (%s, %s::vector, 0, 'document', 0)",
                [(m.pk, "[" + ",".join(map(str, v)) + "]") for m, v in zip(memories, vectors, strict=True)],
            )
            cursor.executemany(
                "INSERT INTO memory_fts (memory_id, document, owner_id, context_type, agent_id) "
                "VALUES (%s, to_tsvector('english', %s), 0, 'document', 0)",
                [(m.pk, m.content) for m in memories],
            )
            return
        cursor.executemany(
            "INSERT INTO memory_vectors (memory_id, embedding) VALUES (%s, %s)",
            [(m.pk, v.tobytes()) for m, v in zip(memories, vectors, strict=True)],
        )
        cursor.executemany(
            "INSERT INTO memory_codes (memory_id, owner_id, code, context_type, agent_id) "
            "VALUES (%s, 0, vec_bit(%s), 'document', 0)",
            [(m.pk, c.tobytes()) for m, c in zip(memories, index.codes(vectors), strict=True)],
        )
        cursor.executemany(
            "INSERT INTO memory_fts (rowid, content, owner_id, context_type, agent_id) "
            "VALUES (%s, %s, 0, 'document', 0)",
            [(m.pk, m.content) for m in memories],
        )


def test_memories_indexed_before_chunks_keep_their_vectors_and_reindex_embeds_the_long_ones_in_chunks(
    transactional_db, minilm
):
    chunked = remember(DIARY)
    first_chunk = chunk_vectors(chunked)[0]
    executor = MigrationExecutor(connection)
    executor.migrate([("memory", "0003_public_memories_and_private_permission")])
    try:
        # Back before chunks: each memory keeps its first chunk's vector, under its own id.
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT embedding{'::text' if connection.vendor == 'postgresql' else ''} FROM memory_vectors "
                "WHERE memory_id = %s",
                [chunked.pk],
            )
            [(kept,)] = cursor.fetchall()
        kept = (
            np.array(kept.strip("[]").split(","), dtype=np.float32)
            if isinstance(kept, str)
            else np.frombuffer(kept, dtype=np.float32)
        )
        np.testing.assert_allclose(kept, first_chunk, atol=1e-6)
        # Stored then: one vector of each memory as the model read it (a long one's first 256 word pieces).
        short_text, long_text = FACTS[1], DIARY.replace("stone frog", "clay frog")
        old = [
            MemoryEntry.objects.create(
                content=text,
                source="test",
                context_type="document",
                embedding_model=minilm.name,
                embedding_dimensions=index.DIMENSIONS,
                content_hash=services.content_hash(text),
            )
            for text in (short_text, long_text)
        ]
        old_vectors = minilm.embed([short_text, long_text])
        _index_as_before_chunks(old, old_vectors)
    finally:
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes("memory"))

    short, long, chunked = (MemoryEntry.objects.get(pk=m.pk) for m in (*old, chunked))
    assert short.embedding_model == minilm.name
    assert long.embedding_model == chunked.embedding_model == f"{minilm.name} (unchunked)"
    for memory, vector in [(short, old_vectors[0]), (long, old_vectors[1]), (chunked, first_chunk)]:
        [only] = chunk_vectors(memory)
        np.testing.assert_allclose(only, vector, atol=1e-6)
    staff = StaffFactory(username="keeper")
    assert services.search_memories("How often does the Wi-Fi password change?", user=staff)[0].memory == short

    out = StringIO()
    call_command("memory_reindex", stdout=out, stderr=StringIO())
    assert "Re-embedded 2 memories." in out.getvalue()
    chunks = len(minilm.chunk_texts([DIARY])[0])
    for memory in (long, chunked):
        memory.refresh_from_db()
        assert memory.embedding_model == minilm.name
        assert len(chunk_vectors(memory)) == chunks
    assert {h.memory for h in services.search_memories(QUESTION, user=staff, limit=2)} == {long, chunked}
