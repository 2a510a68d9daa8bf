"""The memory search index behind one interface: vectors (of a memory's chunks) and keywords, by memory id.

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

A memory longer than the embedder's window has a vector per chunk (apps.memory.embeddings.chunk_texts); most have
one. The vector side holds chunks: on SQLite both tables are keyed by chunk_key(memory id, chunk number), the
memory's id shifted left by CHUNK_BITS plus the chunk's number, so a memory's chunks are one range of keys and a
candidate's memory is its key shifted back, with no column more to read or index; on PostgreSQL memory_vectors has
a (memory_id, chunk) key. A vector search returns each memory once, with its best chunk's cosine. The keyword side
stays one row per memory: FTS5 and tsvector have no window.

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
# At 100,000 memories that gives recall@10 ≈ 0.98 (bench/memory.py). When chunks of the same memories fill them so
# that fewer than k memories come back, the search asks again for twice as many, up to vec0's largest k.
MIN_CANDIDATES = 40
KNN_MAX = 4096
# A chunk's key on SQLite: memory id << CHUNK_BITS | chunk number. A memory is at most CONTENT_MAX (20,000)
# characters, which makes at most a few hundred chunks of either embedder.
CHUNK_BITS = 10
CHUNKS_MAX = 1 << CHUNK_BITS
# pgvector's largest hnsw.ef_search.
HNSW_EF_SEARCH_MAX = 1000
# Memories per statement when their chunks are looked up by key range (two parameters each).
RANGES_PER_QUERY = 400
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
    """A memory to index: `vector` is its first chunk's (the whole memory's when it is one chunk), `chunks` the
    vectors of the chunks after the first, in order."""

    memory_id: int
    vector: np.ndarray
    content: str
    owner_id: int | None
    context_type: str
    agent_id: int | None
    public: bool = False
    chunks: tuple[np.ndarray, ...] = ()

    @property
    def vectors(self) -> list[np.ndarray]:
        return [self.vector, *self.chunks]


def chunk_key(memory_id: int, chunk: int) -> int:
    """The SQLite key of a memory's chunk (see the module's docstring)."""
    return memory_id << CHUNK_BITS | chunk


def _chunk_rows(rows: Sequence[tuple[int, np.ndarray]]) -> list[tuple[int, int, np.ndarray]]:
    """(memory id, chunk number, vector) of each chunk of these memories, whose vectors are one vector (one
    chunk) or an array of a vector per chunk."""
    chunks: list[tuple[int, int, np.ndarray]] = []
    for memory_id, vectors in rows:
        v = np.asarray(vectors, dtype=np.float32).reshape(-1, DIMENSIONS)
        if not 1 <= len(v) <= CHUNKS_MAX:
            raise ValueError(f"memory {memory_id} has {len(v)} chunks; the index holds 1 to {CHUNKS_MAX}")
        chunks.extend((memory_id, n, vector) for n, vector in enumerate(v))
    return chunks


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
    """Index memories, every chunk of each (in the caller's transaction)."""
    if not rows:
        return
    scopes = {r.memory_id: (owner_key(r.owner_id, r.public), r.context_type, r.agent_id or SHARED) for r in rows}
    chunks = _chunk_rows(
        [(r.memory_id, r.vector if not r.chunks else np.stack(r.vectors)) for r in rows]  # most have one
    )
    with connection.cursor() as cursor:
        _insert_chunks(cursor, chunks, scopes)
        if _postgres():
            cursor.executemany(
                "INSERT INTO memory_fts (memory_id, document, owner_id, context_type, agent_id) "
                "VALUES (%s, to_tsvector('english', %s), %s, %s, %s)",
                [(r.memory_id, r.content, *scopes[r.memory_id]) for r in rows],
            )
        else:
            cursor.executemany(
                "INSERT INTO memory_fts (rowid, content, owner_id, context_type, agent_id) VALUES (%s, %s, %s, %s, %s)",
                [(r.memory_id, r.content, *scopes[r.memory_id]) for r in rows],
            )


def _insert_chunks(
    cursor: Any, chunks: Sequence[tuple[int, int, np.ndarray]], scopes: dict[int, tuple[int, str, int]]
) -> None:
    """Write the vector rows (and on SQLite the codes) of these chunks, each under its memory's scope."""
    if not chunks:
        return
    if _postgres():
        cursor.executemany(
            "INSERT INTO memory_vectors (memory_id, chunk, embedding, owner_id, context_type, agent_id) "
            "VALUES (%s, %s, %s::vector, %s, %s, %s)",
            [(m, n, _pg_vector(v), *scopes[m]) for m, n, v in chunks],
        )
        return
    vectors = np.stack([v for _, _, v in chunks])
    keyed = [(chunk_key(m, n), *scopes[m]) for m, n, _ in chunks]
    cursor.executemany(
        "INSERT INTO memory_codes (chunk_id, owner_id, code, context_type, agent_id) "
        "VALUES (%s, %s, vec_bit(%s), %s, %s)",
        [(key, o, code.tobytes(), c, a) for (key, o, c, a), code in zip(keyed, codes(vectors), strict=True)],
    )
    cursor.executemany(
        "INSERT INTO memory_vectors (chunk_id, embedding) VALUES (%s, %s)",
        [(key, v.tobytes()) for (key, *_), v in zip(keyed, vectors, strict=True)],
    )


def _sqlite_chunks(cursor: Any, memory_ids: Sequence[int], columns: str = "chunk_id") -> list[tuple[Any, ...]]:
    """`columns` of memory_vectors (chunk_id first) for every chunk of these memories, in key order (a memory's
    chunks in order)."""
    found: list[tuple[Any, ...]] = []
    ids = sorted(set(memory_ids))
    for first in range(0, len(ids), RANGES_PER_QUERY):
        batch = ids[first : first + RANGES_PER_QUERY]
        # An OR of key ranges: SQLite searches each range of the primary key (MULTI-INDEX OR). Sorted here: with an
        # ORDER BY it scans the whole table in key order instead (50 ms at 100,000 memories).
        cursor.execute(
            f"SELECT {columns} FROM memory_vectors WHERE " + " OR ".join(["chunk_id BETWEEN %s AND %s"] * len(batch)),
            [key for m in batch for key in (chunk_key(m, 0), chunk_key(m, CHUNKS_MAX - 1))],
        )
        found.extend(cursor.fetchall())
    return sorted(found, key=lambda row: row[0])


def _sqlite_delete_chunks(cursor: Any, keys: Sequence[int]) -> None:
    # vec0 finds a row by its key alone: `= %s` one key at a time (an IN list or a range scans the whole table).
    cursor.executemany("DELETE FROM memory_codes WHERE chunk_id = %s", [(key,) for key in keys])
    cursor.executemany("DELETE FROM memory_vectors WHERE chunk_id = %s", [(key,) for key in keys])


def _sqlite_code_rows(cursor: Any, keys: Sequence[int]) -> list[tuple[Any, ...]]:
    """(chunk key, owner key, code, context type, agent) of these chunks' code rows, one point query each."""
    rows = []
    for key in keys:
        cursor.execute(
            "SELECT chunk_id, owner_id, code, context_type, agent_id FROM memory_codes WHERE chunk_id = %s", [key]
        )
        rows.extend(cursor.fetchall())
    return rows


def index_remove(memory_ids: Sequence[int]) -> None:
    """Take memories out of the index, every chunk of each."""
    if not memory_ids:
        return
    with connection.cursor() as cursor:
        if _postgres():
            cursor.executemany("DELETE FROM memory_vectors WHERE memory_id = %s", [(m,) for m in memory_ids])
            cursor.executemany("DELETE FROM memory_fts WHERE memory_id = %s", [(m,) for m in memory_ids])
            return
        _sqlite_delete_chunks(cursor, [key for (key,) in _sqlite_chunks(cursor, memory_ids)])
        cursor.executemany("DELETE FROM memory_fts WHERE rowid = %s", [(m,) for m in memory_ids])


def index_replace_vectors(rows: Sequence[tuple[int, np.ndarray]]) -> None:
    """New embeddings for indexed memories (a reindex): for each, one vector or an array of a vector per chunk,
    however many chunks it had before. Memories not in the index (forgotten ones) are left out."""
    if not rows:
        return
    with connection.cursor() as cursor:
        if _postgres():
            cursor.execute(
                "SELECT memory_id, owner_id, context_type, agent_id FROM memory_vectors "
                f"WHERE chunk = 0 AND memory_id IN ({', '.join(['%s'] * len(rows))})",
                [m for m, _ in rows],
            )
            scopes = {m: (o, c, a) for m, o, c, a in cursor.fetchall()}
            cursor.executemany("DELETE FROM memory_vectors WHERE memory_id = %s", [(m,) for m in scopes])
        else:
            scopes = {
                key >> CHUNK_BITS: (o, c, a)
                for key, o, _, c, a in _sqlite_code_rows(cursor, [chunk_key(m, 0) for m, _ in rows])
            }
            _sqlite_delete_chunks(cursor, [key for (key,) in _sqlite_chunks(cursor, list(scopes))])
        _insert_chunks(cursor, _chunk_rows([(m, v) for m, v in rows if m in scopes]), scopes)


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
        # vec0 (0.1.9) cannot move a row to another partition: each code row is written again under the new key.
        moved = _sqlite_code_rows(cursor, [key for (key,) in _sqlite_chunks(cursor, memory_ids)])
        cursor.executemany("DELETE FROM memory_codes WHERE chunk_id = %s", [(key,) for key, *_ in moved])
        cursor.executemany(
            "INSERT INTO memory_codes (chunk_id, owner_id, code, context_type, agent_id) "
            "VALUES (%s, %s, vec_bit(%s), %s, %s)",
            [(key, owner, code, kind, agent) for key, _, code, kind, agent in moved],
        )


def index_vectors(memory_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """The stored vectors of these memories, each as an array of shape (chunks, DIMENSIONS), first chunk first."""
    if not memory_ids:
        return {}
    chunks: dict[int, list[np.ndarray]] = {}
    with connection.cursor() as cursor:
        if _postgres():
            cursor.execute(
                "SELECT memory_id, embedding::text FROM memory_vectors "
                f"WHERE memory_id IN ({', '.join(['%s'] * len(memory_ids))}) ORDER BY memory_id, chunk",
                list(memory_ids),
            )
            for m, text in cursor.fetchall():
                chunks.setdefault(m, []).append(np.array(text.strip("[]").split(","), dtype=np.float32))
        else:
            for key, blob in _sqlite_chunks(cursor, memory_ids, "chunk_id, embedding"):
                chunks.setdefault(key >> CHUNK_BITS, []).append(np.frombuffer(blob, dtype=np.float32))
    return {m: np.stack(vectors) for m, vectors in chunks.items()}


def index_similarity(memory_ids: Sequence[int], query: np.ndarray) -> dict[int, float]:
    """The cosine of `query` and each of these memories' best chunk (memories not in the index are left out)."""
    if not memory_ids:
        return {}
    if _postgres():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT memory_id, max(1 - (embedding <=> %s::vector)) FROM memory_vectors "
                f"WHERE memory_id IN ({', '.join(['%s'] * len(memory_ids))}) GROUP BY memory_id",
                [_pg_vector(query), *memory_ids],
            )
            return {int(m): float(s) for m, s in cursor.fetchall()}
    q = np.asarray(query, dtype=np.float32).reshape(DIMENSIONS)
    return {m: float(np.max(vectors @ q)) for m, vectors in index_vectors(memory_ids).items()}


def vector_search(query: np.ndarray, *, scope: Scope, k: int) -> list[tuple[int, float]]:
    """The k nearest memories in scope, as (memory id, cosine similarity of its best chunk), best first, each
    memory once."""
    if k < 1 or (scope.owner_ids is not None and not scope.owner_ids):
        return []
    where, params = _scope_sql(scope)
    with transaction.atomic(), connection.cursor() as cursor:  # SET LOCAL lasts until the end of a transaction
        if _postgres():
            hits = _postgres_vector_search(cursor, query, k, where, params)
        else:
            hits = _sqlite_vector_search(cursor, query, scope, k, where, params)
    return [(int(m), float(s)) for m, s in hits]


def _best_per_memory(memory_ids: np.ndarray, similarity: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k best memories among chunks (a memory id and a cosine each), each by its best chunk, best first."""
    order = np.argsort(-similarity, kind="stable")
    _, first = np.unique(memory_ids[order], return_index=True)  # each memory's best chunk's place in `order`
    best = order[np.sort(first)[:k]]
    return [(int(m), float(s)) for m, s in zip(memory_ids[best], similarity[best], strict=True)]


def _postgres_vector_search(
    cursor: Any, query: np.ndarray, k: int, where: str, params: list[Any]
) -> list[tuple[int, float]]:
    vector = _pg_vector(query)
    sql = (
        f"SELECT memory_id, 1 - (embedding <=> %s::vector) FROM memory_vectors WHERE TRUE{where} "
        "ORDER BY embedding <=> %s::vector LIMIT %s"
    )
    # Twice k chunks, so that a memory or two of several chunks do not leave the answer short.
    wanted = 2 * k
    width = 0
    exact = False
    while True:
        if not exact and width < min(HNSW_EF_SEARCH_MAX, max(HNSW_EF_SEARCH, wanted)):
            width = min(HNSW_EF_SEARCH_MAX, max(HNSW_EF_SEARCH, wanted))
            cursor.execute(f"SET LOCAL hnsw.ef_search = {width}")
        cursor.execute(sql, [vector, *params, vector, wanted])
        rows = cursor.fetchall()
        hits = _best_per_memory(
            np.array([m for m, _ in rows], dtype=np.int64), np.array([s for _, s in rows], dtype=np.float64), k
        )
        if len(hits) == k:
            return hits
        if len(rows) == wanted:
            # Chunks of the same memories took the places: ask for more.
            wanted *= 4
        elif not exact:
            # The graph's candidates ran out before enough rows passed the filter: scan exactly instead.
            cursor.execute("SET LOCAL enable_indexscan = off")
            exact = True
        else:
            return hits


def _sqlite_vector_search(
    cursor: Any, query: np.ndarray, scope: Scope, k: int, where: str, params: list[Any]
) -> list[tuple[int, float]]:
    if scope.owner_ids is None:
        candidates = max(MIN_CANDIDATES, 6 * k)
    else:
        candidates = max(3 * k, -(-MIN_CANDIDATES // len(scope.owner_ids)))
    q = np.asarray(query, dtype=np.float32).reshape(DIMENSIONS)
    code = codes(q)[0].tobytes()
    while True:
        cursor.execute(
            f"SELECT chunk_id FROM memory_codes WHERE code MATCH vec_bit(%s) AND k = %s{where}",
            [code, min(candidates, KNN_MAX), *params],
        )
        keys = [key for (key,) in cursor.fetchall()]
        if not keys:
            return []
        cursor.execute(
            f"SELECT chunk_id, embedding FROM memory_vectors WHERE chunk_id IN ({', '.join(['%s'] * len(keys))})",
            keys,
        )
        rows = cursor.fetchall()
        similarity = np.frombuffer(b"".join(blob for _, blob in rows), dtype=np.float32).reshape(-1, DIMENSIONS) @ q
        memory_ids = np.array([key for key, _ in rows], dtype=np.int64) >> CHUNK_BITS
        hits = _best_per_memory(memory_ids, similarity, k)
        if len(hits) == k or len(keys) < candidates or candidates >= KNN_MAX:
            return hits
        # Chunks of the same memories took the candidates' places: ask for more.
        candidates *= 2


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
