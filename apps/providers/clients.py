"""One client per provider kind, over the real `ollama` and `openai` libraries, each turning its library's
errors into a `ProviderCallError` with an error class the router and the breaker understand.

Clients are cached per process and per configuration, so requests reuse their HTTP connections (a new
client costs more than the whole router); editing a provider in the admin changes its key and makes a new one.
"""

import functools
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import httpx
import httpx2
import ollama
import openai
from django.conf import settings
from openai.types.chat import ChatCompletionMessageParam

from apps.events.services import REDACTED
from apps.providers.models import Provider, ProviderRequest

ErrorClass = ProviderRequest.ErrorClass
# Classes that mean the provider is set up wrongly (bad key, unknown model): shown as such at once.
CONFIGURATION_ERRORS = frozenset({ErrorClass.AUTH, ErrorClass.NOT_FOUND})
# The OpenAI client refuses to start without a key; local OpenAI-compatible servers ignore it.
NO_KEY = "not-needed"
# Asking a server for its context window: it answers at once or not at all.
METADATA_TIMEOUT_SECONDS = 3.0


_URL_CREDENTIALS = re.compile(r"([a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)


def redact(text: str) -> str:
    """Text as it may be stored or shown: without the API key, nor the user:password@ of any URL in it."""
    text = _URL_CREDENTIALS.sub(r"\1", text)
    key = os.environ.get("OPENAI_API_KEY", "")
    return text.replace(key, REDACTED) if key else text


class ProviderCallError(Exception):
    def __init__(self, error_class: str, message: str) -> None:
        # Messages name the provider's URL and quote its answers: never let a credential ride along.
        message = redact(message)
        super().__init__(message)
        self.error_class = error_class
        self.message = message

    @property
    def is_configuration_error(self) -> bool:
        return self.error_class in CONFIGURATION_ERRORS

    @property
    def counts_for_breaker(self) -> bool:
        # A prompt too long for this model or a request it cannot take is not the provider's fault, nor is a queue
        # that is full for now: the next provider may take it, and this one stays in the rotation.
        return self.error_class not in (ErrorClass.CONTEXT_LENGTH, ErrorClass.BAD_REQUEST, ErrorClass.BUSY)


@dataclass(frozen=True)
class Reply:
    content: str
    model: str
    tokens_in: int
    tokens_out: int


@dataclass
class Chunk:
    """A piece of a streamed reply; the last one may carry the token counts instead of text."""

    text: str
    tokens_in: int | None = None
    tokens_out: int | None = None


class Client(Protocol):
    """`window` is the context the prompt was fitted to: a server that takes it per request (Ollama) gets it."""

    def complete(
        self, messages: list[dict[str, str]], *, max_tokens: int | None, window: int | None = None
    ) -> Reply: ...

    def stream(
        self, messages: list[dict[str, str]], *, max_tokens: int | None, window: int | None = None
    ) -> Iterator[Chunk]: ...

    def health(self) -> str: ...

    def context_window(self) -> int | None:
        """The model's context window as the server tells it, None when it does not say."""
        ...


def _is_context_length(message: str) -> bool:
    lowered = message.lower()
    return "context" in lowered and any(w in lowered for w in ("length", "window", "exceed", "too long", "size"))


def _status_error_class(status: int, message: str) -> str:
    if status in (401, 403):
        return ErrorClass.AUTH
    if status == 404:
        return ErrorClass.NOT_FOUND
    if status in (400, 413) and _is_context_length(message):
        return ErrorClass.CONTEXT_LENGTH
    if status in (400, 413, 422):
        return ErrorClass.BAD_REQUEST
    if status >= 500:
        return ErrorClass.SERVER_ERROR
    return ErrorClass.OTHER


def _transport_error(exc: BaseException, where: str) -> ProviderCallError:
    if isinstance(exc, httpx.TimeoutException):
        kind = "connect" if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout) else "read"
        return ProviderCallError(ErrorClass.TIMEOUT, f"{kind} timeout talking to {where}")
    if isinstance(exc, ConnectionError | httpx.ConnectError):
        return ProviderCallError(ErrorClass.CONNECTION, f"cannot connect to {where} (is it running?)")
    return ProviderCallError(ErrorClass.CONNECTION, f"lost the connection to {where}: {exc}")


