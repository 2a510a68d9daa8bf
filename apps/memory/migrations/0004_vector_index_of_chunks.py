"""Long memories are embedded in chunks (apps.memory.embeddings.chunk_texts): the vector index holds a row per chunk.

SQLite: `memory_vectors` and `memory_codes` are keyed by chunk, memory id << 10 | chunk number (apps.memory.index),
so both are rebuilt: each memory's vector becomes its chunk 0, with its code and scope as they were. PostgreSQL:
`memory_vectors` gains a `chunk` column, 0 for every row there, and the key (memory_id, chunk).

No model is loaded here, so nothing is embedded. A memory that fits its embedder's window is one chunk, whose
vector is the one it has: it is done. One that may not fit keeps its vector (of its beginning, as before) as its
only chunk, so it is still found as before, and is marked stale: " (unchunked)" is appended to its
embedding_model, so `manage.py memory_reindex` re-embeds it in chunks (the migration says how many there are).
"May not fit": for the hashed embedder, more words than it takes in one chunk; for a model, more characters than
all-MiniLM-L6-v2 takes word pieces, as a word piece is never shorter than a character: a sure bound, so some that
do fit are re-embedded too, to the vector they had.

Backwards: each memory keeps its first chunk's vector, and the stale marks are taken off again.
"""

import re

from django.db import migrations
from django.db.models.functions import Length

# Fixed here: a migration must not change when the code does (the values of apps.memory.index and embeddings).
DIMENSIONS = 384
CODE_BITS = 3 * DIMENSIONS
HASHED_NAME = "hashed-ngram-v1"
HASHED_FITS_WORDS = 200
MODEL_FITS_PIECES = 254
STALE = " (unchunked)"
NAME_MAX = 100
BATCH = 500


def _codes_table(key: str) -> str:
    return f"""CREATE VIRTUAL TABLE memory_codes USING vec0(
        {key} integer primary key,
        owner_id integer partition key,
        code bit[{CODE_BITS}],
        context_type text,
        agent_id integer
    )"""


# A chunk's key: memory id << 10 | chunk number (index.CHUNK_BITS is 10). It is computed from the old key alone,
# so the vector and the code of a memory stay together. vec0 (0.1.9) can neither rename a table nor change a key:
# the codes go through a plain copy. (Not sorted on the way back: a sort loses vec_bit's mark of a bit vector.)
SQLITE_CHUNKS = [
    "CREATE TABLE memory_vectors_rekeyed (chunk_id INTEGER PRIMARY KEY, embedding BLOB NOT NULL)",
    "INSERT INTO memory_vectors_rekeyed (chunk_id, embedding) "
    "SELECT memory_id << 10, embedding FROM memory_vectors ORDER BY memory_id",
    "DROP TABLE memory_vectors",
    "ALTER TABLE memory_vectors_rekeyed RENAME TO memory_vectors",
    "CREATE TABLE memory_codes_copy AS "
    "SELECT memory_id << 10 AS chunk_id, owner_id, code, context_type, agent_id FROM memory_codes",
    "DROP TABLE memory_codes",
    _codes_table("chunk_id"),
    "INSERT INTO memory_codes (chunk_id, owner_id, code, context_type, agent_id) "
    "SELECT chunk_id, owner_id, vec_bit(code), context_type, agent_id FROM memory_codes_copy",
    "DROP TABLE memory_codes_copy",
]
SQLITE_FIRST_CHUNKS = [
    "CREATE TABLE memory_vectors_rekeyed (memory_id INTEGER PRIMARY KEY, embedding BLOB NOT NULL)",
    "INSERT INTO memory_vectors_rekeyed (memory_id, embedding) "
    "SELECT chunk_id >> 10, embedding FROM memory_vectors WHERE (chunk_id & 1023) = 0 ORDER BY chunk_id",
    "DROP TABLE memory_vectors",
    "ALTER TABLE memory_vectors_rekeyed RENAME TO memory_vectors",
    "CREATE TABLE memory_codes_copy AS "
    "SELECT chunk_id >> 10 AS memory_id, owner_id, code, context_type, agent_id FROM memory_codes "
    "WHERE (chunk_id & 1023) = 0",
    "DROP TABLE memory_codes",
    _codes_table("memory_id"),
    "INSERT INTO memory_codes (memory_id, owner_id, code, context_type, agent_id) "
    "SELECT memory_id, owner_id, vec_bit(code), context_type, agent_id FROM memory_codes_copy",
    "DROP TABLE memory_codes_copy",
]
POSTGRESQL_CHUNKS = [
    "ALTER TABLE memory_vectors ADD COLUMN chunk smallint NOT NULL DEFAULT 0",
    "ALTER TABLE memory_vectors ALTER COLUMN chunk DROP DEFAULT",
    "ALTER TABLE memory_vectors DROP CONSTRAINT memory_vectors_pkey",
    "ALTER TABLE memory_vectors ADD PRIMARY KEY (memory_id, chunk)",
]
POSTGRESQL_FIRST_CHUNKS = [
    "DELETE FROM memory_vectors WHERE chunk > 0",
    "ALTER TABLE memory_vectors DROP CONSTRAINT memory_vectors_pkey",
    "ALTER TABLE memory_vectors DROP COLUMN chunk",
    "ALTER TABLE memory_vectors ADD PRIMARY KEY (memory_id)",
]


