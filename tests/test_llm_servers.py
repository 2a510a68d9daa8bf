"""The loopback LLM servers speak their protocols as the real `ollama` and `openai` clients expect."""

import threading
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.llm_servers import (
    CONTEXT_LENGTH_ERROR,
    LlamaCppServer,
    OllamaServer,
    connect_timeout_url,
    refused_url,
)

SHORT = httpx.Timeout(0.3, connect=0.3)
USER = [{"role": "user", "content": "hello there"}]
OPENAI_USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
OPENAI_LONG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello world " * 200}]


def openai_client(base_url: str, timeout: float = 60) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=timeout)


# Ollama


def test_ollama_chat_echoes_the_last_user_message(ollama_server: OllamaServer) -> None:
    messages = [{"role": "system", "content": "be brief"}, *USER]
    client = ollama.Client(host=ollama_server.url)

    response = client.chat(model="llama3.2", messages=messages, options={"num_predict": 8})

    assert response.message.role == "assistant"
    assert response.message.content == "Echo: hello there"
    assert response.done and response.done_reason == "stop"
    assert response.eval_count == 3 and response.prompt_eval_count
    assert ollama_server.requests["/api/chat"] == 1
    assert ollama_server.chats[0]["options"] == {"num_predict": 8}
    assert ollama_server.chats[0]["stream"] is False


def test_ollama_chat_streams_the_echo_word_by_word(ollama_server: OllamaServer) -> None:
    parts = list(ollama.Client(host=ollama_server.url).chat(model="llama3.2", messages=USER, stream=True))

    assert [p.message.content for p in parts] == ["Echo: ", "hello ", "there", ""]
    assert [p.done for p in parts] == [False, False, False, True]
    assert parts[-1].eval_count == 3 and parts[-1].done_reason == "stop"


def test_ollama_reply_may_be_a_function_of_the_messages(ollama_server: OllamaServer) -> None:
    ollama_server.reply = lambda messages: f"{len(messages)} messages"

    response = ollama.Client(host=ollama_server.url).chat(model="llama3.2", messages=USER * 2)

    assert response.message.content == "2 messages"


def test_ollama_client_reuses_its_connection(ollama_server: OllamaServer) -> None:
    client = ollama.Client(host=ollama_server.url)
    client.chat(model="llama3.2", messages=USER)
    list(client.chat(model="llama3.2", messages=USER, stream=True))
    client.list()

    assert ollama_server.connections == 1


def test_ollama_list_and_version(ollama_server: OllamaServer) -> None:
    ollama_server.models = ["llama3.2", "qwen2.5:0.5b"]
    client = ollama.Client(host=ollama_server.url)

    assert [m.model for m in client.list().models] == ["llama3.2", "qwen2.5:0.5b"]
    assert httpx.get(f"{ollama_server.url}/api/version").json() == {"version": "0.0.0-test"}
    assert ollama_server.requests["/api/tags"] == 1


def test_ollama_server_error_raises_response_error_500(ollama_server: OllamaServer) -> None:
    ollama_server.mode = "error500"

    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=ollama_server.url).chat(model="llama3.2", messages=USER)

    assert raised.value.status_code == 500


def test_ollama_stream_error_raises_response_error_when_iterated(ollama_server: OllamaServer) -> None:
    ollama_server.mode = "unauthorized"
    stream = ollama.Client(host=ollama_server.url).chat(model="llama3.2", messages=USER, stream=True)

    with pytest.raises(ollama.ResponseError) as raised:
        next(stream)

    assert (raised.value.status_code, raised.value.error) == (401, "unauthorized")


@pytest.mark.parametrize("mode", ["normal", "not_found"])
def test_ollama_unknown_model_raises_response_error_404(ollama_server: OllamaServer, mode: str) -> None:
    ollama_server.mode = mode
    model = "llama3.2" if mode == "not_found" else "missing"

    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=ollama_server.url).chat(model=model, messages=USER)

    assert raised.value.status_code == 404
    assert raised.value.error == f'model "{model}" not found, try pulling it first'


def test_ollama_prompt_too_long_raises_response_error_400(ollama_server: OllamaServer) -> None:
    ollama_server.mode = "context_length"

    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=ollama_server.url).chat(model="llama3.2", messages=USER)

    assert (raised.value.status_code, raised.value.error) == (400, CONTEXT_LENGTH_ERROR)


def test_ollama_refused_connection_raises_connection_error() -> None:
    # ollama's Client._request_raw turns httpx.ConnectError into the builtin ConnectionError
    # ("Failed to connect to Ollama. ..."), but only for non-streaming calls: the streaming path
    # (Client._request(stream=True)) lets httpx.ConnectError through, and only when the iterator is first advanced.
    client = ollama.Client(host=refused_url())

    with pytest.raises(ConnectionError, match="Failed to connect to Ollama"):
        client.chat(model="llama3.2", messages=USER)
    stream = client.chat(model="llama3.2", messages=USER, stream=True)
    with pytest.raises(httpx.ConnectError):
        next(stream)


def test_ollama_connect_timeout_raises_httpx_connect_timeout() -> None:
    with connect_timeout_url() as url:
        started = time.monotonic()
        with pytest.raises(httpx.ConnectTimeout):
            ollama.Client(host=url, timeout=SHORT).chat(model="llama3.2", messages=USER)

    assert time.monotonic() - started < 2


