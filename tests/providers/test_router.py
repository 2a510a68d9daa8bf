"""The cascade router against real loopback servers that speak Ollama's wire protocol."""

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from apps.events.models import Event
from apps.providers import router
from apps.providers.models import CircuitState, Provider, ProviderMetrics, ProviderRequest
from tests.llm_servers import OllamaServer, connect_timeout_url, refused_url
from tests.providers.conftest import RECOVERY, THRESHOLD
from tests.providers.factories import ProviderFactory

HELLO = [{"role": "user", "content": "hello there"}]


class Clock:
    """A clock the test moves by hand, for breaker transitions over time."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(t0: datetime) -> Clock:
    return Clock(t0)


@pytest.fixture
def backup_server() -> Iterator[OllamaServer]:
    with OllamaServer(reply="from the backup") as running:
        yield running


def ollama(name: str, url: str, priority: int, **fields: object) -> Provider:
    fields = {"connect_timeout_seconds": 1.0, "read_timeout_seconds": 2.0, **fields}
    return ProviderFactory(name=name, kind=Provider.Kind.OLLAMA, base_url=url, priority=priority, **fields)


def events(event_type: str) -> list[Event]:
    return list(Event.objects.filter(event_type=event_type).order_by("id"))


def metrics(provider: Provider) -> ProviderMetrics:
    return ProviderMetrics.objects.get(provider=provider)


def test_complete_answers_from_the_first_provider_and_records_the_request(db, ollama_server, clock):
    first = ollama("local", ollama_server.url, 1)
    completion = router.complete(HELLO, clock=clock)
    assert completion.content == "Echo: hello there"
    assert (completion.provider, completion.model) == ("local", "llama3.2")
    assert completion.tokens_in > 0 and completion.tokens_out > 0
    request = ProviderRequest.objects.get()
    assert (request.provider, request.outcome, request.error_class) == (first, "success", "")
    assert (request.tokens_in, request.tokens_out) == (completion.tokens_in, completion.tokens_out)
    assert request.started_at == clock.now - timedelta(milliseconds=request.latency_ms)
    assert (metrics(first).total_requests, metrics(first).successful_requests) == (1, 1)


def test_system_prompt_goes_first_and_max_tokens_limits_the_reply(db, ollama_server):
    ollama("local", ollama_server.url, 1)
    router.complete(HELLO, system_prompt="You are Timmy.", max_tokens=64)
    sent = ollama_server.chats[-1]
    assert sent["messages"][0] == {"role": "system", "content": "You are Timmy."}
    assert sent["messages"][1] == HELLO[0]
    assert sent["options"]["num_predict"] == 64


def test_a_refused_first_provider_fails_over_to_the_next_with_a_failover_event(db, backup_server, clock):
    dead = ollama("local", refused_url(), 1)
    ollama("backup", backup_server.url, 2)
    completion = router.complete(HELLO, clock=clock)
    assert (completion.content, completion.provider) == ("from the backup", "backup")
    [failover] = events("provider.failover")
    assert failover.data["from"] == "local" and failover.data["to"] == "backup"
    assert failover.data["error_class"] == "connection" and "cannot connect" in failover.data["reason"]
    assert metrics(dead).consecutive_failures == 1
    assert ProviderRequest.objects.filter(provider=dead, error_class="connection").count() == 1


def test_disabled_providers_are_never_called(db, ollama_server, backup_server):
    ollama("local", ollama_server.url, 1, enabled=False)
    ollama("backup", backup_server.url, 2)
    assert router.complete(HELLO).provider == "backup"
    assert ollama_server.requests["/api/chat"] == 0


@pytest.mark.parametrize(
    ("mode", "error_class", "counts", "configuration"),
    [
        ("error500", "server_error", True, False),
        ("hang", "timeout", True, False),
        ("unauthorized", "auth", True, True),
        ("not_found", "not_found", True, True),
        ("context_length", "context_length", False, False),
        ("bad_request", "bad_request", False, False),
    ],
)
def test_each_failure_class_fails_over_and_only_provider_faults_count_for_the_breaker(
    db, ollama_server, backup_server, mode, error_class, counts, configuration
):
    ollama_server.mode = mode
    first = ollama("local", ollama_server.url, 1, read_timeout_seconds=0.3)
    ollama("backup", backup_server.url, 2)
    assert router.complete(HELLO).provider == "backup"
    records = list(ProviderRequest.objects.filter(provider=first))
    # A prompt too long is fitted again, smaller, and retried once on the same provider before failing over.
    assert len(records) == (2 if error_class == "context_length" else 1)
    assert {(r.outcome, r.error_class) for r in records} == {("failure", error_class)}
    state = metrics(first)
    assert state.consecutive_failures == (1 if counts else 0)
    assert state.last_error_class == error_class
    [failover] = events("provider.failover")
    assert failover.data["reason"].startswith("configuration error:") == configuration


def test_a_dead_daemon_is_told_apart_from_a_slow_model_by_separate_timeouts(db, ollama_server, backup_server):
    ollama_server.mode = "hang"
    with connect_timeout_url() as unreachable:
        ollama("unreachable", unreachable, 1, connect_timeout_seconds=0.2, read_timeout_seconds=30)
        ollama("hanging", ollama_server.url, 2, connect_timeout_seconds=0.2, read_timeout_seconds=0.5)
        ollama("backup", backup_server.url, 3)
        assert router.complete(HELLO).provider == "backup"
    reasons = {e.data["from"]: e.data["reason"] for e in events("provider.failover")}
    # The connect timeout gave up long before the 30 s read timeout of the same provider.
    assert reasons["unreachable"].startswith("connect timeout")
    assert reasons["hanging"].startswith("read timeout")
    assert ProviderRequest.objects.get(provider__name="unreachable").latency_ms < 5000


def test_when_every_provider_fails_the_error_names_each_one_and_why_and_is_logged(db, ollama_server):
    ollama_server.mode = "error500"
    ollama("local", refused_url(), 1)
    ollama("remote", ollama_server.url, 2)
    ollama("spare", refused_url(), 3, enabled=False)
    with pytest.raises(router.AllProvidersFailed) as caught:
        router.complete(HELLO)
    message = str(caught.value)
    assert message.startswith("No LLM provider answered.")
    assert "local: cannot connect" in message
    assert "remote: Ollama at" in message and "500" in message
    assert "spare: disabled" in message
    [error] = events("system.error")
    assert [p["provider"] for p in error.data["providers"]] == ["local", "remote", "spare"]
    assert len(events("provider.failover")) == 1  # local → remote; nothing after the last


def test_with_no_provider_rows_the_defaults_from_the_environment_are_created_and_tried(db, settings):
    settings.OLLAMA_HOST = refused_url()
    with pytest.raises(router.AllProvidersFailed) as caught:
        router.complete(HELLO)
    assert set(Provider.objects.values_list("name", flat=True)) == {"ollama", "airllm", "openai", "embedded"}
    assert "ollama: cannot connect" in str(caught.value)
    assert "airllm: disabled (set AIRLLM_MODEL_PATH" in str(caught.value)
    # No model host in this test: the embedded provider says how to start one.
    assert "embedded: the embedded model host is not running" in str(caught.value)
    assert "`make run` starts it" in str(caught.value)


def test_a_provider_that_failed_once_is_tried_again_on_the_next_request(db, ollama_server, backup_server):
    first = ollama("local", ollama_server.url, 1)
    ollama("backup", backup_server.url, 2)
    ollama_server.mode = "error500"
    assert router.complete(HELLO).provider == "backup"
    ollama_server.mode = "normal"
    assert router.complete(HELLO).provider == "local"
    assert metrics(first).consecutive_failures == 0


def test_the_breaker_opens_at_the_threshold_skips_without_a_request_and_recovers_by_probe(
    db, ollama_server, backup_server, clock
):
    first = ollama("local", ollama_server.url, 1)
    ollama("backup", backup_server.url, 2)
    ollama_server.mode = "error500"
    for _ in range(THRESHOLD):
        assert router.complete(HELLO, clock=clock).provider == "backup"
    assert metrics(first).circuit_state == CircuitState.OPEN
    assert len(events("provider.circuit_opened")) == 1

    calls = ollama_server.requests["/api/chat"]
    clock.advance(RECOVERY - 1)
    assert router.complete(HELLO, clock=clock).provider == "backup"
    assert ollama_server.requests["/api/chat"] == calls  # open: skipped without a request

    ollama_server.mode = "normal"
    clock.advance(2)  # past the recovery time: one probe goes through, succeeds, closes the breaker
    assert router.complete(HELLO, clock=clock).provider == "local"
    assert metrics(first).circuit_state == CircuitState.CLOSED
    assert [e.data["reason"] for e in events("provider.circuit_closed")] == ["a request succeeded"]


def test_a_failed_probe_opens_the_breaker_again_for_another_recovery_period(db, ollama_server, backup_server, clock):
    first = ollama("local", ollama_server.url, 1)
    ollama("backup", backup_server.url, 2)
    ollama_server.mode = "error500"
    for _ in range(THRESHOLD):
        router.complete(HELLO, clock=clock)
    clock.advance(RECOVERY + 1)
    assert router.complete(HELLO, clock=clock).provider == "backup"  # the probe failed
    state = metrics(first)
    assert (state.circuit_state, state.opened_at) == (CircuitState.OPEN, clock.now)
    assert events("provider.circuit_opened")[-1].data["reason"] == "the half-open probe failed"


def test_the_breaker_opened_by_another_process_is_honoured_here(transactional_db, ollama_server, run_manage):
    ollama("local", refused_url(), 1)
    ollama("backup", ollama_server.url, 2)
    opener = (
        "from apps.providers import router\n"
        f"for _ in range({THRESHOLD}):\n"
        "    print(router.complete([{'role': 'user', 'content': 'hi'}]).provider)\n"
    )
    result = run_manage("shell", "--no-imports", "-c", opener, env={"CIRCUIT_BREAKER_THRESHOLD": str(THRESHOLD)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["backup"] * THRESHOLD
    assert ProviderMetrics.objects.get(provider__name="local").circuit_state == CircuitState.OPEN
    router.complete(HELLO)
    # This process skipped the dead provider without trying it: no new failure was recorded.
    assert ProviderRequest.objects.filter(provider__name="local").count() == THRESHOLD


# --- streaming ---


def test_a_stream_yields_the_reply_in_chunks_and_records_time_to_first_token(db, ollama_server):
    ollama("local", ollama_server.url, 1)
    stream = router.complete([{"role": "user", "content": "one two three"}], stream=True)
    assert stream.provider == "local"
    chunks = list(stream)
    assert len(chunks) > 1 and "".join(chunks) == "Echo: one two three"
    assert stream.completion is not None and stream.completion.content == "Echo: one two three"
    record = ProviderRequest.objects.get()
    assert record.outcome == "success" and record.time_to_first_token_ms is not None
    assert record.tokens_out == stream.completion.tokens_out > 0


def test_a_stream_fails_over_while_nothing_has_been_sent(db, ollama_server, backup_server):
    ollama_server.mode = "error500"
    ollama("local", ollama_server.url, 1)
    ollama("backup", backup_server.url, 2)
    stream = router.complete(HELLO, stream=True)
    assert (stream.provider, "".join(stream)) == ("backup", "from the backup")
    assert len(events("provider.failover")) == 1


def test_a_stream_that_breaks_after_its_first_chunk_is_an_error_not_a_failover(db, ollama_server, backup_server):
    ollama_server.mode = "break_stream"
    first = ollama("local", ollama_server.url, 1)
    ollama("backup", backup_server.url, 2)
    stream = router.complete([{"role": "user", "content": "one two three four"}], stream=True)
    received = []
    with pytest.raises(router.StreamInterrupted) as caught:
        for chunk in stream:
            received.append(chunk)
    assert received and caught.value.partial == "".join(received)
    assert "local stopped answering mid-reply" in str(caught.value)
    assert backup_server.requests["/api/chat"] == 0
    assert ProviderRequest.objects.get(provider=first).outcome == "failure"
    assert not events("provider.failover")
