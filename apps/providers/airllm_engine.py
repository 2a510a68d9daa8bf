"""AirLLM in the model host: a model too large for memory, run one layer at a time from disk.

The host (apps.providers.embedded) serves it at /airllm/v1 beside the embedded GGUF model, so one process holds
each model for the dashboard and every worker, and nothing heavy runs on daphne's event loop or the worker's loop.
`AirLLMRunner` offers the part of llama-cpp-python's `Llama` the host's handler uses (`create_chat_completion`
streaming OpenAI-style chunks, `n_tokens`, `n_ctx()`), so both engines share one request path: the ticket queue,
streaming, stopping when the client goes, loop detection, token counts.

Only the host process imports this module's heavy parts (torch, transformers, airllm), on first use.
"""

import contextlib
import ctypes
import ctypes.util
import io
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("timmy.model_host")

# The files a directory AirLLM loads has (`manage.py airllm_prepare` makes one from a GGUF file).
CONFIG_FILE = "config.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# How long the generation thread may take to notice a stop and end, past which the turn is given up anyway.
STOP_JOIN_SECONDS = 60.0

_patched = False
_libc: Any = None


def release_memory() -> None:
    """What AirLLM does after every layer, without its `gc.collect()`.

    AirLLM frees each layer after its forward pass and then calls `clean_memory()`: `gc.collect()`, `malloc_trim(0)`
    and `torch.cuda.empty_cache()`. A full garbage collection walks every Python object of the process, and in a
    Django process that is most of the time: measured with SmolLM2-135M (30 layers), 10 tokens took 39.8 s against
    1.05 s without it, the same tokens either way. The layer's tensors are freed by reference counting when AirLLM
    moves them to the `meta` device, with no cycle for the collector to find; what matters is handing their pages
    back to the system, which `malloc_trim` does (and the CUDA cache on a GPU)."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else False
    if _libc and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def patch_airllm() -> Any:
    """Import airllm with `release_memory` in place of its per-layer `clean_memory`; returns the module."""
    global _patched
    import airllm
    from airllm import airllm_base

    if not _patched:
        airllm_base.clean_memory = release_memory
        _patched = True
    return airllm


def device() -> str:
    """The GPU when torch has one, else the CPU (AirLLM's default, "cuda:0", fails on a CPU-only torch)."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def check_directory(path: Path) -> None:
    """Raise ValueError with what is wrong when `path` is not a directory AirLLM can load."""
    if not path.exists():
        raise ValueError(f"no AirLLM model directory at {path}")
    if path.is_file():
        hint = " (a GGUF file: `manage.py airllm_prepare` turns it into one)" if path.suffix == ".gguf" else ""
        raise ValueError(f"{path} is a file, not a model directory{hint}")
    if not (path / CONFIG_FILE).is_file() or not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(
            f"{path} is not a Hugging Face model directory (it needs {CONFIG_FILE} and model.safetensors); "
            "`manage.py airllm_prepare` makes one from a GGUF file"
        )


def prompt_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> Any:
    """The prompt's token ids: the model's chat template, or for a base model without one, the conversation as
    plain text (the benchmark builds plain transformers' prompt with this too)."""
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return encoded["input_ids"]
    text = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages) + "\nassistant:"
    return tokenizer([text], return_tensors="pt")["input_ids"]


