"""Prompts fitted to each model's context window (apps.providers.context, windows, and the router's retry)."""

import pytest

from apps.providers import router
from apps.providers.context import DoesNotFit, Fitted, Prompt, estimate_tokens, fit, shrink_after
from apps.providers.models import Provider, ProviderMetrics, ProviderRequest
from tests.providers.factories import ProviderFactory


def turn(i: int, words: int = 40) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"question {i} " + "word " * words},
        {"role": "assistant", "content": f"answer {i} " + "word " * words},
    ]


def conversation(turns: int, words: int = 40) -> list[dict[str, str]]:
    return [message for i in range(turns) for message in turn(i, words)]


def test_estimates_err_on_the_high_side_for_english_and_count_cjk_by_character():
    # SmolLM2 reads "The capital of France is Paris." as 7 tokens; GPT tokenizers about the same.
    assert estimate_tokens("The capital of France is Paris.") >= 7
    assert estimate_tokens("東京は日本の首都です") == 10
    assert estimate_tokens("") == 0


def test_the_newest_turns_that_fit_are_sent_and_the_oldest_dropped():
    prompt = Prompt(messages=[{"role": "user", "content": "and now?"}], system="Be brief.", history=conversation(30))
    fitted = fit(prompt, window=512)
    assert fitted.history_sent + fitted.history_dropped == 60
    assert 0 < fitted.history_sent < 60
    sent = fitted.messages[1:-1]
    # The most recent turns, in order, starting with the user's side of a turn.
    assert sent == conversation(30)[-len(sent) :]
    assert sent[0]["role"] == "user"
    assert fitted.messages[0] == {"role": "system", "content": "Be brief."}
    assert fitted.messages[-1]["content"] == "and now?"
    assert fitted.prompt_tokens + fitted.max_tokens <= 512


def test_the_reply_gets_the_room_left_and_at_least_its_reserve():
    short = fit(Prompt(messages=[{"role": "user", "content": "hi"}]), window=2048)
    assert short.max_tokens == 2048 - short.prompt_tokens
    full = fit(Prompt(messages=[{"role": "user", "content": "hi"}], history=conversation(50)), window=2048)
    assert full.max_tokens >= 2048 // 4
    assert fit(Prompt(messages=[{"role": "user", "content": "hi"}], max_tokens=64), window=2048).max_tokens == 64


def test_a_message_larger_than_the_window_does_not_fit_and_says_by_how_much():
    with pytest.raises(DoesNotFit) as caught:
        fit(Prompt(messages=[{"role": "user", "content": "word " * 2000}]), window=512)
    assert "context is 512" in str(caught.value)


def test_context_pieces_go_in_best_first_within_their_share():
    pieces = [f"- memory {i}: " + "fact " * 30 for i in range(20)]
    fitted = fit(
        Prompt(
            messages=[{"role": "user", "content": "hi"}],
            system="You are Timmy.",
            context=pieces,
            context_heading="Remembered",
        ),
        window=1024,
    )
    system = fitted.messages[0]["content"]
    assert system.startswith("You are Timmy.\n\nRemembered:\n- memory 0")
    assert 0 < fitted.context_sent < 20
    assert f"- memory {fitted.context_sent - 1}:" in system and f"- memory {fitted.context_sent}:" not in system
    assert estimate_tokens(system) <= 1024 * 0.25 + estimate_tokens("You are Timmy.") + 10


def test_after_a_refusal_the_servers_figures_shrink_the_next_fit():
    fitted = Fitted(messages=[], max_tokens=100, window=512, prompt_tokens=412)
    # OpenAI / llama.cpp server wording: the count covers the prompt and max_tokens.
    shrink = shrink_after(
        "This model's maximum context length is 512 tokens. However, you requested 612 tokens (512 in the messages, "
        "100 in the completion).",
        fitted,
        scale=1.0,
    )
    assert shrink.window == 512 and shrink.scale == pytest.approx(512 / 412 * 1.1)
    # A window other than the one we fitted to: the server's, with a margin.
    assert shrink_after("maximum context length is 256 tokens", fitted, scale=1.0).window == 256
    # No figures at all.
    assert shrink_after("the input length exceeds the context length", fitted, scale=1.0).scale == 1.5


def ollama(url: str, **fields: object) -> Provider:
    return ProviderFactory(name="ollama", kind=Provider.Kind.OLLAMA, base_url=url, priority=1, **fields)


def test_ollama_is_told_the_window_it_says_capped_by_the_default(db, ollama_server, settings):
    settings.DEFAULT_CONTEXT_TOKENS = 4096
    provider = ollama(ollama_server.url)
    router.complete([{"role": "user", "content": "hi"}])
    # llama3.2 is trained for 128k; its cache at that size would not fit a small machine.
    assert ollama_server.chats[-1]["options"]["num_ctx"] == 4096
    metrics = ProviderMetrics.objects.get(provider=provider)
    assert (metrics.context_tokens, metrics.context_source) == (4096, "server")


def test_a_modelfile_num_ctx_is_used_and_the_admins_value_wins_over_both(db, ollama_server):
    ollama_server.num_ctx = 1024
    provider = ollama(ollama_server.url)
    router.complete([{"role": "user", "content": "hi"}])
    assert ollama_server.chats[-1]["options"]["num_ctx"] == 1024
    Provider.objects.filter(pk=provider.pk).update(context_tokens=8192)
    router.complete([{"role": "user", "content": "hi"}])
    assert ollama_server.chats[-1]["options"]["num_ctx"] == 8192


def test_a_long_conversation_is_fitted_again_after_llama_cpp_refuses_it_and_answered_on_the_same_server(
    db, llama_cpp_server
):
    # llama-cpp-python's server does not say its window (256 here) until it refuses a prompt, in OpenAI's words.
    provider = ProviderFactory(
        name="llamacpp", kind=Provider.Kind.OPENAI, base_url=llama_cpp_server.url, model="tiny", priority=1
    )
    prompt = Prompt(
        messages=[{"role": "user", "content": "and now?"}], history=conversation(12, words=30), max_tokens=8
    )
    completion = router.complete(prompt)
    assert completion.provider == "llamacpp"
    assert completion.fitted is not None and completion.fitted.window == 256
    assert completion.fitted.history_dropped > 0
    outcomes = list(
        ProviderRequest.objects.filter(provider=provider).order_by("id").values_list("outcome", "error_class")
    )
    assert outcomes == [("failure", "context_length"), ("success", "")]
    assert ProviderMetrics.objects.get(provider=provider).consecutive_failures == 0
    # Learned: the next request is fitted to 256 at once.
    router.complete(prompt)
    assert ProviderRequest.objects.filter(provider=provider, outcome="failure").count() == 1


def test_a_reply_that_needs_room_keeps_it_and_the_oldest_history_goes_first():
    prompt = Prompt(messages=[{"role": "user", "content": "and now?"}], history=conversation(30), reply_min_tokens=1024)
    fitted = fit(prompt, window=2048)
    assert fitted.max_tokens >= 1024 and fitted.history_dropped > 0
    # Never more than half a small window.
    assert fit(Prompt(messages=[{"role": "user", "content": "hi"}], reply_min_tokens=4096), window=512).max_tokens < 512
