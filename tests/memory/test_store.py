"""Storing, finding and forgetting memories with the real embedding model and the real search index."""

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction

from apps.events.models import Event
from apps.memory import services
from apps.memory.embeddings import get_embedder
from apps.memory.models import MemoryEntry
from tests.factories import StaffFactory, UserFactory

FACTS = [
    "Alice's favourite programming language is Rust.",
    "The office Wi-Fi password changes every Monday morning.",
    "Timmy's Lightning node runs on a Raspberry Pi in the garage.",
    "The quarterly report is due on the fifteenth of March.",
    "Bob is allergic to peanuts.",
    "Backups of the database are copied to an external disk every night.",
]
PARAPHRASES = [
    ("Which coding language does Alice like best?", FACTS[0]),
    ("When must the figures for the quarter be handed in?", FACTS[3]),
    ("Where is the Lightning node hosted?", FACTS[2]),
    ("What food must Bob avoid?", FACTS[4]),
    ("How often is the database backed up?", FACTS[5]),
]


def fact(content: str, owner=None, **fields) -> services.Stored:
    return services.store_memory(content=content, context_type="fact", source="test", owner=owner, **fields)


def index_count(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return int(cursor.fetchone()[0])


def index_counts() -> tuple[int, ...]:
    """Rows in each index table: vectors, keywords, and on SQLite the vectors' codes."""
    tables = ["memory_vectors", "memory_fts"] + (["memory_codes"] if connection.vendor == "sqlite" else [])
    return tuple(index_count(t) for t in tables)


@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


@pytest.fixture
def bob(db):
    return UserFactory(username="bob")


@pytest.mark.parametrize(("question", "expected"), PARAPHRASES)
def test_a_paraphrased_question_finds_the_fact_it_asks_about(db, alice, question, expected):
    for content in FACTS:
        fact(content)
    [best, *_] = services.search_memories(question, user=alice, limit=3)
    assert best.memory.content == expected
    assert best.similarity is not None and best.score > 0


def test_storing_records_the_embedder_and_logs_an_event_without_the_content(db, alice):
    stored = fact("My bank PIN is 4321.", owner=alice)
    memory = stored.memory
    assert stored.created and memory.embedding_dimensions == 384 and memory.embedding_model
    [event] = Event.objects.filter(event_type="memory.stored")
    assert event.data["memory_id"] == memory.pk and event.data["shared"] is False
    assert "4321" not in str(event.data)


def test_another_users_private_memory_is_never_found_even_as_the_best_match(db, alice, bob):
    fact("Alice's bank PIN is 4321.", owner=alice)
    fact("Banks are closed on public holidays.")
    for_bob = services.search_memories("Alice's bank PIN", user=bob)
    assert [h.memory.content for h in for_bob] == ["Banks are closed on public holidays."]
    for_alice = services.search_memories("Alice's bank PIN", user=alice)
    assert for_alice[0].memory.content == "Alice's bank PIN is 4321."
    assert services.get_memory_context("Alice's bank PIN", user=bob).count("4321") == 0


def test_staff_without_the_permission_cannot_ask_for_everyones_memories(db, alice):
    fact("Alice's bank PIN is 4321.", owner=alice)
    staff = StaffFactory()
    assert services.search_memories("bank PIN", user=staff) == []
    for ask in (services.search_memories, services.get_memory_context):
        with pytest.raises(services.MemoryNotAllowed, match="Can read other users' private memories"):
            ask("bank PIN", user=staff, all_users=True)


@pytest.mark.parametrize("persona", ["granted staff", "superuser"])
def test_users_who_may_read_private_memories_see_everyones_only_when_they_ask(db, alice, private_reader, persona):
    fact("Alice's bank PIN is 4321.", owner=alice)
    reader = private_reader if persona == "granted staff" else UserFactory(is_staff=True, is_superuser=True)
    assert services.search_memories("bank PIN", user=reader) == []
    [hit] = services.search_memories("bank PIN", user=reader, all_users=True)
    assert hit.memory.owner == alice
    assert "4321" in services.get_memory_context("bank PIN", user=reader, all_users=True)


def test_strangers_get_only_public_memories_and_a_limit_of_five_returns_five_of_them(db, alice):
    # Shared and private memories that match far better than the public ones: none of them may come back.
    services.store_memories(
        [services.NewMemory(f"Project Bluebird budget note {n}: 40,000 sats.", "fact", "test") for n in range(8)]
        + [services.NewMemory(f"Alice's Bluebird budget draft {n}.", "fact", "test", owner=alice) for n in range(8)],
        keep_both=True,
    )
    public = services.store_memories(
        [
            services.NewMemory(f"Public note {n}: Timmy answers questions about budgets.", "fact", "test", public=True)
            for n in range(7)
        ],
        keep_both=True,
    )
    hits = services.search_memories("Project Bluebird budget", user=AnonymousUser(), public_only=True, limit=5)
    assert len(hits) == 5
    assert {h.memory.pk for h in hits} <= {s.memory.pk for s in public}
    context = services.get_memory_context("Project Bluebird budget", user=alice, public_only=True)
    assert "Bluebird" not in context and "Public note" in context
    # Everyone else still sees the public memories among the shared ones.
    assert public[0].memory in [h.memory for h in services.search_memories("Public note 0", user=alice)]


def test_a_fresh_install_gives_strangers_no_memories(db, alice):
    fact("The shared Wi-Fi password is hunter2.")
    fact("Alice's Wi-Fi note.", owner=alice)
    assert services.get_memory_context("Wi-Fi password", user=AnonymousUser(), public_only=True) == ""


def test_a_public_memory_must_be_shared(db, alice):
    with pytest.raises(services.InvalidMemory, match="must be shared"):
        fact("Alice's public diary.", owner=alice, public=True)
    assert not MemoryEntry.objects.exists()
    with pytest.raises(IntegrityError), transaction.atomic():
        MemoryEntry.objects.filter(pk=fact("Alice's diary.", owner=alice).memory.pk).update(public=True)


def test_marking_a_memory_public_and_back_moves_it_in_and_out_of_the_strangers_scope(db, alice):
    staff = StaffFactory(username="ops")
    memory = fact("Timmy's Lightning node is called Sparky.", agent_id=None).memory
    stranger = {"user": AnonymousUser(), "public_only": True}
    assert services.search_memories("node name", **stranger) == []
    marked = services.memory_set_public(memory_id=memory.pk, public=True, actor=staff)
    assert marked.public
    assert [h.memory.pk for h in services.search_memories("Lightning node Sparky", **stranger)] == [memory.pk]
    assert [h.memory.pk for h in services.search_memories("Lightning node Sparky", user=alice)] == [memory.pk]
    with pytest.raises(services.MemoryUnchanged, match="already public"):
        services.memory_set_public(memory_id=memory.pk, public=True, actor=staff)
    services.memory_set_public(memory_id=memory.pk, public=False, actor=staff)
    assert services.search_memories("Lightning node Sparky", **stranger) == []
    assert [h.memory.pk for h in services.search_memories("Lightning node Sparky", user=alice)] == [memory.pk]
    events = Event.objects.filter(event_type__in=["memory.published", "memory.unpublished"]).order_by("id")
    assert [(e.event_type, e.data["by"]) for e in events] == [
        ("memory.published", "ops"),
        ("memory.unpublished", "ops"),
    ]


def test_only_a_live_shared_memory_can_be_made_public_and_only_by_staff(db, alice):
    staff = StaffFactory(username="ops")
    own = fact("Ops's own note.", owner=staff).memory
    theirs = fact("Alice's note.", owner=alice).memory
    shared = fact("A shared note.").memory
    with pytest.raises(services.MemoryNotShared):
        services.memory_set_public(memory_id=own.pk, public=True, actor=staff)
    with pytest.raises(services.MemoryNotFound):
        services.memory_set_public(memory_id=theirs.pk, public=True, actor=staff)
    with pytest.raises(services.MemoryNotAllowed):
        services.memory_set_public(memory_id=shared.pk, public=True, actor=alice)
    services.forget(memory_id=shared.pk, actor=staff, reason="old")
    with pytest.raises(services.MemoryAlreadyForgotten):
        services.memory_set_public(memory_id=shared.pk, public=True, actor=staff)
    assert not MemoryEntry.objects.filter(public=True).exists()
    assert not Event.objects.filter(event_type="memory.published").exists()


def test_storing_as_public_what_is_known_as_shared_makes_the_known_memory_public(db):
    known = fact("The node's alias is Sparky.").memory
    again = fact("the node's ALIAS is Sparky.", public=True)
    assert (again.created, again.duplicate, again.published, again.memory.pk) == (False, "exact", True, known.pk)
    assert MemoryEntry.objects.get(pk=known.pk).public
    stranger = services.search_memories("node alias", user=AnonymousUser(), public_only=True)
    assert [h.memory.pk for h in stranger] == [known.pk]
    # Within one batch: the first of two duplicates becomes public when the second asks to be.
    batch = services.store_memories(
        [
            services.NewMemory("Carol waters the plants on Fridays.", "fact", "test"),
            services.NewMemory("carol waters the plants on fridays.", "fact", "test", public=True),
        ]
    )
    assert batch[0].created and batch[0].memory.public and batch[1].memory.pk == batch[0].memory.pk


def test_a_limit_of_five_returns_five_visible_memories_when_hidden_ones_match_better(db, alice, bob):
    # Near-duplicates on purpose: keep them all.
    private = [f"Alice's secret garden plan number {n}: tomatoes by the fence." for n in range(10)]
    shared = [f"Shared gardening note {n}: water plants early in the day." for n in range(6)]
    services.store_memories([services.NewMemory(c, "fact", "test", owner=alice) for c in private], keep_both=True)
    services.store_memories([services.NewMemory(c, "fact", "test") for c in shared], keep_both=True)
    hits = services.search_memories("Alice's secret garden plan tomatoes", user=bob, limit=5)
    assert len(hits) == 5
    assert all(h.memory.owner is None for h in hits)


def test_an_exact_duplicate_bumps_the_existing_memory_instead_of_storing_it_again(db, alice):
    first = fact("Bob is allergic to peanuts.", owner=alice)
    again = fact("  bob is ALLERGIC to peanuts.  ", owner=alice)
    assert (again.created, again.duplicate, again.memory.pk) == (False, "exact", first.memory.pk)
    assert again.memory.access_count == 1
    # The same words in another scope are another memory.
    assert fact("Bob is allergic to peanuts.").created


def test_a_near_duplicate_is_bumped_unless_asked_to_keep_both(db, alice):
    first = fact("Bob is allergic to peanuts.", owner=alice)
    near = fact("Bob is allergic to peanuts!", owner=alice)
    assert (near.created, near.duplicate, near.memory.pk) == (False, "near", first.memory.pk)
    kept = services.store_memory(
        content="Bob is allergic to peanuts!", context_type="fact", source="test", owner=alice, keep_both=True
    )
    assert kept.created and kept.memory.pk != first.memory.pk


def test_duplicates_within_one_batch_are_stored_once(db, alice):
    stored = services.store_memories(
        [
            services.NewMemory("Carol waters the plants on Fridays.", "fact", "test", owner=alice),
            services.NewMemory("carol waters the plants on fridays.", "fact", "test", owner=alice),
            services.NewMemory("Carol waters the plants every Friday.", "fact", "test", owner=alice),
            services.NewMemory("Carol waters the plants on Fridays.", "fact", "test"),
        ]
    )
    assert [(s.created, s.duplicate) for s in stored] == [(True, ""), (False, "exact"), (False, "near"), (True, "")]
    assert stored[1].memory.pk == stored[2].memory.pk == stored[0].memory.pk != stored[3].memory.pk
    assert stored[2].memory.access_count == 2
    assert MemoryEntry.objects.count() == 2
    assert Event.objects.filter(event_type="memory.stored").count() == 2


def test_forgetting_keeps_the_row_with_its_reason_and_removes_it_from_every_search(db, alice, bob, private_reader):
    memory = fact("Alice parks in bay 7.", owner=alice).memory
    assert set(index_counts()) == {1}
    with pytest.raises(services.MemoryNotFound):
        services.forget(memory_id=memory.pk, actor=bob, reason="not mine")
    # Reading another user's private memory is not forgetting it.
    with pytest.raises(services.MemoryNotAllowed, match="only its owner"):
        services.forget(memory_id=memory.pk, actor=private_reader, reason="not mine either")
    forgotten = services.forget(memory_id=memory.pk, actor=alice, reason="I moved house")
    assert forgotten.deleted_reason == "I moved house" and forgotten.is_deleted
    assert set(index_counts()) == {0}
    assert services.search_memories("where does Alice park", user=alice) == []
    with pytest.raises(services.MemoryAlreadyForgotten):
        services.forget(memory_id=memory.pk, actor=alice, reason="again")
    assert MemoryEntry.objects.filter(pk=memory.pk).exists()


def test_the_context_is_packed_into_the_token_budget(db, alice):
    for content in FACTS:
        fact(content)
    context = services.get_memory_context("Alice programming language", user=alice, max_tokens=30)
    assert context.startswith("- [fact, ") and "Rust" in context
    assert len(context) <= 30 * 4
    assert services.get_memory_context("anything", user=alice, max_tokens=0) == ""


def test_bad_input_is_refused_with_a_reason(db, alice):
    with pytest.raises(services.InvalidMemory, match="empty"):
        fact("   ", owner=alice)
    with pytest.raises(services.InvalidMemory, match="Unknown context type"):
        services.store_memory(content="x", context_type="rumour", source="test")
    with pytest.raises(services.InvalidMemory, match="why"):
        services.forget(memory_id=fact("x y z", owner=alice).memory.pk, actor=alice, reason=" ")
    # Query syntax in the words is searched for, never parsed.
    [hit] = services.search_memories('"x AND (y NEAR', user=alice)
    assert hit.memory.content == "x y z"


def test_the_index_tables_are_emptied_by_a_flush(transactional_db, alice):
    for content in FACTS:
        fact(content)
    assert set(index_counts()) == {len(FACTS)}
    call_command("flush", interactive=False, verbosity=0)
    assert set(index_counts()) == {0}


def test_a_question_about_nothing_remembered_finds_nothing_and_puts_nothing_in_the_prompt(db, alice):
    for content in FACTS:
        fact(content, owner=alice)
    # Every memory shares a word or two with these ("the", "is", "who"), and the old search returned five each.
    for question in ("Who painted the Mona Lisa?", "How many moons does Jupiter have?"):
        assert services.search_memories(question, user=alice) == []
        assert services.get_memory_context(question, user=alice) == ""


def test_a_memory_sharing_words_but_not_meaning_with_the_question_is_not_returned(db, alice):
    fact("Alice's favourite programming language is Rust.", owner=alice)
    fact("The bike chain has rust on it and needs oil.", owner=alice)
    hits = services.search_memories("Which programming language does Alice like?", user=alice)
    assert [h.memory.content for h in hits] == ["Alice's favourite programming language is Rust."]
    assert all(h.similarity >= services.similarity_floor(get_embedder()) for h in hits)


def test_a_memory_holding_every_word_of_a_name_comes_first(db, alice):
    fact("The 3D printer is a Prusa MK4 and uses PETG for outdoor parts.", owner=alice)
    fact("The label printer in the office is a Brother QL-800.", owner=alice)
    fact("Printing in PLA works for parts that stay indoors.", owner=alice)
    [best, *_] = services.search_memories("Prusa MK4", user=alice)
    assert best.memory.content.startswith("The 3D printer is a Prusa MK4")
    # Found by its words, it is still ranked by its meaning too: the cosine is always there.
    assert best.score > best.similarity > 0


def test_the_similarity_floor_follows_the_setting_over_the_embedders(db, alice, settings):
    fact("Timmy's Lightning node runs on a Raspberry Pi in the garage.", owner=alice)
    assert services.similarity_floor(get_embedder()) == get_embedder().similarity_floor
    settings.MEMORY_SIMILARITY_FLOOR = 0.99
    assert services.search_memories("Where is the Lightning node hosted?", user=alice) == []
    settings.MEMORY_SIMILARITY_FLOOR = -1.0
    assert len(services.search_memories("How do bees make honey?", user=alice)) == 1