def eos_ids(tokenizer: Any, *configs: Any) -> list[int]:
    """Every token id that ends a reply, as the model's configs and its tokenizer name them."""
    ids: set[int] = set()
    for config in configs:
        value = getattr(config, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


class Detokenizer:
    """The text of generated tokens as they come: each token's new piece, with a character cut in the middle of its
    UTF-8 bytes held back until the next token completes it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.generated: list[int] = []
        self.text = ""

    def add(self, token: int) -> str:
        self.generated.append(token)
        text = self.tokenizer.decode(self.generated, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece, self.text = text[len(self.text) :], text
        return str(piece)


class TokenStreamer:
    """A transformers streamer that hands each generated token id to `on_token` (the prompt, which generate() puts
    first, is not generated)."""

    def __init__(self, on_token: Callable[[int], None]) -> None:
        self.on_token = on_token
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.on_token(int(token))

    def end(self) -> None:
        """generate() ends with this; its caller knows it has ended when generate() returns."""


class AirLLMRunner:
    def __init__(self, path: Path) -> None:
        check_directory(path)
        airllm = patch_airllm()
        self.path = path
        self.device = device()
        # AirLLM prints every layer it writes and loads; the host logs what matters instead.
        with contextlib.redirect_stdout(io.StringIO()):
            self.model = airllm.AutoModel.from_pretrained(str(path), device=self.device)
        self.tokenizer = self.model.tokenizer
        config = self.model.config
        self._n_ctx = int(getattr(config, "max_position_embeddings", 0) or 0) or 2048
        self.eos = eos_ids(self.tokenizer, self.model.config, self.model.generation_config)
        # The current request's prompt tokens until it ends, then those and the reply's but one: what
        # llama-cpp-python's Llama.n_tokens says at those points, which the host's handler reads.
        self.n_tokens = 0

    def n_ctx(self) -> int:
        return self._n_ctx

    def prompt_ids(self, messages: list[dict[str, Any]]) -> Any:
        return prompt_ids(self.tokenizer, messages)

    def generate_ids(self, input_ids: Any, *, max_new_tokens: int, streamer: Any = None, stop: Any = None) -> Any:
        """Greedy generation, as the benchmark compares with plain transformers."""
        import torch
        from transformers import StoppingCriteriaList

        options: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "use_cache": True,
            "eos_token_id": self.eos or None,
            "pad_token_id": self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos[0],
            "attention_mask": torch.ones_like(input_ids),
        }
        if streamer is not None:
            options["streamer"] = streamer
        if stop is not None:
            options["stopping_criteria"] = StoppingCriteriaList([stop])
        with torch.inference_mode():
            return self.model.generate(input_ids.to(self.device), **options)

    def create_chat_completion(
        self, *, messages: list[dict[str, Any]], max_tokens: int | None = None, stream: bool = True, **_: Any
    ) -> Iterator[dict[str, Any]]:
        """OpenAI-style chunks, as `Llama.create_chat_completion(stream=True)` yields them: the role, then one
        chunk per token, then the finish reason. A prompt longer than the window raises ValueError with
        llama-cpp-python's wording (the handler turns it into a context_length_exceeded 400) on the first read."""
        return self._chunks(messages, max_tokens)

    def _chunks(self, messages: list[dict[str, Any]], max_tokens: int | None) -> Iterator[dict[str, Any]]:
        input_ids = self.prompt_ids(messages)
        prompt_length = int(input_ids.shape[1])
        room = self._n_ctx - prompt_length
        if room <= 0:
            raise ValueError(f"Requested tokens ({prompt_length}) exceed context window of {self._n_ctx}")
        max_new = min(max_tokens or room, room)
        self.n_tokens = prompt_length
        yield _chunk({"role": "assistant"})
        tokens: queue.Queue[int | None] = queue.Queue()  # None: generation is over
        stopped = threading.Event()
        failure: list[BaseException] = []

        def stop_when_asked(input_ids: Any, scores: Any, **kwargs: Any) -> bool:
            return stopped.is_set()

        def run() -> None:
            try:
                streamer = TokenStreamer(tokens.put)
                self.generate_ids(input_ids, max_new_tokens=max_new, streamer=streamer, stop=stop_when_asked)
            except BaseException as exc:  # handed to the reading thread, which raises it
                failure.append(exc)
            finally:
                tokens.put(None)

        thread = threading.Thread(target=run, name="airllm-generate", daemon=True)
        thread.start()
        decoder = Detokenizer(self.tokenizer)
        finish = "length"
        try:
            while True:
                token = tokens.get()
                if token is None:
                    break
                assert isinstance(token, int)
                if token in self.eos:
                    finish = "stop"
                    continue
                piece = decoder.add(token)
                if piece:
                    yield _chunk({"content": piece})
            if failure:
                raise RuntimeError(f"AirLLM failed: {type(failure[0]).__name__}: {failure[0]}") from failure[0]
            if len(decoder.generated) < max_new and finish == "length" and not stopped.is_set():
                finish = "stop"
            # The handler counts the reply's tokens as n_tokens - (n_tokens when the first text came) + 1.
            self.n_tokens = prompt_length + max(0, len(decoder.generated) - 1)
            yield _chunk({}, finish_reason=finish)
        finally:
            # A client that went away closes this generator: the generation thread stops at its next token, and the
            # host's turn (the caller's) lasts until it has, so two generations never run at once.
            stopped.set()
            thread.join(STOP_JOIN_SECONDS)


def _chunk(delta: dict[str, Any], *, finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
