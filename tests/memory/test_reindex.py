from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from apps.memory import services
from apps.memory.embeddings import HashedNgramEmbedder, get_embedder
from apps.memory.models import MemoryEntry
from tests.factories import StaffFactory
from tests.memory.test_store import FACTS, PARAPHRASES


def vector_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM memory_vectors")
        return int(cursor.fetchone()[0])


def test_reindex_re_embeds_the_rows_of_another_model_and_search_uses_the_new_vectors(db, embedder_backend):
    embedder_backend("hashed")
    services.store_memories([services.NewMemory(f, "fact", "test") for f in FACTS])
    forgotten = services.store_memory(content="An old note to forget.", context_type="fact", source="test")
    services.forget(memory_id=forgotten.memory.pk, actor=StaffFactory(username="keeper"), reason="stale")
    assert set(MemoryEntry.objects.values_list("embedding_model", flat=True)) == {HashedNgramEmbedder.name}

    embedder_backend("minilm")
    out, err = StringIO(), StringIO()
    call_command("memory_reindex", stdout=out, stderr=err)
    current = get_embedder().name
    assert f"Re-embedded {len(FACTS)} memories." in out.getvalue()
    assert f"{len(FACTS)}/{len(FACTS)}" in err.getvalue()
    live = MemoryEntry.objects.filter(deleted_at__isnull=True)
    assert set(live.values_list("embedding_model", flat=True)) == {current}
    assert MemoryEntry.objects.get(pk=forgotten.memory.pk).embedding_model == HashedNgramEmbedder.name
    assert vector_count() == len(FACTS)
    question, expected = PARAPHRASES[0]
    assert services.search_memories(question, user=StaffFactory(username="asker"))[0].memory.content == expected

    again = StringIO()
    call_command("memory_reindex", stdout=again)
    assert "Nothing to re-embed." in again.getvalue()


def test_reindex_refuses_a_batch_size_below_one(db):
    with pytest.raises(CommandError, match="at least 1"):
        call_command("memory_reindex", "--batch-size", "0")
