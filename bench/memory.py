"""Benchmark of semantic memory: search at 100,000 and 1,000,000 memories, and store throughput (docs/benchmarks.md).

The vectors are shaped like real memories: all-MiniLM-L6-v2 embeddings (the production embedder) of sentences from
the docstrings of Python's standard library, read from this machine's disk, and around them synthetic memories, each
a real one moved by the difference of two others (cosine about 0.87 to its source, a paraphrase), which keeps the
real embeddings' per-dimension mean and anisotropy. The queries are embeddings of sentences from other files,
never stored. Owners as in a household: user 1 owns 30 %, 20 % are shared, the rest belong to 49 other users; the
context type and the agent (0-6) are random.

Measured in one run, for a user's search (own + shared memories, k = 10, the query's vector given):
- `apps.memory.index.vector_search`, what `search_memories` runs (on SQLite: Hamming KNN over vec0 codes, then the
  exact cosine of the candidates), and right after each query, the baseline: exact brute force in numpy over the
  visible rows' vectors, already in memory and already filtered (the best case for brute force, which a web process
  could not keep in step with the worker's inserts). recall@10 is against that exact answer.
- The naive design this project descends from: embeddings stored as JSON text, every visible row loaded and its
  cosine computed in a Python loop. Measured on a sample of rows and scaled to the visible count (linear).
- Also per scope: a type filter, an agent filter, and staff searching everyone's memories.
- `services.search_memories(text, user=<user 1>, limit=10)` end to end, on the query sentences themselves: the
  query's embedding, both sides of the index, the ranking, the similarity floor, fetching the memories (each
  index row has its MemoryEntry row, same id) and counting their access. Against it, query after query (taking
  turns at going first), the search as it was before issue 18 (commit 30e2b54), rebuilt here: the same
  embedder and index, `vector_search` for 40, an FTS5 query ORing every word of the question (stop words
  included, each quoted) for 40, reciprocal rank fusion (k = 60), then the same fetch and access count. Both
  run on today's index (its FTS5 table stemmed with the porter tokenizer at 30e2b54 already, so the old query's
  words are stemmed as they were). Issue 18's target: ours within 1.2 times that at 100,000 memories.
- `store_memories` throughput in batches of 64 with the real embedder: into an empty database, and into the
  100,000 memories (each new memory is checked for near duplicates by a search).
- First, in the fresh database (emptied again after), search quality on the evaluation set of
  tests/memory/memory_eval.py: recall@1, recall@3 and MRR of `search_memories`, the vector side alone and the
  keyword side alone, and how often questions with no answer in memory bring nothing back
  (tests/memory/search_quality.py). `--quality-only` measures just that, in about half a minute. The figures are
  in the final JSON line too.

Run from the project root: `OMP_NUM_THREADS=1 .venv/bin/python bench/memory.py` (`--help` for sizes; about 19
minutes, most of it the million, where the search before issue 18 takes over a second; `--sizes 100000` about 4).
Everything happens in a fresh temporary TIMMY_DATA_DIR, removed at exit, with DEBUG off. Progress goes to stderr;
the last line of stdout is one JSON object with the figures.
"""

import argparse
import ast
import hashlib
import json
import math
import os
import platform
import re
import statistics
import sysconfig
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("EMBEDDING_BACKEND", "minilm")

from isolated import DATA_DIR, code_version, say  # first: sets up Django in a temporary data dir, removed at exit

# isort: split
import django
import numpy as np
import pysqlite3
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from apps.events.services import clean_multiline_text
from apps.memory import index, services
from apps.memory.embeddings import get_embedder
from apps.memory.models import MemoryEntry
from apps.swarm.models import Agent, Persona
from tests.memory import search_quality

