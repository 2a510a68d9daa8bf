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
- `store_memories` throughput in batches of 64 with the real embedder: into an empty database, and into the
  100,000 memories (each new memory is checked for near duplicates by a search).
- First, in the fresh database (emptied again after), search quality on the evaluation set of
  tests/memory/memory_eval.py: recall@1, recall@3 and MRR of `search_memories`, the vector side alone and the
  keyword side alone, and how often questions with no answer in memory bring nothing back
  (tests/memory/search_quality.py). `--quality-only` measures just that, in about half a minute.

Run from the project root: `.venv/bin/python bench/memory.py` (`--help` for sizes; about 3.5 minutes, half of it
building and searching the million). Everything happens in a fresh temporary TIMMY_DATA_DIR, removed at exit,
with DEBUG off. Progress goes to stderr; the last line of stdout is one JSON object with the figures.
"""

import argparse
import ast
import hashlib
import json
import math
import os
import platform
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
from django.core.management import call_command
from django.db import connection, transaction

from apps.memory import index, services
from apps.memory.embeddings import get_embedder
from tests.memory import search_quality

TARGET_P50_MS = 10.0
TARGET_RECALL = 0.95
TARGET_STORE_PER_S = 150.0
TARGET_QUALITY_RECALL_AT_3 = 0.95
TARGET_QUALITY_QUIET = 0.90
K = 10
USER, OTHER_USERS = 1, range(2, 51)
SCOPES = {
    "own+shared": index.Scope(owner_ids=(USER, index.SHARED)),
    "own+shared, facts": index.Scope(owner_ids=(USER, index.SHARED), context_type="fact"),
    "own+shared, one agent": index.Scope(owner_ids=(USER, index.SHARED), agent_id=3),
    "everyone's (staff)": index.Scope(owner_ids=None),
}
HEADLINE = "own+shared"
ID_OFFSET = 10_000_000
CONTEXT_TYPES = np.array(["conversation", "fact", "document"])


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
    """The benchmark's memories: vectors, scope columns and texts, indexed through apps.memory.index. Ids start
    at ID_OFFSET, above the ids of the memories that store_memories creates in the same database."""

    def __init__(self, real: np.ndarray, texts: list[str], capacity: int, rng: np.random.Generator) -> None:
        self.real, self.texts, self.rng = real, texts, rng
        self.all_vectors = np.empty((capacity, index.DIMENSIONS), np.float32)
        self.all_owners = np.empty(capacity, np.int64)
        self.all_agents = np.empty(capacity, np.int64)
        self.all_types = np.empty(capacity, CONTEXT_TYPES.dtype)
        self.n = 0
        self.insert_seconds = 0.0

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
            end = first + count
            self.all_vectors[first:end], self.all_owners[first:end] = vectors, owners
            self.all_agents[first:end], self.all_types[first:end] = agents, types
            self.n = end
            if end % 100_000 == 0:
                say(f"  {end:,} memories indexed")

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


def figures_at(n: int, memories: Memories, queries: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    say(f"building {n:,} memories")
    memories.grow_to(n)
    say(f"searching ({len(queries)} queries per scope)")
    scopes = {name: measure_scope(memories, scope, queries) for name, scope in SCOPES.items()}
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
        "index_insert_us_per_memory": round(memories.insert_seconds / n * 1e6, 1),
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

    memories = Memories(real, stored_texts, sizes[-1], np.random.default_rng(11))
    results: dict[str, Any] = {}
    for n in sizes:
        results[str(n)] = figures_at(n, memories, queries, args)
        if n == sizes[0]:
            say(f"store_memories into {n:,} memories ({len(store_full)} memories)")
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
        **search_quality_figures,
        "targets_met": {
            "search_p50_ms": first["search_p50_ms"] <= TARGET_P50_MS,
            "recall_at_10": first["recall_at_10"] >= TARGET_RECALL,
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
