"""Prompts that fit the model's context window.

Callers describe a prompt in parts (`Prompt`): what must be sent, what helps (memories, files), and the earlier
turns of a conversation. The router fits it to each provider's window as it tries them (`fit`): the system prompt
and the message first, then context within its share, then as much recent history as fits, oldest turns dropped
first, leaving room for the reply; `max_tokens` is set to that room, so a reply cannot run past the window.

Token counts are estimated, on the high side, because each provider has its own tokenizer and asking it would cost
a request: a token for every three characters of ASCII text, one for every digit and every other character (CJK is
about one a character), and a few for each message's framing. When a server still answers "context length
exceeded", the router fits again with the figures it gave (`shrink_after`) and retries once.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

Message = dict[str, str]

# What the chat templates add around each message (role markers, separators).
MESSAGE_OVERHEAD_TOKENS = 6
# The room a reply is guaranteed: a quarter of the window, within these bounds.
REPLY_MIN_TOKENS = 32
REPLY_RESERVE_MAX_TOKENS = 1024
# A server that says "too long" without figures: assume the estimate was this much too low.
UNKNOWN_SHRINK = 1.5


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    ascii_chars = len(text.encode("ascii", "ignore"))
    # Llama-family tokenizers (SmolLM2's among them) read every digit as a token of its own.
    digits = sum(c.isdigit() for c in text if c.isascii())
    return (ascii_chars - digits + 2) // 3 + digits + (len(text) - ascii_chars)


def _message_tokens(message: Message, scale: float) -> int:
    return round((estimate_tokens(message["content"]) + MESSAGE_OVERHEAD_TOKENS) * scale)


class DoesNotFit(ValueError):
    """What must be sent (the system prompt and the message) is larger than the window leaves for it."""

    def __init__(self, needed: int, window: int, reserve: int) -> None:
        self.needed = needed
        self.window = window
        super().__init__(
            f"the prompt needs about {needed} tokens and this model's context is {window} "
            f"(with {reserve} kept for the reply)"
        )


@dataclass(frozen=True)
class Prompt:
    # Sent whole, in order; the last is the one the model answers.
    messages: Sequence[Message]
    system: str = ""
    # Pieces appended to the system prompt under `context_heading`, most useful first; each goes in whole while
    # it fits in `context_share` of the window (and `context_max_tokens`), else it is left out.
    context: Sequence[str] = ()
    context_heading: str = ""
    context_share: float = 0.25
    context_max_tokens: int | None = None
    # Earlier turns, oldest first: the newest that fit are sent, the oldest are dropped.
    history: Sequence[Message] = ()
    # The most the reply may take; None lets it use the room left.
    max_tokens: int | None = None
    # The least room the reply must keep whatever else is left out (up to half the window): a reply that must hold
    # whole files needs more than the usual quarter.
    reply_min_tokens: int | None = None

    @classmethod
    def of(
        cls, messages: Sequence[Message], *, system_prompt: str | None = None, max_tokens: int | None = None
    ) -> "Prompt":
        return cls(messages=messages, system=system_prompt or "", max_tokens=max_tokens)


@dataclass(frozen=True)
class Fitted:
    messages: list[Message]
    max_tokens: int
    window: int
    # Estimated, with the scale applied.
    prompt_tokens: int
    history_sent: int = 0
    history_dropped: int = 0
    context_sent: int = 0
    context_dropped: int = 0
    notes: list[str] = field(default_factory=list)
    # Which of the prompt's context pieces went in (their indexes), for the trace.
    context_kept: tuple[int, ...] = ()

    def summary(self) -> dict[str, int]:
        """For the events: what went in and what was left out."""
        return {
            "context_window": self.window,
            "prompt_tokens_estimated": self.prompt_tokens,
            "max_tokens": self.max_tokens,
            "history_sent": self.history_sent,
            "history_dropped": self.history_dropped,
            "context_sent": self.context_sent,
            "context_dropped": self.context_dropped,
        }


def reply_reserve(window: int, max_tokens: int | None, reply_min_tokens: int | None = None) -> int:
    reserve = min(max(window // 4, REPLY_MIN_TOKENS), REPLY_RESERVE_MAX_TOKENS)
    if reply_min_tokens:
        reserve = max(reserve, min(reply_min_tokens, window // 2))
    return min(reserve, max_tokens) if max_tokens else reserve


def fit(prompt: Prompt, *, window: int, scale: float = 1.0) -> Fitted:
    """The messages to send to a model with a `window`-token context, and its max_tokens.

    `scale` multiplies every estimate (above 1 after a server said the prompt was too long). Raises DoesNotFit
    when the system prompt and the messages alone leave less than the reply's reserve.
    """
    reserve = reply_reserve(window, prompt.max_tokens, prompt.reply_min_tokens)
    budget = window - reserve
    system_message = {"role": "system", "content": prompt.system} if prompt.system else None
    required = [system_message] if system_message else []
    required += [{"role": m["role"], "content": m["content"]} for m in prompt.messages]
    used = sum(_message_tokens(m, scale) for m in required)
    if used > budget:
        raise DoesNotFit(used, window, reserve)

    kept_context: list[str] = []
    kept_indexes: list[int] = []
    if prompt.context:
        share = int(budget * prompt.context_share)
        if prompt.context_max_tokens is not None:
            share = min(share, prompt.context_max_tokens)
        heading = f"\n\n{prompt.context_heading}:\n" if prompt.context_heading else "\n\n"
        context_used = round(estimate_tokens(heading) * scale) if system_message else MESSAGE_OVERHEAD_TOKENS
        for index, piece in enumerate(prompt.context):
            cost = round((estimate_tokens(piece) + 1) * scale)
            if context_used + cost <= share and used + context_used + cost <= budget:
                kept_context.append(piece)
                kept_indexes.append(index)
                context_used += cost
        if kept_context:
            used += context_used
            text = heading.lstrip("\n") if not system_message else heading
            joined = "\n".join(kept_context)
            if system_message:
                system_message["content"] = f"{prompt.system}{text}{joined}"
            else:
                required.insert(0, {"role": "system", "content": f"{text}{joined}"})

    history = [{"role": m["role"], "content": m["content"]} for m in prompt.history]
    kept_history: list[Message] = []
    for message in reversed(history):
        cost = _message_tokens(message, scale)
        if used + cost > budget:
            break
        kept_history.insert(0, message)
        used += cost
    # A conversation sent to a model starts with the user's turn.
    while kept_history and kept_history[0]["role"] != "user":
        used -= _message_tokens(kept_history.pop(0), scale)

    first_prompt_message = 1 if required and required[0]["role"] == "system" else 0
    messages = required[:first_prompt_message] + kept_history + required[first_prompt_message:]
    room = window - used
    max_tokens = min(room, prompt.max_tokens) if prompt.max_tokens else room
    return Fitted(
        messages=messages,
        max_tokens=max_tokens,
        window=window,
        prompt_tokens=used,
        history_sent=len(kept_history),
        history_dropped=len(history) - len(kept_history),
        context_sent=len(kept_context),
        context_dropped=len(prompt.context) - len(kept_context),
        context_kept=tuple(kept_indexes),
    )


_MAXIMUM = re.compile(r"maximum context length is (\d+)|context window of (\d+)", re.I)
_IN_MESSAGES = re.compile(r"(\d+) in the messages", re.I)
_REQUESTED = re.compile(r"requested (\d+) tokens|requested tokens \((\d+)\)", re.I)


def _first_number(pattern: re.Pattern[str], text: str) -> int | None:
    match = pattern.search(text)
    if match is None:
        return None
    return int(next(group for group in match.groups() if group))


@dataclass(frozen=True)
class Shrink:
    # The window the server reported, if it did.
    window: int | None
    scale: float


def shrink_after(message: str, fitted: Fitted, *, scale: float) -> Shrink:
    """How to fit again after a server refused `fitted` as too long, from what its error says.

    OpenAI and llama.cpp's servers give the window and the prompt's real size ("maximum context length is 512
    tokens. However, you requested 571 tokens (563 in the messages, 8 in the completion)"); llama-cpp-python's
    binding the prompt's alone ("Requested tokens (600) exceed context window of 512"). The next estimates are
    scaled by how far this one was off, with a margin; without figures, by UNKNOWN_SHRINK.
    """
    window = _first_number(_MAXIMUM, message)
    prompt_real = _first_number(_IN_MESSAGES, message)
    if prompt_real is None:
        requested = _first_number(_REQUESTED, message)
        if requested is not None and "completion" in message.lower():
            requested -= fitted.max_tokens
        prompt_real = requested
    if prompt_real is not None and fitted.prompt_tokens:
        factor = max(prompt_real / (fitted.prompt_tokens / scale), scale) / scale * 1.1
    elif window and window != fitted.window:
        factor = 1.1
    else:
        factor = UNKNOWN_SHRINK
    return Shrink(window=window if window and window > 0 else None, scale=scale * factor)