TARGET_P50_MS = 10.0
TARGET_RECALL = 0.95
TARGET_STORE_PER_S = 150.0
TARGET_QUALITY_RECALL_AT_3 = 0.95
TARGET_QUALITY_QUIET = 0.90
TARGET_END_TO_END_RATIO = 1.2
K = 10
USER, OTHER_USERS = 1, range(2, 51)
AGENTS = range(1, 7)  # 0 in the index: no agent
SCOPES = {
    "own+shared": index.Scope(owner_ids=(USER, index.SHARED)),
    "own+shared, facts": index.Scope(owner_ids=(USER, index.SHARED), context_type="fact"),
    "own+shared, one agent": index.Scope(owner_ids=(USER, index.SHARED), agent_id=3),
    "everyone's (staff)": index.Scope(owner_ids=None),
}
HEADLINE = "own+shared"
ID_OFFSET = 10_000_000
CONTEXT_TYPES = np.array(["conversation", "fact", "document"])
# search_memories before issue 18 (30e2b54): reciprocal rank fusion's constant, and its cap on a question's words.
BEFORE_RRF_K = 60
BEFORE_WORDS_MAX = 32
BEFORE_WORD = re.compile(r"\w+", re.UNICODE)


# --- the corpus ---


def docstring_sentences(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(errors="ignore"))
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for sentence in " ".join(doc.split()).split(". "):
                sentence = sentence.strip()
                if 30 <= len(sentence) <= 300 and sum(c.isalpha() for c in sentence) > 0.6 * len(sentence):
                    yield sentence.rstrip(".") + "."


def corpus(stored: int, queries: int) -> tuple[list[str], list[str]]:
    """Sentences for stored memories and, from other files, for queries (one file in ten)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    memories: dict[str, None] = {}
    asked: dict[str, None] = {}
    for path in sorted(stdlib.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        held_out = hashlib.blake2b(str(path.relative_to(stdlib)).encode(), digest_size=1).digest()[0] % 10 == 0
        for sentence in docstring_sentences(path):
            (asked if held_out else memories).setdefault(sentence, None)
        if len(memories) >= stored * 2 and len(asked) >= queries * 2:
            break
    rng = np.random.default_rng(5)
    keep = sorted(set(memories) - set(asked))
    ask = sorted(asked)
    return (
        [keep[i] for i in rng.permutation(len(keep))[:stored]],
        [ask[i] for i in rng.permutation(len(ask))[:queries]],
    )


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def synthetic(real: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` memories around the real ones: real[a] + 0.42 (real[b] - real[c]), normalised. Returns the vectors
    and each one's source a (its text is used for the keyword index)."""
    a, b, c = (rng.integers(0, len(real), count) for _ in range(3))
    return unit(real[a] + 0.42 * (real[b] - real[c])), a


# --- building the index ---


