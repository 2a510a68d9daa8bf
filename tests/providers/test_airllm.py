"""AirLLM for real: SmolLM2-135M-Instruct, made into a model directory from the packaged GGUF (tests/airllm_model.py),
run layer by layer on the CPU in the model host, behind Ollama in the cascade."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.events.models import Event
from apps.providers import router
from apps.providers.models import CircuitState, Provider, ProviderMetrics, ProviderRequest
from apps.providers.services import provider_health_check, providers_ensure_defaults
from tests.llm_servers import ModelHostProcess, OllamaServer, refused_url

pytestmark = pytest.mark.airllm

CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
LONG = [{"role": "user", "content": "Write a very long story about a lighthouse keeper and her cat."}]


@pytest.fixture(scope="module")
def airllm_host() -> Iterator[ModelHostProcess]:
    """A model host of this module's own, so that the tests below that need a cold load get one."""
    with ModelHostProcess() as host:
        yield host


def on(host: ModelHostProcess, settings: Any) -> ModelHostProcess:
    settings.EMBEDDED_SOCKET = str(host.socket)
    return host


def airllm_after_ollama(settings: Any, model_dir: Path, **fields: Any) -> Provider:
    """The default cascade with Ollama down and AirLLM on `model_dir` answering next; the rest disabled."""
    settings.OLLAMA_HOST = refused_url()
    settings.AIRLLM_MODEL_PATH = str(model_dir)
    providers_ensure_defaults()
    Provider.objects.exclude(name__in=["ollama", "airllm"]).update(enabled=False)
    Provider.objects.filter(name="airllm").update(**fields)
    return Provider.objects.get(name="airllm")


def wait_until_loaded(host: ModelHostProcess, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        airllm = (host.health() or {}).get("airllm") or {}
        if airllm.get("models") and not airllm.get("loading"):
            return airllm
        time.sleep(0.1)
    raise AssertionError(f"AirLLM did not load: {host.log_tail()}")


def test_airllm_gives_the_tokens_plain_transformers_gives_without_its_per_layer_garbage_collection(airllm_dir):
    import torch
    from airllm import airllm_base
    from transformers import AutoModelForCausalLM

    from apps.providers.airllm_engine import AirLLMRunner, release_memory

    runner = AirLLMRunner(airllm_dir)
    # Our memory release replaces AirLLM's gc.collect() after every layer (35x slower here), and changes nothing else.
    assert airllm_base.clean_memory is release_memory
    prompt = runner.prompt_ids(CAPITAL)
    layered = runner.generate_ids(prompt, max_new_tokens=12)
    plain = AutoModelForCausalLM.from_pretrained(str(airllm_dir))
    with torch.inference_mode():
        whole = plain.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False, pad_token_id=2
        )
    assert layered[0].tolist() == whole[0].tolist()
    assert "Paris" in runner.tokenizer.decode(layered[0][prompt.shape[1] :])


def test_with_ollama_down_airllm_loads_cold_and_answers_within_its_read_timeout(db, settings, airllm_dir):
    with ModelHostProcess() as host:
        on(host, settings)
        airllm = airllm_after_ollama(settings, airllm_dir)
        assert airllm.read_timeout_seconds == settings.AIRLLM_READ_TIMEOUT_SECONDS == 1800
        assert not (host.health() or {})["airllm"]["models"]  # cold: nothing loaded yet
        started = time.monotonic()
        completion = router.complete(CAPITAL)
        seconds = time.monotonic() - started
        loaded = (host.health() or {})["airllm"]["models"]
    assert completion.provider == "airllm" and completion.model == str(airllm_dir)
    assert "paris" in completion.content.lower()
    [failover] = Event.objects.filter(event_type="provider.failover")
    assert (failover.data["from"], failover.data["to"]) == ("ollama", "airllm")
    [model] = loaded
    assert model["path"] == str(airllm_dir) and model["device"] == "cpu"
    # The load was part of this first request, well within the read timeout.
    assert 0 < model["load_seconds"] < seconds < airllm.read_timeout_seconds
    assert completion.tokens_in > 0 and completion.tokens_out > 0


