"""SQLite: the vector index becomes two tables, for a search that stays fast at 100,000 memories (see
apps.memory.index): `memory_codes`, a vec0 table of 1,152-bit thermometer codes partitioned by owner, and
`memory_vectors`, now a plain table of float32 vectors for the exact re-ranking. Existing vectors are carried
over. PostgreSQL keeps its pgvector table and HNSW index: nothing to do there."""

import numpy as np
from django.db import migrations, models

# Fixed here: a migration must not change when the code does (the same values as apps.memory.index).
DIMENSIONS = 384
THRESHOLDS = np.array([-0.8416212, 0.0, 0.8416212], dtype=np.float32) / np.float32(np.sqrt(DIMENSIONS))
BATCH = 1000

CODES_TABLE = f"""CREATE VIRTUAL TABLE memory_codes USING vec0(
    memory_id integer primary key,
    owner_id integer partition key,
    code bit[{DIMENSIONS * len(THRESHOLDS)}],
    context_type text,
    agent_id integer
)"""
OLD_VECTORS_TABLE = f"""CREATE VIRTUAL TABLE memory_vectors USING vec0(
    memory_id integer primary key,
    embedding float[{DIMENSIONS}] distance_metric=cosine,
    owner_id integer,
    context_type text,
    agent_id integer
)"""


def _codes(blobs):
    v = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(-1, DIMENSIONS)
    return np.packbits(np.concatenate([v > t for t in THRESHOLDS], axis=1), axis=1)


def two_pass_index(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("CREATE TABLE memory_vectors_plain (memory_id INTEGER PRIMARY KEY, embedding BLOB NOT NULL)")
        cursor.execute(CODES_TABLE)
        last = 0
        while True:
            cursor.execute(
                "SELECT memory_id, embedding, owner_id, context_type, agent_id FROM memory_vectors "
                "WHERE memory_id > %s ORDER BY memory_id LIMIT %s",
                [last, BATCH],
            )
            rows = cursor.fetchall()
            if not rows:
                break
            cursor.executemany(
                "INSERT INTO memory_vectors_plain (memory_id, embedding) VALUES (%s, %s)", [r[:2] for r in rows]
            )
            cursor.executemany(
                "INSERT INTO memory_codes (memory_id, owner_id, code, context_type, agent_id) "
                "VALUES (%s, %s, vec_bit(%s), %s, %s)",
                [
                    (m, o, c.tobytes(), t, a)
                    for (m, _, o, t, a), c in zip(rows, _codes([r[1] for r in rows]), strict=True)
                ],
            )
            last = rows[-1][0]
        cursor.execute("DROP TABLE memory_vectors")
        cursor.execute("ALTER TABLE memory_vectors_plain RENAME TO memory_vectors")


def one_pass_index(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("ALTER TABLE memory_vectors RENAME TO memory_vectors_plain")
        cursor.execute(OLD_VECTORS_TABLE)
        cursor.execute(
            "INSERT INTO memory_vectors (memory_id, embedding, owner_id, context_type, agent_id) "
            "SELECT v.memory_id, v.embedding, c.owner_id, c.context_type, c.agent_id "
            "FROM memory_vectors_plain v JOIN memory_codes c ON c.memory_id = v.memory_id"
        )
        cursor.execute("DROP TABLE memory_vectors_plain")
        cursor.execute("DROP TABLE memory_codes")


class Migration(migrations.Migration):
    dependencies = [("memory", "0001_initial")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="MemoryCode",
                    fields=[("memory_id", models.BigIntegerField(primary_key=True, serialize=False))],
                    options={"db_table": "memory_codes", "default_permissions": ()},
                ),
            ],
            database_operations=[migrations.RunPython(two_pass_index, one_pass_index)],
        ),
    ]