class Memories:
    """The benchmark's memories: vectors, scope columns and texts, indexed through apps.memory.index, each with
    its MemoryEntry row (same id). Ids run from ID_OFFSET to ID_OFFSET + capacity; the memories store_memories
    creates in the same database are numbered below or (see above_capacity) above them."""

    def __init__(
        self, real: np.ndarray, texts: list[str], capacity: int, rng: np.random.Generator, embedder_name: str
    ) -> None:
        self.real, self.texts, self.rng = real, texts, rng
        self.hashes = [services.content_hash(text) for text in texts]
        self.embedder_name = embedder_name
        self.capacity = capacity
        self.all_vectors = np.empty((capacity, index.DIMENSIONS), np.float32)
        self.all_owners = np.empty(capacity, np.int64)
        self.all_agents = np.empty(capacity, np.int64)
        self.all_types = np.empty(capacity, CONTEXT_TYPES.dtype)
        self.n = 0
        self.insert_seconds = 0.0
        self.rows_seconds = 0.0

    @property
    def vectors(self) -> np.ndarray:
        return self.all_vectors[: self.n]

    def grow_to(self, n: int, batch: int = 5000) -> None:
        for first in range(self.n, n, batch):
            count = min(batch, n - first)
            real = max(0, min(count, len(self.real) - first))
            vectors, sources = synthetic(self.real, count, self.rng)
            vectors[:real], sources[:real] = self.real[first : first + real], np.arange(first, first + real)
            u = self.rng.random(count)
            owners = np.where(u < 0.3, USER, np.where(u < 0.5, index.SHARED, self.rng.choice(OTHER_USERS, count)))
            agents = self.rng.integers(0, 7, count)
            types = self.rng.choice(CONTEXT_TYPES, count)
            columns = zip(vectors, sources, owners, types, agents, strict=True)
            rows = [
                index.IndexRow(ID_OFFSET + first + i, vector, self.texts[source], int(owner), str(kind), int(agent))
                for i, (vector, source, owner, kind, agent) in enumerate(columns)
            ]
            started = time.perf_counter()
            with transaction.atomic():
                index.index_add(rows)
            self.insert_seconds += time.perf_counter() - started
            started = time.perf_counter()
            self.add_entries(rows, sources)
            self.rows_seconds += time.perf_counter() - started
            end = first + count
            self.all_vectors[first:end], self.all_owners[first:end] = vectors, owners
            self.all_agents[first:end], self.all_types[first:end] = agents, types
            self.n = end
            if end % 100_000 == 0:
                say(f"  {end:,} memories indexed")

    def add_entries(self, rows: list[index.IndexRow], sources: np.ndarray) -> None:
        """The MemoryEntry rows of these index rows, for search_memories to fetch."""
        now = timezone.now()
        with transaction.atomic():
            MemoryEntry.objects.bulk_create(
                [
                    MemoryEntry(
                        id=row.memory_id,
                        content=row.content,
                        source="bench",
                        context_type=row.context_type,
                        agent_id=row.agent_id or None,
                        timestamp=now,
                        owner_id=None if row.owner_id == index.SHARED else row.owner_id,
                        embedding_model=self.embedder_name,
                        embedding_dimensions=index.DIMENSIONS,
                        content_hash=self.hashes[source],
                    )
                    for row, source in zip(rows, sources, strict=True)
                ],
                batch_size=1000,
            )

    def above_capacity(self) -> None:
        """Number the memories that store_memories creates from now on above every id the bench will use: SQLite
        gives a new row the largest id the table ever held plus one (AUTOINCREMENT), here one of ours, and the
        next size's memories would then collide with them in the index."""
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE sqlite_sequence SET seq = %s WHERE name = %s",
                [ID_OFFSET + self.capacity, MemoryEntry._meta.db_table],
            )

    def visible(self, scope: index.Scope) -> np.ndarray:
        mask = np.ones(self.n, bool)
        if scope.owner_ids is not None:
            mask &= np.isin(self.all_owners[: self.n], scope.owner_ids)
        if scope.context_type:
            mask &= self.all_types[: self.n] == scope.context_type
        if scope.agent_id is not None:
            mask &= self.all_agents[: self.n] == scope.agent_id
        return np.flatnonzero(mask)


# --- measuring ---


def brute_force(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray) -> list[int]:
    similarity = vectors @ query
    top = np.argpartition(-similarity, K - 1)[:K]
    return (ids[top[np.argsort(-similarity[top])]] + ID_OFFSET).tolist()


def measure_scope(memories: Memories, scope: index.Scope, queries: np.ndarray) -> dict[str, Any]:
    """Our search and numpy's, query after query, so that load from elsewhere falls on both alike."""
    ids = memories.visible(scope)
    visible = np.ascontiguousarray(memories.vectors[ids])
    ours, numpy_ms, recall = [], [], []
    for query in queries:
        started = time.perf_counter()
        hits = index.vector_search(query, scope=scope, k=K)
        ours.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        exact = brute_force(visible, ids, query)
        numpy_ms.append((time.perf_counter() - started) * 1000)
        recall.append(len({m for m, _ in hits} & set(exact)) / K)
    p50, baseline = statistics.median(ours), statistics.median(numpy_ms)
    return {
        "visible": len(ids),
        "p50_ms": round(p50, 2),
        "p95_ms": round(float(np.percentile(ours, 95)), 2),
        "recall_at_10": round(float(np.mean(recall)), 4),
        "numpy_p50_ms": round(baseline, 2),
        "ratio_vs_numpy": round(p50 / baseline, 2),
    }