def test_a_load_in_progress_is_slow_not_a_failure_of_the_breaker(db, settings, airllm_dir):
    backup = OllamaServer(reply="from the backup")
    with ModelHostProcess() as host, backup:
        on(host, settings)
        settings.CIRCUIT_BREAKER_THRESHOLD = 1  # one counted failure would open it
        airllm = airllm_after_ollama(settings, airllm_dir, read_timeout_seconds=0.3)
        Provider.objects.create(
            name="backup", kind=Provider.Kind.OLLAMA, base_url=backup.url, model="llama3.2", priority=9
        )
        completion = router.complete(CAPITAL)  # AirLLM is still importing torch and loading the model
        assert completion.provider == "backup"
        assert ProviderRequest.objects.get(provider=airllm).error_class == "busy"
        failover = Event.objects.get(event_type="provider.failover", data__from="airllm")
        assert "still loading" in failover.data["reason"]
        metrics = ProviderMetrics.objects.get(provider=airllm)
        assert (metrics.circuit_state, metrics.consecutive_failures) == (CircuitState.CLOSED, 0)
        wait_until_loaded(host)
        Provider.objects.filter(pk=airllm.pk).update(read_timeout_seconds=120)
        assert router.complete(CAPITAL).provider == "airllm"


def test_a_streamed_airllm_reply_comes_token_by_token_and_stop_ends_the_generation(
    db, settings, airllm_dir, airllm_host
):
    on(airllm_host, settings)
    airllm_after_ollama(settings, airllm_dir)
    stream = router.complete(LONG, stream=True)
    pieces = []
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 4:
            stream.stop()
    assert len(pieces) == 4 and all(pieces)
    assert stream.completion is not None and stream.completion.stopped
    # Stopped at once, not after the rest of a long story: the next answer is not kept waiting.
    started = time.monotonic()
    assert "paris" in router.complete(CAPITAL).content.lower()
    assert time.monotonic() - started < 15
    airllm = (airllm_host.health() or {})["airllm"]
    assert not airllm["generating"] and airllm["waiting"] == 0 and airllm["loads"] == 1


def test_the_health_check_and_the_window_come_from_the_model_directory(db, settings, airllm_dir, airllm_host):
    on(airllm_host, settings)
    airllm = airllm_after_ollama(settings, airllm_dir)
    check = provider_health_check(airllm)
    assert check.ok and str(airllm_dir) in check.message
    router.complete(CAPITAL)
    metrics = ProviderMetrics.objects.get(provider=airllm)
    # SmolLM2 was trained for 8,192 tokens (config.json's max_position_embeddings).
    assert (metrics.context_tokens, metrics.context_source) == (8192, "server")


def test_the_status_page_shows_airllm_load_time_and_speed(db, settings, airllm_dir, airllm_host, staff_client):
    on(airllm_host, settings)
    airllm_after_ollama(settings, airllm_dir)
    router.complete(CAPITAL)
    page = staff_client.get("/router/status").content.decode()
    assert "loaded on cpu in" in page and "tokens of context" in page
    assert 'class="airllm-rate"' in page and "tokens/s" in page


def test_a_directory_that_is_not_a_model_is_a_configuration_error_that_says_how_to_make_one(
    db, settings, tmp_path, airllm_host
):
    on(airllm_host, settings)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    airllm = airllm_after_ollama(settings, gguf)
    Provider.objects.filter(name="embedded").update(enabled=True)
    completion = router.complete(CAPITAL)
    assert completion.provider == "embedded"
    failover = Event.objects.filter(event_type="provider.failover", data__from="airllm").get()
    assert failover.data["error_class"] == "not_found"
    assert "is a file, not a model directory" in failover.data["reason"]
    assert "manage.py airllm_prepare" in failover.data["reason"]
    check = provider_health_check(airllm)
    assert not check.ok and "airllm_prepare" in check.message


def test_without_a_running_model_host_airllm_fails_over_saying_how_to_start_it(db, settings, tmp_path, ollama_server):
    settings.EMBEDDED_SOCKET = str(tmp_path / "none.sock")
    Provider.objects.create(name="airllm", kind=Provider.Kind.AIRLLM, model=str(tmp_path), priority=1)
    Provider.objects.create(
        name="local", kind=Provider.Kind.OLLAMA, base_url=ollama_server.url, model="llama3.2", priority=2
    )
    assert router.complete(CAPITAL).provider == "local"
    [failover] = Event.objects.filter(event_type="provider.failover")
    assert "not running" in failover.data["reason"] and "make run" in failover.data["reason"]