def _estimate_tokens(text: str) -> int:
    # Only when a server does not count: about four characters a token for English text.
    return max(1, len(text) // 4) if text else 0


# --- Ollama ---


class OllamaClient:
    def __init__(self, *, host: str, model: str, timeout: httpx.Timeout) -> None:
        self.host = host
        self.model = model
        self.client = ollama.Client(host=host, timeout=timeout)

    def _error(self, exc: Exception) -> ProviderCallError:
        if isinstance(exc, ollama.ResponseError):
            message = f"Ollama at {self.host} answered {exc.status_code}: {exc.error}"
            if exc.status_code == 404:
                message += f" (is the model pulled? `ollama pull {self.model}`)"
            return ProviderCallError(_status_error_class(exc.status_code, exc.error), message)
        if isinstance(exc, httpx.TimeoutException | httpx.TransportError | ConnectionError):
            # The library turns httpx.ConnectError into the builtin ConnectionError.
            return _transport_error(exc, f"Ollama at {self.host}")
        return ProviderCallError(ErrorClass.OTHER, f"Ollama at {self.host}: {type(exc).__name__}: {exc}")

    def _options(self, max_tokens: int | None, window: int | None) -> dict[str, Any]:
        options: dict[str, Any] = {"num_predict": max_tokens} if max_tokens else {}
        if window:
            # Ollama cuts a longer prompt silently at its own num_ctx: tell it the window the prompt was fitted to.
            options["num_ctx"] = window
        return options

    def complete(self, messages: list[dict[str, str]], *, max_tokens: int | None, window: int | None = None) -> Reply:
        try:
            response = self.client.chat(model=self.model, messages=messages, options=self._options(max_tokens, window))
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError, ValueError) as exc:
            raise self._error(exc) from exc
        content = response.message.content or ""
        return Reply(
            content=content,
            model=response.model or self.model,
            tokens_in=response.prompt_eval_count or 0,
            tokens_out=response.eval_count or _estimate_tokens(content),
        )

    def stream(
        self, messages: list[dict[str, str]], *, max_tokens: int | None, window: int | None = None
    ) -> Iterator[Chunk]:
        try:
            for part in self.client.chat(
                model=self.model, messages=messages, options=self._options(max_tokens, window), stream=True
            ):
                if part.done:
                    yield Chunk(part.message.content or "", part.prompt_eval_count, part.eval_count)
                else:
                    yield Chunk(part.message.content or "")
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError, ValueError) as exc:
            raise self._error(exc) from exc

    def health(self) -> str:
        try:
            models = [m.model for m in self.client.list().models]
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError, ValueError) as exc:
            raise self._error(exc) from exc
        wanted = {self.model, f"{self.model}:latest"}
        if not wanted & set(models):
            raise ProviderCallError(
                ErrorClass.NOT_FOUND,
                f"Ollama at {self.host} is up but has no model {self.model!r} "
                f"(has: {', '.join(str(m) for m in models) or 'none'}); run `ollama pull {self.model}`",
            )
        return f"Ollama at {self.host} is up with {self.model}"

    def context_window(self) -> int | None:
        """The model's num_ctx if its Modelfile sets one, else its trained context up to DEFAULT_CONTEXT_TOKENS
        (a 128k window would take more memory for its cache than the model itself)."""
        try:
            # A metadata request: a daemon that hangs must not hold the chat for the whole read timeout.
            answer = httpx.post(
                f"{self.host.rstrip('/')}/api/show", json={"model": self.model}, timeout=METADATA_TIMEOUT_SECONDS
            )
            if answer.status_code != 200:
                return None
            shown = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise _transport_error(exc, f"Ollama at {self.host}") from exc
        match = re.search(r"^\s*num_ctx\s+(\d+)", str(shown.get("parameters") or ""), re.M)
        if match:
            return int(match[1])
        info = shown.get("model_info") or {}
        trained = [v for k, v in info.items() if k.endswith(".context_length") and isinstance(v, int) and v > 0]
        if trained:
            return min(trained[0], settings.DEFAULT_CONTEXT_TOKENS)
        return None


