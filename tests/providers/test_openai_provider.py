"""The OpenAI-compatible provider against the real llama.cpp server (a tiny random model: gibberish, quickly)."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.events.models import Event
from apps.providers import router
from apps.providers.models import Provider, ProviderMetrics, ProviderRequest
from apps.providers.services import provider_health_check
from tests.llm_servers import LlamaCppServer, refused_url
from tests.providers.factories import ProviderFactory

HELLO = [{"role": "user", "content": "hello"}]
SECRET = "sk-test-do-not-leak-4f1c9b7e2a"


def api(name: str, url: str, priority: int, model: str = "tiny") -> Provider:
    return ProviderFactory(
        name=name,
        kind=Provider.Kind.OPENAI,
        base_url=url,
        model=model,
        priority=priority,
        connect_timeout_seconds=1.0,
        read_timeout_seconds=30.0,
    )


def ollama(name: str, url: str, priority: int) -> Provider:
    return ProviderFactory(name=name, kind=Provider.Kind.OLLAMA, base_url=url, priority=priority)


@pytest.fixture
def keyed_server(tiny_gguf: Path) -> Iterator[LlamaCppServer]:
    with LlamaCppServer(tiny_gguf, api_key=SECRET) as server:
        yield server


def test_the_openai_provider_answers_through_llama_cpp_with_its_token_counts(db, llama_cpp_server):
    api("llamacpp", llama_cpp_server.url, 1)
    completion = router.complete(HELLO, max_tokens=8)
    assert (completion.provider, completion.model) == ("llamacpp", "tiny")
    assert completion.tokens_in > 0 and 0 < completion.tokens_out <= 8
    assert ProviderRequest.objects.get().outcome == "success"


def test_a_dead_local_daemon_fails_over_to_the_openai_compatible_server(db, llama_cpp_server):
    ollama("ollama", refused_url(), 1)
    api("llamacpp", llama_cpp_server.url, 2)
    assert router.complete(HELLO, max_tokens=4).provider == "llamacpp"
    [failover] = Event.objects.filter(event_type="provider.failover")
    assert (failover.data["from"], failover.data["to"]) == ("ollama", "llamacpp")


def test_the_openai_provider_streams_through_llama_cpp(db, llama_cpp_server):
    api("llamacpp", llama_cpp_server.url, 1)
    stream = router.complete(HELLO, max_tokens=8, stream=True)
    chunks = list(stream)
    assert chunks and stream.completion is not None
    assert stream.completion.content == "".join(chunks)
    assert ProviderRequest.objects.get().time_to_first_token_ms is not None


def test_a_prompt_too_long_for_the_context_fails_over_without_counting_against_the_provider(
    db, llama_cpp_server, ollama_server
):
    first = api("llamacpp", llama_cpp_server.url, 1)
    ollama("ollama", ollama_server.url, 2)
    too_long = [{"role": "user", "content": "word " * 2000}]
    assert router.complete(too_long, max_tokens=8).provider == "ollama"
    assert ProviderRequest.objects.get(provider=first).error_class == "context_length"
    assert ProviderMetrics.objects.get(provider=first).consecutive_failures == 0


def test_an_empty_stream_fails_over_to_the_next_provider(db, llama_cpp_server, ollama_server):
    # llama.cpp answers a streamed prompt that does not fit with an empty 200 stream, not an error.
    api("llamacpp", llama_cpp_server.url, 1)
    ollama("ollama", ollama_server.url, 2)
    stream = router.complete([{"role": "user", "content": "word " * 2000}], max_tokens=8, stream=True)
    assert stream.provider == "ollama" and "".join(stream).startswith("Echo: word")


def test_a_rejected_key_is_a_configuration_error_and_the_key_is_never_stored_or_shown(
    db, keyed_server, ollama_server, monkeypatch
):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET[::-1])  # wrong key
    first = api("llamacpp", keyed_server.url, 1)
    ollama("ollama", ollama_server.url, 2)
    assert router.complete(HELLO, max_tokens=4).provider == "ollama"
    [failover] = Event.objects.filter(event_type="provider.failover")
    assert failover.data["reason"].startswith("configuration error:")
    assert "OPENAI_API_KEY" in failover.data["reason"]
    assert ProviderMetrics.objects.get(provider=first).last_error_class == "auth"

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # the right key, read from the environment per request
    assert router.complete(HELLO, max_tokens=4).provider == "llamacpp"
    check = provider_health_check(first)
    assert check.ok, check.message

    stored = json.dumps(
        [
            list(Provider.objects.values()),
            list(ProviderMetrics.objects.values()),
            list(ProviderRequest.objects.values()),
            list(Event.objects.values()),
        ],
        default=str,
    )
    for key in (SECRET, SECRET[::-1]):
        assert key not in stored


def test_the_health_check_says_when_the_model_is_unknown(db, ollama_server):
    provider = ollama("ollama", ollama_server.url, 1)
    Provider.objects.filter(pk=provider.pk).update(model="mistral")
    provider.refresh_from_db()
    check = provider_health_check(provider)
    assert not check.ok and check.error_class == "not_found"
    assert "ollama pull mistral" in check.message
    assert ProviderMetrics.objects.get(provider=provider).last_error_class == "not_found"
