"""The memory search index behind one interface: vectors (sqlite-vec `vec0` on SQLite, pgvector HNSW on
PostgreSQL) and keywords (FTS5 on SQLite, tsvector on PostgreSQL), keyed by the memory's id.

Each index row carries the memory's scope (owner, context type, agent), so the visibility filter is part of
the search query itself: a search for 5 returns the 5 best rows the user may see, not 5 rows filtered after.
Only live memories are indexed: forgetting one removes its rows here.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import connection, transaction

DIMENSIONS = 384
# In the index, "nobody" is 0 (vec0 metadata columns cannot be NULL): a shared memory, or no agent.
SHARED = 0
# HNSW looks at this many candidates before filtering; a scoped search that comes back short is redone exactly.
HNSW_EF_SEARCH = 200
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class IndexRow:
    memory_id: int
    vector: np.ndarray
    content: str
    owner_id: int | None
    context_type: str
    agent_id: int | None


@dataclass(frozen=True)
class Scope:
    """Which memories a search may return. owner_ids None: everyone's (staff opting in); otherwise these owners'
    (SHARED for the shared memories)."""

    owner_ids: tuple[int, ...] | None
    context_type: str | None = None
    agent_id: int | None = None


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def _blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def _pg_vector(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(vector, dtype=np.float32)) + "]"


def _scope_sql(scope: Scope) -> tuple[str, list[Any]]:
    """SQL conditions on the index's scope columns (fixed names, values as parameters)."""
    clauses: list[str] = []
    params: list[Any] = []
    if scope.owner_ids is not None:
        clauses.append(f"owner_id IN ({', '.join(['%s'] * len(scope.owner_ids))})")
        params.extend(scope.owner_ids)
    if scope.context_type:
        clauses.append("context_type = %s")
        params.append(scope.context_type)
    if scope.agent_id is not None:
        clauses.append("agent_id = %s")
        params.append(scope.agent_id)
    return "".join(f" AND {c}" for c in clauses), params


def index_add(rows: Sequence[IndexRow]) -> None:
    """Index memories (in the caller's transaction)."""
    if not rows:
        return
    scoped = [(r.memory_id, r.owner_id or SHARED, r.context_type, r.agent_id or SHARED) for r in rows]
    with connection.cursor() as cursor:
        if _postgres():
            cursor.executemany(
                "INSERT INTO memory_vectors (memory_id, embedding, owner_id, context_type, agent_id) "
                "VALUES (%s, %s::vector, %s, %s, %s)",
                [(m, _pg_vector(r.vector), o, c, a) for r, (m, o, c, a) in zip(rows, scoped, strict=True)],
            )
            cursor.executemany(
                "INSERT INTO memory_fts (memory_id, document, owner_id, context_type, agent_id) "
                "VALUES (%s, to_tsvector('english', %s), %s, %s, %s)",
                [(m, r.content, o, c, a) for r, (m, o, c, a) in zip(rows, scoped, strict=True)],
            )
        else:
            cursor.executemany(
                "INSERT INTO memory_vectors (memory_id, embedding, owner_id, context_type, agent_id) "
                "VALUES (%s, %s, %s, %s, %s)",
                [(m, _blob(r.vector), o, c, a) for r, (m, o, c, a) in zip(rows, scoped, strict=True)],
            )
            cursor.executemany(
                "INSERT INTO memory_fts (rowid, content, owner_id, context_type, agent_id) VALUES (%s, %s, %s, %s, %s)",
                [(m, r.content, o, c, a) for r, (m, o, c, a) in zip(rows, scoped, strict=True)],
            )


def index_remove(memory_ids: Sequence[int]) -> None:
    if not memory_ids:
        return
    key = "memory_id" if _postgres() else "rowid"
    with connection.cursor() as cursor:
        # vec0 deletes one row at a time by its primary key; a plain IN works on both engines.
        cursor.executemany("DELETE FROM memory_vectors WHERE memory_id = %s", [(m,) for m in memory_ids])
        cursor.executemany(f"DELETE FROM memory_fts WHERE {key} = %s", [(m,) for m in memory_ids])