def test_ollama_hanging_server_raises_httpx_read_timeout(ollama_server: OllamaServer) -> None:
    ollama_server.mode = "hang"
    started = time.monotonic()

    with pytest.raises(httpx.ReadTimeout):
        ollama.Client(host=ollama_server.url, timeout=SHORT).chat(model="llama3.2", messages=USER)

    assert time.monotonic() - started < 2


def test_ollama_broken_stream_raises_httpx_remote_protocol_error(ollama_server: OllamaServer) -> None:
    ollama_server.mode = "break_stream"
    stream = ollama.Client(host=ollama_server.url).chat(model="llama3.2", messages=USER, stream=True)

    assert next(stream).message.content == "Echo: "
    with pytest.raises(httpx.RemoteProtocolError):
        next(stream)


def test_ollama_slow_mode_delays_each_chunk(ollama_server: OllamaServer) -> None:
    ollama_server.mode, ollama_server.delay = "slow", 0.05
    started = time.monotonic()

    parts = list(ollama.Client(host=ollama_server.url).chat(model="llama3.2", messages=USER, stream=True))

    assert "".join(p.message.content or "" for p in parts) == "Echo: hello there"
    assert time.monotonic() - started >= 4 * 0.05  # before the answer, then between the 4 lines


def test_ollama_stop_returns_promptly_with_a_hanging_request_in_flight() -> None:
    server = OllamaServer(mode="hang").start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            ollama.Client(host=server.url, timeout=30).chat(model="llama3.2", messages=USER)
        except Exception as e:
            errors.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    while not server.requests["/api/chat"]:
        time.sleep(0.01)
    started = time.monotonic()
    server.stop()
    caller.join(timeout=5)

    assert time.monotonic() - started < 1
    assert [type(e) for e in errors] == [httpx.RemoteProtocolError]  # "Server disconnected without sending a response"


# llama.cpp (OpenAI-compatible)


def test_llama_cpp_answers_an_openai_chat_completion(llama_cpp_server: LlamaCppServer) -> None:
    completion = openai_client(llama_cpp_server.url).chat.completions.create(
        model=llama_cpp_server.model, messages=OPENAI_USER, max_tokens=8, temperature=0
    )

    assert completion.model == "tiny"
    assert completion.choices[0].message.role == "assistant"
    assert isinstance(completion.choices[0].message.content, str)
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 8


def test_llama_cpp_streams_an_openai_chat_completion_without_usage(llama_cpp_server: LlamaCppServer) -> None:
    stream = openai_client(llama_cpp_server.url).chat.completions.create(
        model=llama_cpp_server.model,
        messages=OPENAI_USER,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    # llama-cpp-python ignores stream_options: no chunk carries usage.
    assert all(chunk.usage is None for chunk in chunks)


def test_llama_cpp_prompt_over_context_raises_bad_request(llama_cpp_server: LlamaCppServer) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client(llama_cpp_server.url).chat.completions.create(
            model=llama_cpp_server.model, messages=OPENAI_LONG, max_tokens=8
        )

    assert raised.value.status_code == 400
    assert raised.value.code == "context_length_exceeded"
    assert "maximum context length is 256 tokens" in raised.value.message


def test_llama_cpp_streamed_prompt_over_context_ends_silently(llama_cpp_server: LlamaCppServer) -> None:
    # The server has already answered 200 when the model refuses the prompt: the SSE stream is just empty.
    stream = openai_client(llama_cpp_server.url).chat.completions.create(
        model=llama_cpp_server.model, messages=OPENAI_LONG, max_tokens=8, stream=True
    )

    assert list(stream) == []


def test_llama_cpp_with_api_key_refuses_a_wrong_key(tiny_gguf: Path) -> None:
    with LlamaCppServer(tiny_gguf, api_key="sk-right") as server:
        with pytest.raises(openai.AuthenticationError) as raised:
            openai_client(server.url).chat.completions.create(model=server.model, messages=OPENAI_USER, max_tokens=4)
        right = openai.OpenAI(base_url=server.url, api_key="sk-right", max_retries=0)
        completion = right.chat.completions.create(model=server.model, messages=OPENAI_USER, max_tokens=4)

    assert raised.value.status_code == 401
    assert completion.choices


def test_openai_transport_failures() -> None:
    # openai (3.x) wraps httpx2, its own fork of httpx, whose exceptions are not httpx's: ConnectError ->
    # APIConnectionError; any timeout -> APITimeoutError, a subclass. At run time it also
    # accepts an httpx.Timeout (converted), but its type hints want httpx2's.
    with pytest.raises(openai.APIConnectionError) as refused:
        openai_client(refused_url()).chat.completions.create(model="tiny", messages=OPENAI_USER)
    assert type(refused.value) is openai.APIConnectionError
    assert type(refused.value.__cause__).__name__ == "ConnectError"

    with connect_timeout_url() as url, pytest.raises(openai.APITimeoutError) as connect_timeout:
        openai_client(f"{url}/v1", timeout=0.3).chat.completions.create(model="tiny", messages=OPENAI_USER)
    assert type(connect_timeout.value.__cause__).__name__ == "ConnectTimeout"

    # The hang mode ignores the path, so it serves as any HTTP server that never answers.
    with OllamaServer(mode="hang") as hanging, pytest.raises(openai.APITimeoutError) as read_timeout:
        openai_client(f"{hanging.url}/v1", timeout=0.3).chat.completions.create(model="tiny", messages=OPENAI_USER)
    assert type(read_timeout.value.__cause__).__name__ == "ReadTimeout"