def search_before_issue_18(text: str, *, user: Any, limit: int) -> list[MemoryEntry]:
    """search_memories as it was at 30e2b54, before issue 18, on today's index (see the module's docstring)."""
    query = clean_multiline_text(text).strip()
    owners = services.visible_owner_ids(user)
    assert owners is not None  # a user's own search is never everyone's
    depth = max(limit * 4, 20)
    by_vector = index.vector_search(get_embedder().embed_one(query), scope=index.Scope(owner_ids=owners), k=depth)
    words = BEFORE_WORD.findall(query.lower())[:BEFORE_WORDS_MAX]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT rowid, -bm25(memory_fts) FROM memory_fts WHERE memory_fts MATCH %s "
            f"AND owner_id IN ({', '.join(['%s'] * len(owners))}) ORDER BY bm25(memory_fts), rowid DESC LIMIT %s",
            [" OR ".join('"' + w.replace('"', "") + '"' for w in words), *owners, depth],
        )
        by_keyword = cursor.fetchall()
    scores: dict[int, float] = {}
    for ranked in (by_vector, by_keyword):
        for rank, (memory_id, _) in enumerate(ranked, start=1):
            scores[memory_id] = scores.get(memory_id, 0.0) + 1.0 / (BEFORE_RRF_K + rank)
    best = sorted(scores, key=lambda m: (-scores[m], -m))[:limit]
    memories = MemoryEntry.objects.filter(pk__in=best, deleted_at__isnull=True).in_bulk()
    found = [memories[m] for m in best if m in memories]
    if found:
        MemoryEntry.objects.filter(pk__in=[m.pk for m in found]).update(
            access_count=F("access_count") + 1, last_accessed_at=timezone.now()
        )
    return found


def measure_end_to_end(texts: list[str], user: Any) -> dict[str, Any]:
    """search_memories and the search before issue 18, query after query; they take turns at going first, since
    the second finds in SQLite's cache the pages the first read."""
    ours, before, ours_hits, before_hits = [], [], [], []
    for i, text in enumerate(texts):
        for which in ("ours", "before") if i % 2 == 0 else ("before", "ours"):
            started = time.perf_counter()
            if which == "ours":
                ours_hits.append(len(services.search_memories(text, user=user, limit=K)))
                ours.append((time.perf_counter() - started) * 1000)
            else:
                before_hits.append(len(search_before_issue_18(text, user=user, limit=K)))
                before.append((time.perf_counter() - started) * 1000)
    p50, baseline = statistics.median(ours), statistics.median(before)
    return {
        "end_to_end_queries": len(texts),
        "search_end_to_end_p50_ms": round(p50, 2),
        "search_end_to_end_p95_ms": round(float(np.percentile(ours, 95)), 2),
        "baseline_end_to_end_p50_ms": round(baseline, 2),
        "baseline_end_to_end_p95_ms": round(float(np.percentile(before, 95)), 2),
        "end_to_end_ratio_vs_before": round(p50 / baseline, 3),
        # The similarity floor may return fewer than K.
        "search_end_to_end_hits_mean": round(float(np.mean(ours_hits)), 2),
        "baseline_end_to_end_hits_mean": round(float(np.mean(before_hits)), 2),
    }


def naive_search_ms(memories: Memories, queries: np.ndarray, sample: int) -> dict[str, float]:
    """The seed's design: embeddings as JSON text in SQLite; load every visible row, cosine in a Python loop.
    Timed on `sample` visible rows per query (a table of its own), scaled to all visible rows."""
    ids = memories.visible(SCOPES[HEADLINE])[:sample]
    db = pysqlite3.connect(str(DATA_DIR / "naive.sqlite3"))
    db.execute("CREATE TABLE memories (id INTEGER PRIMARY KEY, owner_id INTEGER, embedding TEXT)")
    db.executemany(
        "INSERT INTO memories VALUES (?, ?, ?)",
        [(int(i), int(memories.all_owners[i]), json.dumps(memories.vectors[i].tolist())) for i in ids],
    )
    db.commit()
    per_row = []
    for query in queries:
        q = query.tolist()
        started = time.perf_counter()
        scored = []
        for memory_id, text in db.execute("SELECT id, embedding FROM memories WHERE owner_id IN (?, ?)", (USER, 0)):
            vector = json.loads(text)
            dot = sum(a * b for a, b in zip(q, vector, strict=True))
            norm = math.sqrt(sum(a * a for a in vector)) * math.sqrt(sum(a * a for a in q))
            scored.append((dot / norm, memory_id))
        scored.sort(reverse=True)
        per_row.append((time.perf_counter() - started) / len(ids))
    db.close()
    per_row_ms = statistics.median(per_row) * 1000
    return {"per_row_us": round(per_row_ms * 1000, 2), "p50_ms": per_row_ms}