# --- OpenAI-compatible APIs (OpenAI, llama.cpp's server, vLLM) ---


class OpenAIClient:
    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        timeout: httpx2.Timeout,
        api_key: str,
        transport: httpx2.BaseTransport | None = None,
        where: str = "",
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.where = where or f"the API at {base_url}"
        self.timeout = timeout
        self.http = httpx2.Client(transport=transport, timeout=timeout) if transport is not None else None
        self.client = openai.OpenAI(
            base_url=base_url, api_key=api_key or NO_KEY, timeout=timeout, max_retries=0, http_client=self.http
        )

    def _error(self, exc: Exception) -> ProviderCallError:
        where = self.where
        if isinstance(exc, openai.APIStatusError):
            body_message = exc.message
            error_class = _status_error_class(exc.status_code, body_message)
            code = exc.body.get("code") if isinstance(exc.body, dict) else None
            if code == "context_length_exceeded":
                error_class = ErrorClass.CONTEXT_LENGTH
            elif code == "busy":
                error_class = ErrorClass.BUSY
            message = f"{where} answered {exc.status_code}: {body_message}"
            if exc.status_code in (401, 403):
                message = f"{where} refused the key ({exc.status_code}): check OPENAI_API_KEY"
            return ProviderCallError(error_class, message)
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            if isinstance(cause, httpx2.ConnectTimeout | httpx2.PoolTimeout):
                return ProviderCallError(ErrorClass.TIMEOUT, f"connect timeout talking to {where}")
            if isinstance(exc, openai.APITimeoutError) or isinstance(cause, httpx2.TimeoutException):
                return ProviderCallError(ErrorClass.TIMEOUT, f"read timeout talking to {where}")
            return ProviderCallError(ErrorClass.CONNECTION, f"cannot connect to {where}")
        if isinstance(exc, httpx2.TimeoutException | httpx2.TransportError):
            return ProviderCallError(ErrorClass.CONNECTION, f"lost the connection to {where}: {exc}")
        return ProviderCallError(ErrorClass.OTHER, f"{where}: {type(exc).__name__}: {exc}")

    def complete(self, messages: list[dict[str, str]], *, max_tokens: int | None, window: int | None = None) -> Reply:
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=cast(list[ChatCompletionMessageParam], messages),
                max_tokens=max_tokens,
            )
        except (openai.OpenAIError, httpx2.HTTPError, ValueError) as exc:
            raise self._error(exc) from exc
        content = (response.choices[0].message.content or "") if response.choices else ""
        usage = response.usage
        return Reply(
            content=content,
            model=response.model or self.model,
            tokens_in=usage.prompt_tokens if usage else 0,
            tokens_out=usage.completion_tokens if usage else _estimate_tokens(content),
        )

    def stream(
        self, messages: list[dict[str, str]], *, max_tokens: int | None, window: int | None = None
    ) -> Iterator[Chunk]:
        try:
            # Closed when the caller stops reading: a local server stops generating when its client goes.
            with self.client.chat.completions.create(
                model=self.model,
                messages=cast(list[ChatCompletionMessageParam], messages),
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            ) as response:
                for part in response:
                    text = (part.choices[0].delta.content or "") if part.choices else ""
                    if part.usage:
                        yield Chunk(text, part.usage.prompt_tokens, part.usage.completion_tokens)
                    elif text:
                        yield Chunk(text)
        except (openai.OpenAIError, httpx2.HTTPError, ValueError) as exc:
            raise self._error(exc) from exc

    def health(self) -> str:
        try:
            models = [m.id for m in self.client.models.list()]
        except (openai.OpenAIError, httpx2.HTTPError, ValueError) as exc:
            raise self._error(exc) from exc
        if models and self.model not in models:
            raise ProviderCallError(
                ErrorClass.NOT_FOUND,
                f"{self.where} has no model {self.model!r} (has: {', '.join(models[:10])})",
            )
        return f"{self.where} is up with {self.model}"

    def model_query(self) -> dict[str, str]:
        """Query parameters naming the model, for a server that holds several (the model host's AirLLM)."""
        return {}

    def context_window(self) -> int | None:
        """llama.cpp's server and the model host say it at /props; other servers (OpenAI, vLLM) do not, and answer
        404."""
        root = self.base_url.rstrip("/").removesuffix("/v1")
        try:
            http = self.http or httpx2.Client(timeout=self.timeout)
            answer = http.get(
                f"{root}/props", params=self.model_query(), timeout=httpx2.Timeout(METADATA_TIMEOUT_SECONDS)
            )
            if answer.status_code != 200:
                return None
            n_ctx = answer.json().get("default_generation_settings", {}).get("n_ctx")
        except (httpx2.HTTPError, ValueError, AttributeError) as exc:
            raise self._error(exc) from exc
        return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None


