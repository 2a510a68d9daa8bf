"""The memory search index behind one interface, keyed by the memory's id: vectors and keywords.

SQLite: an exact scan of 100,000 float vectors in a vec0 table takes about 30 ms here, so the vectors are
searched in two passes. `memory_codes` (vec0) holds a 1,152-bit thermometer code of each vector: per dimension,
three bits saying whether the coordinate is above -c, 0 and +c (c = 0.84 / sqrt(384), the 20 % and 80 % points
of a unit vector's coordinates), so the Hamming distance between two codes is the L1 distance between the
vectors quantised to four levels. Its KNN (a fast bit scan) gives a few dozen candidates, which are re-ranked
by exact cosine from the float32 vectors in `memory_vectors`, a plain table. The thresholds are constants, not
learned from the data: every process and every database computes the same code for the same vector, and
nothing drifts as memories come and go. bench/memory.py measures the latency and recall@10 against exact search.
Keywords: FTS5.

PostgreSQL: a pgvector table with an HNSW index; keywords in a tsvector table with a GIN index.

Each index row carries the memory's scope (owner, context type, agent), so the visibility filter is part of
the search query itself: a search for 5 returns the 5 best rows the user may see, not 5 rows filtered after.
On SQLite the owner is vec0's partition key, so a user's search never scans other users' codes. Only live
memories are indexed: forgetting one removes its rows here.

The owner column holds a visibility key rather than the user alone: the owner's id for a private memory, SHARED
for a shared one, PUBLIC for a shared one marked public. A user's search asks for (their id, SHARED, PUBLIC), the
paid chat's for (PUBLIC,) alone, so "public only" is a partition of its own on SQLite and the same indexed
column on PostgreSQL: no extra column, and a limit of 5 still returns 5 public memories.
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
# The owner key of a shared memory marked public (user ids are positive).
PUBLIC = -1
# HNSW looks at this many candidates before filtering; a scoped search that comes back short is redone exactly.
HNSW_EF_SEARCH = 200
# Fixed: changing them changes every stored code (a migration, then `memory_reindex --all`).
CODE_THRESHOLDS = np.array([-0.8416212, 0.0, 0.8416212], dtype=np.float32) / np.float32(np.sqrt(DIMENSIONS))
CODE_BITS = DIMENSIONS * len(CODE_THRESHOLDS)
# First-pass candidates: three per result from each owner searched (SQLite runs vec0's KNN once per value of the
# partition key in an IN list), six per result from a search of every owner's at once, and at least this many.
# At 100,000 memories that gives recall@10 ≈ 0.98 (bench/memory.py).
MIN_CANDIDATES = 40
_WORD = re.compile(r"\w+", re.UNICODE)
KEYWORDS_MAX = 32
# Words that say how a question is asked, not what it is about ("when does the backup happen?"). Matched with an
# OR, they pulled up every memory sharing a little grammar with the question, so they are left out of the query on
# both engines (PostgreSQL's english configuration also leaves its own list out of documents and queries).
STOP_WORDS = frozenset(
    """
    a about above after again all am an and any are as at be been before being below between both but by can
    could did do does doing don down during each else ever few for from had has have having he her here hers
    herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off
    on once only or other our ours ourselves out over own s same she should so some such t than that the their
    theirs them themselves then there these they this those through to too under until up very was we were what
    when where which while who whom whose why will with would you your yours yourself yourselves
    """.split()  # noqa: SIM905 - 129 quoted words are harder to read and to edit
)


@dataclass(frozen=True)
class IndexRow:
    memory_id: int
    vector: np.ndarray
    content: str
    owner_id: int | None
    context_type: str
    agent_id: int | None
    public: bool = False


def owner_key(owner_id: int | None, public: bool) -> int:
    """The visibility key a memory is indexed under (see the module's docstring)."""
    if public:
        return PUBLIC
    return owner_id or SHARED


@dataclass(frozen=True)
class Scope:
    """Which memories a search may return. owner_ids None: everyone's (with the permission to read private
    memories); otherwise these owner keys' (SHARED for the shared memories, PUBLIC for the public ones)."""

    owner_ids: tuple[int, ...] | None
    context_type: str | None = None
    agent_id: int | None = None


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def _blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def codes(vectors: np.ndarray) -> np.ndarray:
    """The thermometer codes of unit vectors, as rows of CODE_BITS / 8 bytes."""
    v = np.asarray(vectors, dtype=np.float32).reshape(-1, DIMENSIONS)
    return np.packbits(np.concatenate([v > t for t in CODE_THRESHOLDS], axis=1), axis=1)


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
    scoped = [(r.memory_id, owner_key(r.owner_id, r.public), r.context_type, r.agent_id or SHARED) for r in rows]
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
            vectors = np.stack([np.asarray(r.vector, dtype=np.float32) for r in rows])
            cursor.executemany(
                "INSERT INTO memory_codes (memory_id, owner_id, code, context_type, agent_id) "
                "VALUES (%s, %s, vec_bit(%s), %s, %s)",
                [(m, o, code.tobytes(), c, a) for code, (m, o, c, a) in zip(codes(vectors), scoped, strict=True)],
            )
            cursor.executemany(
                "INSERT INTO memory_vectors (memory_id, embedding) VALUES (%s, %s)",
                [(m, v.tobytes()) for v, (m, *_) in zip(vectors, scoped, strict=True)],
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
        if not _postgres():
            cursor.executemany("DELETE FROM memory_codes WHERE memory_id = %s", [(m,) for m in memory_ids])
        cursor.executemany(f"DELETE FROM memory_fts WHERE {key} = %s", [(m,) for m in memory_ids])


def index_replace_vectors(rows: Sequence[tuple[int, np.ndarray]]) -> None:
    """New embeddings for indexed memories (a reindex with another model)."""
    if not rows:
        return
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
            new_codes = dict(zip((m for m, _ in rows), codes(np.stack([v for _, v in rows])), strict=True))
            _sqlite_rewrite_codes(cursor, new_codes)


def _sqlite_rewrite_codes(cursor: Any, new_codes: dict[int, np.ndarray], *, owner: int | None = None) -> None:
    """Write the code rows of these memories again, with new codes, or (owner) under another owner key: vec0
    (0.1.9) takes a bit vector in INSERT but not in UPDATE, and cannot move a row to another partition."""
    cursor.execute(
        "SELECT memory_id, owner_id, context_type, agent_id FROM memory_codes "
        f"WHERE memory_id IN ({', '.join(['%s'] * len(new_codes))})",
        list(new_codes),
    )
    scoped = cursor.fetchall()
    cursor.executemany("DELETE FROM memory_codes WHERE memory_id = %s", [(m,) for m, *_ in scoped])
    cursor.executemany(
        "INSERT INTO memory_codes (memory_id, owner_id, code, context_type, agent_id) "
        "VALUES (%s, %s, vec_bit(%s), %s, %s)",
        [(m, o if owner is None else owner, new_codes[m].tobytes(), c, a) for m, o, c, a in scoped],
    )


def index_set_owner(memory_ids: Sequence[int], owner: int) -> None:
    """Index memories under another owner key (a shared memory marked public or not public); memories not in the
    index (forgotten ones) are left out."""
    if not memory_ids:
        return
    with connection.cursor() as cursor:
        if _postgres():
            for table in ("memory_vectors", "memory_fts"):
                cursor.executemany(
                    f"UPDATE {table} SET owner_id = %s WHERE memory_id = %s", [(owner, m) for m in memory_ids]
                )
            return
        cursor.executemany("UPDATE memory_fts SET owner_id = %s WHERE rowid = %s", [(owner, m) for m in memory_ids])
        vectors = index_vectors(memory_ids)
        if vectors:
            found = list(vectors)
            _sqlite_rewrite_codes(
                cursor, dict(zip(found, codes(np.stack([vectors[m] for m in found])), strict=True)), owner=owner
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
            hits = _sqlite_vector_search(cursor, query, scope, k, where, params)
    return [(int(m), float(s)) for m, s in hits]


def _sqlite_vector_search(
    cursor: Any, query: np.ndarray, scope: Scope, k: int, where: str, params: list[Any]
) -> list[tuple[int, float]]:
    if scope.owner_ids is None:
        candidates = max(MIN_CANDIDATES, 6 * k)
    else:
        candidates = max(3 * k, -(-MIN_CANDIDATES // len(scope.owner_ids)))
    q = np.asarray(query, dtype=np.float32).reshape(DIMENSIONS)
    cursor.execute(
        f"SELECT memory_id FROM memory_codes WHERE code MATCH vec_bit(%s) AND k = %s{where}",
        [codes(q)[0].tobytes(), candidates, *params],
    )
    ids = [m for (m,) in cursor.fetchall()]
    if not ids:
        return []
    cursor.execute(
        f"SELECT memory_id, embedding FROM memory_vectors WHERE memory_id IN ({', '.join(['%s'] * len(ids))})", ids
    )
    rows = cursor.fetchall()
    similarity = np.frombuffer(b"".join(blob for _, blob in rows), dtype=np.float32).reshape(-1, DIMENSIONS) @ q
    best = np.argsort(-similarity, kind="stable")[:k]
    return [(rows[i][0], float(similarity[i])) for i in best]


def keyword_terms(text: str) -> list[str]:
    """The words of `text` a keyword search looks for: lower-cased, without stop words or repeats."""
    words = dict.fromkeys(w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS)
    return list(words)[:KEYWORDS_MAX]


def keyword_search(
    text: str, *, scope: Scope, k: int, every_word: bool = False, among: Sequence[int] | None = None
) -> list[tuple[int, float]]:
    """Memories in scope matching any meaningful word of `text` (keyword_terms), or with every_word all of them,
    stemmed, as (memory id, relevance), best first; none for a text of stop words only. among: only these
    memories. The words are quoted, so user input is never parsed as query syntax."""
    words = keyword_terms(text)
    if k < 1 or not words or (scope.owner_ids is not None and not scope.owner_ids):
        return []
    if among is not None and not among:
        return []
    where, params = _scope_sql(scope)
    if among is not None:
        where += f" AND {'memory_id' if _postgres() else 'rowid'} IN ({', '.join(['%s'] * len(among))})"
        params.extend(among)
    with connection.cursor() as cursor:
        if _postgres():
            # Quoted lexemes are still stemmed by the english configuration ('backups' becomes 'backup').
            query = (" & " if every_word else " | ").join(f"'{w}'" for w in words)
            cursor.execute(
                "SELECT memory_id, ts_rank(document, q) FROM memory_fts, to_tsquery('english', %s) q "
                f"WHERE document @@ q{where} ORDER BY 2 DESC, memory_id DESC LIMIT %s",
                [query, *params, k],
            )
        else:
            # A quoted string goes through the table's tokenizer (porter unicode61), so it is stemmed too.
            query = (" AND " if every_word else " OR ").join(f'"{w}"' for w in words)
            # bm25() is lower for better matches: negate it so larger is better, as on PostgreSQL.
            cursor.execute(
                f"SELECT rowid, -bm25(memory_fts) FROM memory_fts WHERE memory_fts MATCH %s{where} "
                "ORDER BY bm25(memory_fts), rowid DESC LIMIT %s",
                [query, *params, k],
            )
        return [(int(m), float(s)) for m, s in cursor.fetchall()]