def store_rate(texts: list[str], batch: int = 64) -> float:
    """Memories per second through services.store_memories (embedding included), batch after batch."""
    started = time.perf_counter()
    for first in range(0, len(texts), batch):
        services.store_memories(
            [services.NewMemory(t, "fact", "bench", agent_id=None) for t in texts[first : first + batch]]
        )
    return len(texts) / (time.perf_counter() - started)


def quality() -> dict[str, Any]:
    """Search quality on the evaluation set, measured in the fresh database, which is emptied again after."""
    say("search quality on the evaluation set")
    figures = search_quality.measure(get_user_model().objects.create_user(username="evaluator"))
    call_command("flush", interactive=False, verbosity=0)
    return figures


def figures_at(
    n: int, memories: Memories, queries: np.ndarray, asked: list[str], user: Any, args: argparse.Namespace
) -> dict[str, Any]:
    say(f"building {n:,} memories")
    memories.grow_to(n)
    say(f"searching ({len(queries)} queries per scope)")
    scopes = {name: measure_scope(memories, scope, queries) for name, scope in SCOPES.items()}
    say(f"search_memories end to end and the search before issue 18 ({args.search_queries} queries each)")
    end_to_end = measure_end_to_end(asked[: args.search_queries], user)
    naive = naive_search_ms(memories, queries[: args.naive_queries], args.naive_sample)
    headline = scopes[HEADLINE]
    naive_p50 = naive["p50_ms"] * headline["visible"]
    result = {
        "memories": n,
        "search_p50_ms": headline["p50_ms"],
        "search_p95_ms": headline["p95_ms"],
        "recall_at_10": headline["recall_at_10"],
        "numpy_brute_force_p50_ms": headline["numpy_p50_ms"],
        "latency_ratio_vs_numpy": headline["ratio_vs_numpy"],
        "naive_json_python_p50_ms": round(naive_p50, 1),
        "naive_per_row_us": naive["per_row_us"],
        "speedup_vs_naive": round(naive_p50 / headline["p50_ms"], 1),
        **end_to_end,
        "index_insert_us_per_memory": round(memories.insert_seconds / n * 1e6, 1),
        "entries_insert_us_per_memory": round(memories.rows_seconds / n * 1e6, 1),
        "database_mb": round(sum(p.stat().st_size for p in DATA_DIR.glob("*.sqlite3*")) / 1e6, 1),
        "scopes": scopes,
    }
    (DATA_DIR / "naive.sqlite3").unlink()
    say(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="memory counts, ascending (default %(default)s)")
    parser.add_argument("--real", type=int, default=10000, help="real embedded sentences (default %(default)s)")
    parser.add_argument("--queries", type=int, default=300, help="queries per scope (default %(default)s)")
    parser.add_argument(
        "--search-queries",
        type=int,
        default=300,
        help="queries for search_memories end to end and for the search before issue 18 (default %(default)s)",
    )
    parser.add_argument("--naive-sample", type=int, default=2000, help="rows for the naive baseline")
    parser.add_argument("--naive-queries", type=int, default=10, help="queries for the naive baseline")
    parser.add_argument("--store", type=int, default=1024, help="memories stored to time store_memories")
    parser.add_argument("--quality-only", action="store_true", help="measure search quality only")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if connection.vendor != "sqlite":
        parser.error("runs on the embedded SQLite only")
    call_command("migrate", verbosity=0)
    embedder = get_embedder()
    about = {
        "benchmark": "memory",
        "date": datetime.now(UTC).date().isoformat(),
        "code": code_version(),
        "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "sqlite": pysqlite3.sqlite_version,
        "django": django.get_version(),
    }
    search_quality_figures = quality()
    if args.quality_only:
        print(json.dumps(about | search_quality_figures))
        return
    texts, asked = corpus(args.real + args.store * 2, args.queries)
    stored_texts, store_empty, store_full = (
        texts[: args.real],
        texts[args.real : args.real + args.store],
        texts[args.real + args.store :],
    )
    say(f"embedding {len(stored_texts) + len(asked):,} sentences with {embedder.name}")
    embedder.embed(stored_texts[:64])
    started = time.perf_counter()
    real = embedder.embed(stored_texts)
    embed_rate = len(stored_texts) / (time.perf_counter() - started)
    queries = embedder.embed(asked)

    say(f"store_memories into an empty database ({len(store_empty)} memories)")
    store_empty_rate = store_rate(store_empty)
    call_command("flush", interactive=False, verbosity=0)

    # The owners and agents of the memories, with the ids the index rows name; user 1 searches.
    get_user_model().objects.bulk_create(
        get_user_model()(id=i, username=f"bench-user-{i}", password=make_password(None)) for i in (USER, *OTHER_USERS)
    )
    Agent.objects.bulk_create(Agent(id=i, name=f"bench-agent-{i}", persona=Persona.ECHO) for i in AGENTS)
    user = get_user_model().objects.get(pk=USER)
    memories = Memories(real, stored_texts, sizes[-1], np.random.default_rng(11), embedder.name)
    results: dict[str, Any] = {}
    for n in sizes:
        results[str(n)] = figures_at(n, memories, queries, asked, user, args)
        if n == sizes[0]:
            say(f"store_memories into {n:,} memories ({len(store_full)} memories)")
            memories.above_capacity()
            results[str(n)]["store_memories_per_s"] = round(store_rate(store_full), 1)

    first = results[str(sizes[0])]
    figures = {
        **about,
        "embedder": embedder.name,
        "embed_per_s": round(embed_rate, 1),
        "store_memories_per_s": round(store_empty_rate, 1),
        "store_memories_per_s_at_100k": first.get("store_memories_per_s"),
        "search_p50_ms": first["search_p50_ms"],
        "search_p95_ms": first["search_p95_ms"],
        "recall_at_10": first["recall_at_10"],
        "latency_ratio_vs_numpy": first["latency_ratio_vs_numpy"],
        "speedup_vs_naive": first["speedup_vs_naive"],
        "search_end_to_end_p50_ms": first["search_end_to_end_p50_ms"],
        "search_end_to_end_p95_ms": first["search_end_to_end_p95_ms"],
        "baseline_end_to_end_p50_ms": first["baseline_end_to_end_p50_ms"],
        "end_to_end_ratio_vs_before": first["end_to_end_ratio_vs_before"],
        **search_quality_figures,
        "targets_met": {
            "search_p50_ms": first["search_p50_ms"] <= TARGET_P50_MS,
            "recall_at_10": first["recall_at_10"] >= TARGET_RECALL,
            "end_to_end_ratio_vs_before": first["end_to_end_ratio_vs_before"] <= TARGET_END_TO_END_RATIO,
            "store_memories_per_s": store_empty_rate >= TARGET_STORE_PER_S,
            "hybrid_recall_at_3": search_quality_figures["hybrid_recall_at_3"] >= TARGET_QUALITY_RECALL_AT_3,
            "hybrid_unanswerable_quiet": search_quality_figures["hybrid_unanswerable_quiet"] >= TARGET_QUALITY_QUIET,
            "hybrid_at_least_either_side": all(
                search_quality_figures[f"hybrid_{m}"]
                >= max(search_quality_figures[f"vector_{m}"], search_quality_figures[f"keyword_{m}"])
                for m in ("recall_at_1", "recall_at_3", "mrr")
            ),
        },
        "sizes": results,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