@functools.lru_cache(maxsize=32)
def _cached_client(kind: str, base_url: str, model: str, connect: float, read: float, key: str) -> Client:
    # A daemon that is down refuses the connection at once; a cold model load may take long to answer.
    if kind == Provider.Kind.OLLAMA:
        return OllamaClient(host=base_url, model=model, timeout=httpx.Timeout(read, connect=connect, pool=connect))
    if kind == Provider.Kind.OPENAI:
        # The openai library is built on httpx2, a fork with its own Timeout.
        timeout = httpx2.Timeout(read, connect=connect, pool=connect)
        return OpenAIClient(base_url=base_url, model=model, timeout=timeout, api_key=key)
    if kind in (Provider.Kind.EMBEDDED, Provider.Kind.AIRLLM):
        # The one model host of this installation (apps.providers.embedded), over its unix socket (base_url); it
        # runs the embedded GGUF model and AirLLM's model directories.
        from apps.providers import embedded

        timeout = httpx2.Timeout(read, connect=connect, pool=connect)
        if kind == Provider.Kind.AIRLLM:
            return embedded.AirLLMClient(model=model, timeout=timeout, path=Path(base_url))
        return embedded.EmbeddedClient(model=model, timeout=timeout, path=Path(base_url))
    raise ProviderCallError(ErrorClass.NOT_FOUND, f"unknown provider kind {kind!r}")


def client_for(provider: Provider) -> Client:
    if provider.kind not in (Provider.Kind.AIRLLM, Provider.Kind.EMBEDDED) and not provider.base_url:
        raise ProviderCallError(ErrorClass.NOT_FOUND, f"provider {provider.name} has no base URL")
    # The key is read from the environment for each request and is part of the cache key only in memory.
    key = os.environ.get("OPENAI_API_KEY", "") if provider.kind == Provider.Kind.OPENAI else ""
    base_url = provider.base_url
    if provider.kind in (Provider.Kind.EMBEDDED, Provider.Kind.AIRLLM):
        from apps.providers import embedded

        base_url = str(embedded.socket_path())
    return _cached_client(
        provider.kind,
        base_url,
        provider.model,
        provider.connect_timeout_seconds,
        provider.read_timeout_seconds,
        key,
    )


def monotonic_ms(since: float) -> int:
    return max(0, round((time.monotonic() - since) * 1000))
