"""The embedders: the real all-MiniLM-L6-v2 (loaded once for this module) and the hashed fallback."""

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.memory.embeddings import (
    DIMENSIONS,
    PACKAGED_MODEL_NAME,
    Embedder,
    HashedNgramEmbedder,
    SentenceTransformerEmbedder,
    get_embedder,
    packaged_model_path,
    reset_embedder,
)

ROOT = Path(__file__).resolve().parents[2]
CAT = "The cat sat on the mat"
KITTEN = "A kitten was sitting on the rug"
TAX = "Quarterly tax filing deadlines"
TEXTS = [
    CAT,
    KITTEN,
    TAX,
    "",
    "Deploy the web server after the database migration finishes, then check the logs for errors.",
    "Ünïcödé, emoji 🙂 and\ttabs\nand newlines",
]


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    embedder = SentenceTransformerEmbedder(packaged_model_path(), name=PACKAGED_MODEL_NAME)
    embedder.embed_one("load the model once for this module")
    return embedder


@pytest.fixture
def hashed() -> HashedNgramEmbedder:
    return HashedNgramEmbedder()


@pytest.fixture(params=["minilm", "hashed"])
def embedder(request: pytest.FixtureRequest) -> Embedder:
    return request.getfixturevalue(request.param)


@pytest.fixture
def fresh_get_embedder() -> Iterator[None]:
    reset_embedder()
    yield
    reset_embedder()


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run code in a new interpreter from the repository root, without Django settings unless it makes some."""
    environ = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"} | env
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result


# --- Both embedders ---


def test_vectors_are_float32_unit_rows_of_384(embedder: Embedder) -> None:
    vectors = embedder.embed(TEXTS)

    assert embedder.dimensions == DIMENSIONS
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(TEXTS), DIMENSIONS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_one(CAT).shape == (DIMENSIONS,)


def test_no_texts_give_an_empty_float32_array(embedder: Embedder) -> None:
    vectors = embedder.embed([])

    assert vectors.shape == (0, DIMENSIONS)
    assert vectors.dtype == np.float32


def test_batched_embedding_equals_one_by_one(embedder: Embedder) -> None:
    batched = embedder.embed(TEXTS)
    one_by_one = np.stack([embedder.embed_one(text) for text in TEXTS])

    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_embed_refuses_a_bare_string(embedder: Embedder) -> None:
    with pytest.raises(TypeError, match="embed_one"):
        embedder.embed(CAT)


# --- all-MiniLM-L6-v2 ---


def test_minilm_puts_paraphrases_closer_than_unrelated_sentences(minilm: SentenceTransformerEmbedder) -> None:
    cat, kitten, tax = minilm.embed([CAT, KITTEN, TAX])

    assert cat @ kitten > 0.5
    assert cat @ kitten > cat @ tax + 0.4
    assert cat @ kitten > kitten @ tax + 0.4


def test_minilm_is_named_for_the_packaged_model(minilm: SentenceTransformerEmbedder) -> None:
    assert minilm.name == "all-MiniLM-L6-v2"


def test_minilm_loads_nothing_until_the_first_text() -> None:
    embedder = SentenceTransformerEmbedder(packaged_model_path())

    embedder.embed([])

    assert not embedder.is_loaded


def test_minilm_loads_once_and_later_embeds_reuse_the_model(settings, fresh_get_embedder: None) -> None:
    settings.EMBEDDING_BACKEND = "minilm"
    settings.EMBEDDING_MODEL_PATH = ""
    start = threading.Barrier(4)
    seen: list[tuple[Embedder, object]] = []

    def first_request() -> None:
        start.wait()
        embedder = get_embedder()
        embedder.embed([CAT])
        assert isinstance(embedder, SentenceTransformerEmbedder)
        seen.append((embedder, embedder.model))

    threads = [threading.Thread(target=first_request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    embedder = get_embedder()
    assert isinstance(embedder, SentenceTransformerEmbedder)
    model = embedder.model
    embedder.embed([KITTEN, TAX])

    assert len(seen) == 4
    assert all(e is embedder and m is model for e, m in seen)
    assert embedder.model is model
    assert embedder.name == PACKAGED_MODEL_NAME


def test_model_path_setting_names_the_embedder_after_its_directory(
    settings, fresh_get_embedder: None, tmp_path: Path, minilm: SentenceTransformerEmbedder
) -> None:
    model_dir = tmp_path / "my-minilm"
    model_dir.symlink_to(packaged_model_path(), target_is_directory=True)
    settings.EMBEDDING_BACKEND = "auto"
    settings.EMBEDDING_MODEL_PATH = str(model_dir)

    embedder = get_embedder()

    assert embedder.name == "my-minilm"
    np.testing.assert_allclose(embedder.embed_one(CAT), minilm.embed_one(CAT), atol=1e-6)


def test_a_missing_model_directory_is_a_configuration_error(tmp_path: Path) -> None:
    embedder = SentenceTransformerEmbedder(tmp_path / "nowhere")

    with pytest.raises(ImproperlyConfigured, match="nowhere does not exist"):
        embedder.embed([CAT])


# --- The hashed fallback ---


def test_hashed_ranks_a_near_duplicate_above_an_unrelated_text(hashed: HashedNgramEmbedder) -> None:
    query = hashed.embed_one("Remind me to renew the TLS certificate for the mail server")
    near, unrelated = hashed.embed(
        ["remind me: renew the mail server's TLS certificates", "Quarterly tax filing deadlines are in April"]
    )

    assert query @ near > 0.6
    assert query @ near > query @ unrelated + 0.4


def test_hashed_ignores_case_spacing_and_punctuation(hashed: HashedNgramEmbedder) -> None:
    np.testing.assert_array_equal(
        hashed.embed_one("The cat sat on the mat"), hashed.embed_one("  the CAT\nsat on the mat.")
    )


def test_hashed_empty_text_is_one_fixed_unit_vector_far_from_real_text(hashed: HashedNgramEmbedder) -> None:
    empty, blank, cat, tax = hashed.embed(["", " \t\n ", CAT, TAX])

    np.testing.assert_array_equal(empty, blank)
    assert np.linalg.norm(empty) == pytest.approx(1.0, abs=1e-6)
    assert abs(empty @ cat) < 0.2
    assert abs(empty @ tax) < 0.2


def test_hashed_vectors_are_identical_in_processes_with_different_hash_seeds(hashed: HashedNgramEmbedder) -> None:
    code = (
        "import sys\n"
        "from apps.memory.embeddings import HashedNgramEmbedder\n"
        f"sys.stdout.write(HashedNgramEmbedder().embed({TEXTS!r}).tobytes().hex())\n"
    )

    first = run_python(code, PYTHONHASHSEED="1").stdout
    second = run_python(code, PYTHONHASHSEED="2").stdout

    assert first == second
    assert bytes.fromhex(first) == hashed.embed(TEXTS).tobytes()


def test_hashed_vector_of_a_word_is_pinned_so_changing_the_algorithm_needs_a_new_name(
    hashed: HashedNgramEmbedder,
) -> None:
    # If this fails on purpose, give the embedder a new name: stored vectors of the old one are not comparable.
    weight = 1 / np.sqrt(18)
    expected = np.zeros(DIMENSIONS)
    expected[[34, 59, 105, 135, 156, 176, 308, 322, 338]] = weight
    expected[[48, 72, 241, 242, 299]] = -weight
    expected[70] = 2 * weight

    assert hashed.name == "hashed-ngram-v1"
    np.testing.assert_allclose(hashed.embed_one("memory"), expected, atol=1e-6)


def test_hashed_embeds_at_least_2000_short_texts_per_second(hashed: HashedNgramEmbedder) -> None:
    texts = [
        f"Note {i}: deploy server {i % 97} after migration {i * 7919 % 1000}, then check the logs" for i in range(2000)
    ]
    timings = []
    for _ in range(3):  # the best of three, so a busy machine does not fail the test
        started = time.perf_counter()
        hashed.embed(texts)
        timings.append(time.perf_counter() - started)

    assert min(timings) < 1.0, f"{len(texts) / min(timings):.0f} texts/s"


# --- Choosing the embedder ---


def test_hashed_backend_setting_chooses_the_fallback(settings, fresh_get_embedder: None) -> None:
    settings.EMBEDDING_BACKEND = "hashed"

    assert get_embedder().name == "hashed-ngram-v1"


def test_an_unknown_backend_is_a_configuration_error(settings, fresh_get_embedder: None) -> None:
    settings.EMBEDDING_BACKEND = "word2vec"

    with pytest.raises(ImproperlyConfigured, match="EMBEDDING_BACKEND must be one of"):
        get_embedder()


BLOCK_SENTENCE_TRANSFORMERS = (
    "import sys\n"
    "sys.modules['sentence_transformers'] = None  # this process cannot import the real library\n"
    "from django.conf import settings\n"
    "settings.configure(EMBEDDING_BACKEND={backend!r})\n"
    "from apps.memory.embeddings import get_embedder\n"
)


def test_auto_falls_back_to_hashed_with_a_warning_when_sentence_transformers_cannot_be_imported() -> None:
    result = run_python(BLOCK_SENTENCE_TRANSFORMERS.format(backend="auto") + "print(get_embedder().name)\n")

    assert result.stdout.strip() == "hashed-ngram-v1"
    assert "sentence-transformers cannot be imported" in result.stderr


def test_minilm_backend_without_sentence_transformers_says_what_to_install() -> None:
    code = BLOCK_SENTENCE_TRANSFORMERS.format(backend="minilm") + (
        "from django.core.exceptions import ImproperlyConfigured\n"
        "try:\n"
        "    get_embedder()\n"
        "except ImproperlyConfigured as exc:\n"
        "    print(exc)\n"
    )

    assert "pip install -r requirements/ml.txt" in run_python(code).stdout


def test_auto_chooses_minilm_when_sentence_transformers_is_installed(settings, fresh_get_embedder: None) -> None:
    settings.EMBEDDING_BACKEND = "auto"
    settings.EMBEDDING_MODEL_PATH = ""

    embedder = get_embedder()

    assert isinstance(embedder, SentenceTransformerEmbedder)
    assert embedder.name == "all-MiniLM-L6-v2"
    assert not embedder.is_loaded


def test_importing_the_module_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import apps.memory.embeddings\n"
        "print('torch' in sys.modules, 'sentence_transformers' in sys.modules)\n"
    )

    assert run_python(code).stdout.split() == ["False", "False"]