def _run(schema_editor, *, sqlite: list[str], postgresql: list[str]) -> None:
    with schema_editor.connection.cursor() as cursor:
        for sql in postgresql if schema_editor.connection.vendor == "postgresql" else sqlite:
            cursor.execute(sql)


def _may_not_fit(name: str, content: str) -> bool:
    if name == HASHED_NAME:
        return len(re.findall(r"\S+", content)) > HASHED_FITS_WORDS
    return len(content) > MODEL_FITS_PIECES


def _stale_name(name: str) -> str:
    return name[: NAME_MAX - len(STALE)] + STALE


def index_chunks(apps, schema_editor):
    _run(schema_editor, sqlite=SQLITE_CHUNKS, postgresql=POSTGRESQL_CHUNKS)
    entry = apps.get_model("memory", "MemoryEntry")
    # Shorter memories fit either embedder's window for sure.
    longer = entry.objects.annotate(length=Length("content")).filter(
        deleted_at__isnull=True, length__gt=MODEL_FITS_PIECES
    )
    stale: dict[str, list[int]] = {}
    for pk, name, content in longer.values_list("pk", "embedding_model", "content").iterator(chunk_size=BATCH):
        if not name.endswith(STALE) and _may_not_fit(name, content):
            stale.setdefault(name, []).append(pk)
    for name, ids in stale.items():
        for first in range(0, len(ids), BATCH):
            entry.objects.filter(pk__in=ids[first : first + BATCH]).update(embedding_model=_stale_name(name))
    if stale:
        count = sum(len(ids) for ids in stale.values())
        # Said where the operator sees it: in migrate's output, before its "OK".
        print(
            f"\n  {count} long memories are still searched by their beginning only: "
            "`manage.py memory_reindex` embeds them in chunks.",
            end="",
        )


def index_first_chunks(apps, schema_editor):
    _run(schema_editor, sqlite=SQLITE_FIRST_CHUNKS, postgresql=POSTGRESQL_FIRST_CHUNKS)
    entry = apps.get_model("memory", "MemoryEntry")
    marked = entry.objects.filter(embedding_model__endswith=STALE)
    for name in set(marked.values_list("embedding_model", flat=True)):
        marked.filter(embedding_model=name).update(embedding_model=name.removesuffix(STALE))


class Migration(migrations.Migration):
    dependencies = [("memory", "0003_public_memories_and_private_permission")]

    # The tables keep their names, so the models that declare them (MemoryVector, MemoryCode: for test flushes)
    # stand as they are; only their rows and keys change.
    operations = [migrations.RunPython(index_chunks, index_first_chunks)]