def index_replace_vectors(rows: Sequence[tuple[int, np.ndarray]]) -> None:
    """New embeddings for indexed memories (a reindex with another model)."""
    with connection.cursor() as cursor:
        if _postgres():
            cursor.executemany(
                "UPDATE memory_vectors SET embedding = %s::vector WHERE memory_id = %s",
                [(_pg_vector(v), m) for m, v in rows],
            )
        else:
            cursor.executemany(
                "UPDATE memory_vectors SET embedding = %s WHERE memory_id = %s", [(_blob(v), m) for m, v in rows]
            )


def index_vectors(memory_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """The stored vectors of these memories (for near-duplicate checks and re-ranking)."""
    if not memory_ids:
        return {}
    placeholders = ", ".join(["%s"] * len(memory_ids))
    with connection.cursor() as cursor:
        if _postgres():
            cursor.execute(
                f"SELECT memory_id, embedding::text FROM memory_vectors WHERE memory_id IN ({placeholders})",
                list(memory_ids),
            )
            return {m: np.array(text.strip("[]").split(","), dtype=np.float32) for m, text in cursor.fetchall()}
        cursor.execute(
            f"SELECT memory_id, embedding FROM memory_vectors WHERE memory_id IN ({placeholders})", list(memory_ids)
        )
        return {m: np.frombuffer(blob, dtype=np.float32) for m, blob in cursor.fetchall()}


def vector_search(query: np.ndarray, *, scope: Scope, k: int) -> list[tuple[int, float]]:
    """The k nearest memories in scope, as (memory id, cosine similarity), best first."""
    if k < 1 or (scope.owner_ids is not None and not scope.owner_ids):
        return []
    where, params = _scope_sql(scope)
    with transaction.atomic(), connection.cursor() as cursor:  # SET LOCAL lasts until the end of a transaction
        if _postgres():
            vector = _pg_vector(query)
            sql = (
                f"SELECT memory_id, 1 - (embedding <=> %s::vector) FROM memory_vectors WHERE TRUE{where} "
                "ORDER BY embedding <=> %s::vector LIMIT %s"
            )
            cursor.execute(f"SET LOCAL hnsw.ef_search = {int(max(HNSW_EF_SEARCH, k))}")
            cursor.execute(sql, [vector, *params, vector, k])
            hits = cursor.fetchall()
            if len(hits) < k and where:
                # The graph's candidates ran out before k rows passed the filter: scan exactly instead.
                cursor.execute("SET LOCAL enable_indexscan = off")
                cursor.execute(sql, [vector, *params, vector, k])
                hits = cursor.fetchall()
        else:
            cursor.execute(
                f"SELECT memory_id, distance FROM memory_vectors WHERE embedding MATCH %s AND k = %s{where} "
                "ORDER BY distance",
                [_blob(query), k, *params],
            )
            hits = [(m, 1.0 - d) for m, d in cursor.fetchall()]
    return [(int(m), float(s)) for m, s in hits]


def keyword_search(text: str, *, scope: Scope, k: int) -> list[tuple[int, float]]:
    """Memories in scope matching any word of `text`, as (memory id, relevance), best first. The words are
    quoted, so user input is never parsed as query syntax."""
    words = _WORD.findall(text.lower())[:32]
    if k < 1 or not words or (scope.owner_ids is not None and not scope.owner_ids):
        return []
    where, params = _scope_sql(scope)
    with connection.cursor() as cursor:
        if _postgres():
            query = " | ".join(f"'{w}'" for w in words)
            cursor.execute(
                "SELECT memory_id, ts_rank(document, q) FROM memory_fts, to_tsquery('english', %s) q "
                f"WHERE document @@ q{where} ORDER BY 2 DESC, memory_id DESC LIMIT %s",
                [query, *params, k],
            )
        else:
            query = " OR ".join('"' + w.replace('"', "") + '"' for w in words)
            # bm25() is lower for better matches: negate it so larger is better, as on PostgreSQL.
            cursor.execute(
                f"SELECT rowid, -bm25(memory_fts) FROM memory_fts WHERE memory_fts MATCH %s{where} "
                "ORDER BY bm25(memory_fts), rowid DESC LIMIT %s",
                [query, *params, k],
            )
        return [(int(m), float(s)) for m, s in cursor.fetchall()]
