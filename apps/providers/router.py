"""The cascade router (ADR-020): every LLM call in the project goes through `complete`.

Providers are tried in priority order. A provider whose breaker is open is skipped without a request; a
provider that fails is recorded and the next one is tried, with a `provider.failover` event. When nothing
answers, `AllProvidersFailed` names each provider and why, and a `system.error` event is logged: callers
show that error, never an invented answer.
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, overload

from django.db import transaction
from django.utils import timezone

from apps.events.models import EventType
from apps.events.services import log_event
from apps.providers import services, windows
from apps.providers.clients import Chunk, ProviderCallError, Reply, client_for, monotonic_ms
from apps.providers.context import DoesNotFit, Fitted, Message, Prompt, fit, shrink_after
from apps.providers.models import ModelCall, Provider, ProviderRequest
from apps.providers.selectors import providers_in_order
from apps.providers.services import TraceContext

__all__ = ["AllProvidersFailed", "Completion", "CompletionStream", "RouterError", "TraceContext", "complete"]

SOURCE = "providers.router"
Clock = Callable[[], datetime]
# Told of each failover as it happens (from, to, reason), for a page that shows it in place.
OnFailover = Callable[[str, str, str], None]
ErrorClass = ProviderRequest.ErrorClass


@dataclass(frozen=True)
class Completion:
    content: str
    provider: str
    model: str
    latency_ms: int
    tokens_in: int
    tokens_out: int
    time_to_first_token_ms: int | None = None
    # What was sent: the window it was fitted to, what history and context went in and what was left out.
    fitted: Fitted | None = None
    # The reply was stopped by the caller before the model finished.
    stopped: bool = False


@dataclass(frozen=True)
class Attempt:
    provider: str
    reason: str
    error_class: str
    # Skipped without a request (breaker open); otherwise the request was made and failed.
    skipped: bool = False

    def __str__(self) -> str:
        return f"{self.provider}: {self.reason}"


class RouterError(services.ProviderError):
    pass


class AllProvidersFailed(RouterError):
    def __init__(self, attempts: list[Attempt]) -> None:
        self.attempts = attempts
        if any(a.error_class != "disabled" for a in attempts):
            detail = "; ".join(str(a) for a in attempts)
        else:
            detail = "no provider is enabled (enable one in the admin under Providers)"
            detail += "".join(f"; {a}" for a in attempts)
        super().__init__(f"No LLM provider answered. {detail}")


class StreamInterrupted(RouterError):
    """The answering provider failed after its first chunk: what was sent cannot be taken back, so no failover."""

    def __init__(self, provider: str, reason: str, partial: str) -> None:
        self.provider = provider
        self.partial = partial
        super().__init__(f"{provider} stopped answering mid-reply: {reason}")


@dataclass
class _Call:
    """Shared bookkeeping of one `complete` call across the providers it tries, and its trace."""

    clock: Clock
    parts: Prompt
    on_failover: OnFailover | None = None
    trace: TraceContext | None = None
    attempts: list[Attempt] = field(default_factory=list)
    last_failed: Attempt | None = None
    # The prompt as last fitted: what the answering provider (or the last one tried) was sent.
    fitted: Fitted | None = None
    request_ids: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    started_at: datetime | None = None

    def __post_init__(self) -> None:
        self.started_at = self.clock()

    @property
    def agent_id(self) -> int | None:
        """Who the call was made for, counted with each request in the usage figures."""
        return self.trace.agent_id if self.trace is not None else None

    def record(
        self,
        outcome: str,
        *,
        provider: str,
        model: str,
        latency_ms: int,
        reply: str = "",
        error: str = "",
        tokens_in: int = 0,
        tokens_out: int = 0,
        time_to_first_token_ms: int | None = None,
    ) -> None:
        attempts = [
            {"provider": a.provider, "reason": a.reason, "error_class": a.error_class, "skipped": a.skipped}
            for a in self.attempts
        ]
        if outcome != ModelCall.Outcome.FAILED:
            reason = "answered" if outcome == ModelCall.Outcome.OK else "answered; stopped by the caller"
            attempts.append({"provider": provider, "reason": reason, "error_class": "", "skipped": False})
        services.model_call_record(
            trace=self.trace,
            started_at=self.started_at or self.clock(),
            outcome=outcome,
            provider=provider,
            model=model,
            latency_ms=latency_ms,
            messages=_sent_messages(self.parts, self.fitted),
            attempts=attempts,
            fitting=self.fitted.summary() if self.fitted is not None else {},
            request_ids=self.request_ids,
            reply=reply,
            error=error,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            time_to_first_token_ms=time_to_first_token_ms,
        )

    def disabled(self, provider: Provider) -> None:
        self.attempts.append(
            Attempt(
                provider.name,
                f"disabled ({provider.enable_hint})",
                "disabled",
                skipped=True,
            )
        )

    def skip(self, provider: Provider) -> None:
        self.attempts.append(Attempt(provider.name, "skipped: circuit breaker open", "circuit_open", skipped=True))

    def before_request(self, provider: Provider) -> None:
        if self.last_failed is not None:
            with transaction.atomic():
                log_event(
                    "provider.failover",
                    source=SOURCE,
                    data={
                        "from": self.last_failed.provider,
                        "to": provider.name,
                        "reason": self.last_failed.reason,
                        "error_class": self.last_failed.error_class,
                    },
                )
            if self.on_failover is not None:
                self.on_failover(self.last_failed.provider, provider.name, self.last_failed.reason)

    def too_long(self, provider: Provider, error: DoesNotFit) -> None:
        # Not sent at all: this model cannot take the message, a later one with a larger window may.
        attempt = Attempt(provider.name, f"too long for this model: {error}", ErrorClass.CONTEXT_LENGTH, skipped=True)
        self.attempts.append(attempt)
        self.last_failed = attempt

    def failed(self, provider: Provider, error: ProviderCallError, *, latency_ms: int) -> None:
        request = services.breaker_record_failure(
            provider,
            now=self.clock(),
            error_class=error.error_class,
            message=error.message,
            latency_ms=latency_ms,
            model=provider.model,
            counts_for_breaker=error.counts_for_breaker,
            agent_id=self.agent_id,
        )
        self.request_ids.append(request.pk)
        reason = f"configuration error: {error.message}" if error.is_configuration_error else error.message
        attempt = Attempt(provider.name, reason, error.error_class)
        self.attempts.append(attempt)
        self.last_failed = attempt

    def all_failed(self) -> AllProvidersFailed:
        error = AllProvidersFailed(self.attempts)
        tried = [a for a in self.attempts if not a.skipped] or self.attempts
        self.record(
            ModelCall.Outcome.FAILED,
            provider=tried[-1].provider if tried else "",
            model="",
            latency_ms=monotonic_ms(self.started),
            error=str(error),
        )
        with transaction.atomic():
            log_event(
                EventType.SYSTEM_ERROR,
                source=SOURCE,
                data={
                    "error": "no LLM provider answered",
                    "providers": [
                        {"provider": a.provider, "reason": a.reason, "error_class": a.error_class}
                        for a in self.attempts
                    ],
                },
            )
        return error


def _candidates(call: _Call) -> Iterator[Provider]:
    """Enabled providers in order whose breaker lets a request through now."""
    providers = list(providers_in_order(enabled_only=False))
    if not providers:
        # A fresh database where no worker has started yet: the providers the environment describes.
        services.providers_ensure_defaults()
        providers = list(providers_in_order(enabled_only=False))
    for provider in providers:
        if not provider.enabled:
            call.disabled(provider)
            continue
        now = call.clock()
        # The metrics row came with the provider: closed, or open and not yet due, needs no further query.
        metrics = getattr(provider, "metrics", None)
        allowed = services.breaker_decided(metrics, now=now) if metrics is not None else None
        if allowed is None:
            allowed = services.breaker_allows(provider, now=now)
        if allowed:
            yield provider
        else:
            call.skip(provider)


def _prompt(prompt: Prompt | list[Message], *, system_prompt: str | None, max_tokens: int | None) -> Prompt:
    if isinstance(prompt, Prompt):
        return prompt
    return Prompt.of(prompt, system_prompt=system_prompt, max_tokens=max_tokens)


@overload
def complete(
    prompt: Prompt | list[Message],
    *,
    system_prompt: str | None = ...,
    max_tokens: int | None = ...,
    stream: Literal[False] = ...,
    clock: Clock = ...,
    on_failover: OnFailover | None = ...,
    trace: TraceContext | None = ...,
) -> Completion: ...


@overload
def complete(
    prompt: Prompt | list[Message],
    *,
    system_prompt: str | None = ...,
    max_tokens: int | None = ...,
    stream: Literal[True],
    clock: Clock = ...,
    on_failover: OnFailover | None = ...,
    trace: TraceContext | None = ...,
) -> "CompletionStream": ...


def complete(
    prompt: Prompt | list[Message],
    *,
    system_prompt: str | None = None,
    max_tokens: int | None = None,
    stream: bool = False,
    clock: Clock = timezone.now,
    on_failover: OnFailover | None = None,
    trace: TraceContext | None = None,
) -> "Completion | CompletionStream":
    """The first answer from the providers in order; raises AllProvidersFailed when none answers.

    `prompt` is fitted to each provider's context window (apps.providers.context); a plain list of messages is
    sent whole, with `system_prompt` first. A provider that still answers "context length exceeded" gets the
    prompt fitted again, smaller, once, before the next provider is tried.

    With stream=True, a CompletionStream: failover happens only until a provider sends its first chunk.

    Every call is traced (apps.providers.models.ModelCall; a stream once it ends): `trace` says who it was made
    for, and gets the trace's id.
    """
    parts = _prompt(prompt, system_prompt=system_prompt, max_tokens=max_tokens)
    call = _Call(clock=clock, parts=parts, on_failover=on_failover, trace=trace)
    for provider in _candidates(call):
        started = time.monotonic()
        try:
            sent = _send(call, provider, parts, stream=stream)
        except _Failed:
            continue
        if isinstance(sent, CompletionStream):
            return sent
        reply, fitted = sent
        latency_ms = monotonic_ms(started)
        request_id = services.breaker_record_success(
            provider,
            now=clock(),
            latency_ms=latency_ms,
            model=reply.model,
            tokens_in=reply.tokens_in,
            tokens_out=reply.tokens_out,
            agent_id=call.agent_id,
        )
        call.request_ids.append(request_id)
        call.record(
            ModelCall.Outcome.OK,
            provider=provider.name,
            model=reply.model,
            latency_ms=latency_ms,
            reply=reply.content,
            tokens_in=reply.tokens_in,
            tokens_out=reply.tokens_out,
        )
        return Completion(
            content=reply.content,
            provider=provider.name,
            model=reply.model,
            latency_ms=latency_ms,
            tokens_in=reply.tokens_in,
            tokens_out=reply.tokens_out,
            fitted=fitted,
        )
    raise call.all_failed()


class _Failed(Exception):
    """This provider did not answer (recorded in the call's attempts): try the next."""


def _send(call: _Call, provider: Provider, parts: Prompt, *, stream: bool) -> "tuple[Reply, Fitted] | CompletionStream":
    window = windows.window_for(provider)
    scale = windows.scale_for(provider)
    for attempt in (1, 2):
        try:
            fitted = fit(parts, window=window, scale=scale)
        except DoesNotFit as error:
            call.too_long(provider, error)
            raise _Failed from error
        call.fitted = fitted
        if attempt == 1:
            call.before_request(provider)
        started = time.monotonic()
        try:
            client = client_for(provider)
            if not stream:
                return client.complete(fitted.messages, max_tokens=fitted.max_tokens, window=window), fitted
            rest = client.stream(fitted.messages, max_tokens=fitted.max_tokens, window=window)
            first = _first_text(rest, provider)
        except ProviderCallError as error:
            call.failed(provider, error, latency_ms=monotonic_ms(started))
            if error.error_class != ErrorClass.CONTEXT_LENGTH or attempt == 2:
                raise _Failed from error
            # Our estimate was low, or the window is not what we thought: fit again with the server's figures.
            shrink = shrink_after(error.message, fitted, scale=scale)
            window = windows.learned(provider, tokens=shrink.window, scale=shrink.scale)
            scale = shrink.scale
            continue
        ttft_ms = monotonic_ms(started)
        return CompletionStream(provider, first, rest, started=started, ttft_ms=ttft_ms, call=call)
    raise _Failed


class CompletionStream:
    """Text chunks as they arrive from the provider that answered. After the last one, `completion` holds the
    whole reply with its figures; an error after the first chunk raises StreamInterrupted. `stop()` ends the
    generation (the connection to the model is closed, which stops a local server generating) and keeps what
    came so far as the completion, marked stopped."""

    def __init__(
        self,
        provider: Provider,
        first: Chunk,
        rest: Iterator[Chunk],
        *,
        started: float,
        ttft_ms: int,
        call: _Call,
    ) -> None:
        self.provider = provider.name
        self.model = provider.model
        self.completion: Completion | None = None
        self.fitted = call.fitted
        self._provider = provider
        self._first = first
        self._rest = rest
        self._started = started
        self._ttft_ms = ttft_ms
        self._call = call
        self._clock = call.clock
        self._iterator: Iterator[str] | None = None

    def __iter__(self) -> Iterator[str]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    def stop(self) -> None:
        iterator = iter(self)
        close = getattr(iterator, "close", None)
        if close is not None:
            close()

    def _run(self) -> Iterator[str]:
        parts: list[str] = []
        tokens_in = tokens_out = None
        chunk: Chunk | None = self._first
        stopped = False
        try:
            while chunk is not None:
                if chunk.tokens_in is not None:
                    tokens_in, tokens_out = chunk.tokens_in, chunk.tokens_out
                if chunk.text:
                    parts.append(chunk.text)
                    yield chunk.text
                chunk = next(self._rest, None)
        except ProviderCallError as error:
            latency_ms = monotonic_ms(self._started)
            request = services.breaker_record_failure(
                self._provider,
                now=self._clock(),
                error_class=error.error_class,
                message=f"stopped mid-reply: {error.message}",
                latency_ms=latency_ms,
                model=self.model,
                agent_id=self._call.agent_id,
            )
            interrupted = StreamInterrupted(self.provider, error.message, "".join(parts))
            self._call.request_ids.append(request.pk)
            self._call.attempts.append(Attempt(self.provider, str(interrupted), error.error_class))
            self._call.record(
                ModelCall.Outcome.FAILED,
                provider=self.provider,
                model=self.model,
                latency_ms=latency_ms,
                reply=interrupted.partial,
                error=str(interrupted),
                time_to_first_token_ms=self._ttft_ms,
            )
            raise interrupted from error
        except GeneratorExit:
            stopped = True
            close = getattr(self._rest, "close", None)
            if close is not None:
                close()
        self._finish("".join(parts), tokens_in, tokens_out, stopped=stopped)

    def _finish(self, content: str, tokens_in: int | None, tokens_out: int | None, *, stopped: bool) -> None:
        latency_ms = monotonic_ms(self._started)
        tokens_in = tokens_in or (self.fitted.prompt_tokens if self.fitted else 0)
        tokens_out = tokens_out or max(1, len(content) // 4)
        request_id = services.breaker_record_success(
            self._provider,
            now=self._clock(),
            latency_ms=latency_ms,
            model=self.model,
            time_to_first_token_ms=self._ttft_ms,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            agent_id=self._call.agent_id,
        )
        self._call.request_ids.append(request_id)
        self._call.record(
            ModelCall.Outcome.STOPPED if stopped else ModelCall.Outcome.OK,
            provider=self.provider,
            model=self.model,
            latency_ms=latency_ms,
            reply=content,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            time_to_first_token_ms=self._ttft_ms,
        )
        self.completion = Completion(
            content=content,
            provider=self.provider,
            model=self.model,
            latency_ms=latency_ms,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            time_to_first_token_ms=self._ttft_ms,
            fitted=self.fitted,
            stopped=stopped,
        )


def _first_text(chunks: Iterator[Chunk], provider: Provider) -> Chunk:
    """The first chunk that carries text. A stream that ends without any is a failure, so the next provider is
    tried: llama.cpp's server, for one, answers a prompt too long for its context with an empty 200 stream."""
    for chunk in chunks:
        if chunk.text:
            return chunk
    raise ProviderCallError(ProviderRequest.ErrorClass.OTHER, f"{provider.name} ended its stream without any text")


def _sent_messages(parts: Prompt, fitted: Fitted | None) -> list[dict[str, Any]]:
    """The messages of `fitted` (or of the prompt, when no provider was sent anything), each marked with what it
    is: the system prompt (with the context pieces put into it), earlier turns, the message answered."""
    if fitted is not None:
        messages = fitted.messages
        history_sent = fitted.history_sent
        context = [parts.context[i] for i in fitted.context_kept]
    else:
        messages = [{"role": "system", "content": parts.system}] if parts.system else []
        messages += [{"role": m["role"], "content": m["content"]} for m in parts.messages]
        history_sent = 0
        context = []
    sent: list[dict[str, Any]] = []
    start = 0
    if messages and messages[0]["role"] == "system" and (parts.system or context):
        first: dict[str, Any] = {**messages[0], "kind": "system" if parts.system else "context"}
        if context:
            first.update(prompt=parts.system, context=context, context_heading=parts.context_heading)
        sent.append(first)
        start = 1
    last = len(messages) - 1
    for position in range(start, len(messages)):
        message = messages[position]
        if position < start + history_sent:
            kind = "history"
        elif position == last and message["role"] == "user":
            kind = "user"
        else:
            kind = "message"
        sent.append({"role": message["role"], "content": message["content"], "kind": kind})
    return sent
