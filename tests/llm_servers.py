"""Real loopback HTTP servers that speak LLM wire protocols, for the test suite and the benchmarks.

`OllamaServer` is an in-process imitation of Ollama's REST API (deterministic echo replies, switchable faults);
`LlamaCppServer` runs the real `llama_cpp.server` (OpenAI-compatible) on a tiny random-weight GGUF model.
Neither needs the network nor Django.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np

MODES = (
    "normal",
    "slow",
    "error500",
    "unauthorized",
    "hang",
    "break_stream",
    "not_found",
    "context_length",
    "bad_request",
)
# The 400 that Ollama answers when a prompt does not fit (`"truncate": false`, embeddings); by default it truncates.
CONTEXT_LENGTH_ERROR = "the input length exceeds the context length"

Reply = str | Callable[[list[dict[str, Any]]], str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refused_url() -> str:
    """A loopback URL where nothing listens, so a connection is refused at once."""
    return f"http://127.0.0.1:{_free_port()}"


@contextmanager
def connect_timeout_url() -> Iterator[str]:
    """A loopback URL whose connections are never accepted, so connecting times out (without any network).

    A listening socket with a backlog of 0 whose accept queue this fills: Linux then drops further SYNs.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(8)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            yield f"http://127.0.0.1:{port}"
        finally:
            for filler in fillers:
                filler.close()


def echo(messages: list[dict[str, Any]]) -> str:
    last_user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    return f"Echo: {last_user}"


def _chunks(text: str) -> list[str]:
    """Word by word, each word with its trailing whitespace, so that the chunks join back to `text`."""
    return re.findall(r"\s*\S+\s*", text) or [text]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients reuse their connections
    # Headers and body go out in two writes: with Nagle's algorithm the body may wait 40 ms for a delayed ACK.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_GET(self) -> None:
        self.server.owner._handle(self, "GET")

    def do_HEAD(self) -> None:
        self.server.owner._handle(self, "HEAD")

    def do_POST(self) -> None:
        self.server.owner._handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.owner._handle(self, "DELETE")

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return body
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_text(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def abort(self) -> None:
        """Drop the connection without finishing the response."""
        self.wfile.flush()
        self.close_connection = True
        with suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: OllamaServer) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)
        with self.owner._lock:
            self.owner.connections += 1

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def drop_connections(self) -> None:
        """Shut down the kept-alive and hanging connections, whose handler threads would otherwise linger."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class OllamaServer:
    """Speaks Ollama's REST API (`/api/tags`, `/api/version`, `/api/chat`) on 127.0.0.1, in a daemon thread.

    Replies are `reply` (by default "Echo: " + the last user message), streamed word by word. `mode` switches
    behaviour at runtime, for every request but `GET /`:

    - "normal"; "slow": wait `delay` seconds before answering and between stream chunks;
    - "error500" and "unauthorized": HTTP 500 / 401 with an `{"error": ...}` body;
    - "hang": read the request, then never answer (until `stop()`, which drops the connection);
    - "break_stream": send the headers and the first chunk (half the body if not streaming), then drop the
      connection;
    - "not_found" and "context_length": what Ollama answers a chat for an unknown model (404) or a prompt that
      does not fit (400); "bad_request": a 400 for an option it cannot take; other paths behave normally.

    `requests` counts requests by path; `chats` keeps the JSON body of every `/api/chat` request; `connections`
    counts the connections accepted, which shows whether a client keeps its connections alive.
    """

    def __init__(
        self, *, models: list[str] | None = None, reply: Reply = echo, mode: str = "normal", delay: float = 0.2
    ) -> None:
        self.models = list(models) if models is not None else ["llama3.2"]
        # What /api/show says: the model's trained context, and a Modelfile's num_ctx (0: none).
        self.context_length = 131_072
        self.num_ctx = 0
        self.reply = reply
        self.delay = delay
        self.requests: Counter[str] = Counter()
        self.chats: list[dict[str, Any]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._mode = "normal"
        self.mode = mode
        self._stopping = threading.Event()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def mode(self) -> str:
        with self._lock:
            return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}; one of {', '.join(MODES)}")
        with self._lock:
            self._mode = value

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> OllamaServer:
        if self._server is not None:
            raise RuntimeError("the server is already started")
        self._stopping.clear()
        self._server = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="ollama-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()  # wakes "hang" and "slow" handlers
        server.shutdown()
        server.server_close()
        server.drop_connections()
        thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> OllamaServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Back to "normal" with no requests counted."""
        self.mode = "normal"
        with self._lock:
            self.requests.clear()
            self.chats.clear()
            self.connections = 0

    # Handling, on the server's threads.

    def _handle(self, handler: _Handler, method: str) -> None:
        path = handler.path.split("?", 1)[0]
        raw = handler.read_body()
        with self._lock:
            self.requests[path] += 1
            mode = self._mode
        if path == "/":  # Ollama's liveness answer, whatever the mode
            handler.send_text(200, "Ollama is running")
            return
        if mode == "hang":
            self._stopping.wait()
            handler.abort()
            return
        if mode == "slow" and self._stopping.wait(self.delay):
            handler.abort()
            return
        if mode == "error500":
            handler.send_json(500, {"error": "llama runner process has terminated: exit status 2"})
            return
        if mode == "unauthorized":
            handler.send_json(401, {"error": "unauthorized"})
            return
        if (method, path) == ("GET", "/api/tags"):
            self._send(handler, mode, {"models": [self._model_info(name) for name in self.models]})
        elif (method, path) == ("GET", "/api/version"):
            self._send(handler, mode, {"version": "0.0.0-test"})
        elif (method, path) == ("POST", "/api/chat"):
            self._chat(handler, mode, raw)
        elif (method, path) == ("POST", "/api/show"):
            # What the router reads the context window from: the trained length, and num_ctx if a Modelfile sets it.
            parameters = f"num_ctx                        {self.num_ctx}" if self.num_ctx else ""
            info = {"general.architecture": "llama", "llama.context_length": self.context_length}
            self._send(handler, mode, {"parameters": parameters, "model_info": info, "modelfile": ""})
        else:
            handler.send_text(404, "404 page not found")

    def _send(self, handler: _Handler, mode: str, payload: Any) -> None:
        if mode != "break_stream":
            handler.send_json(200, payload)
            return
        body = json.dumps(payload).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[: len(body) // 2])
        handler.abort()

    def _chat(self, handler: _Handler, mode: str, raw: bytes) -> None:
        try:
            request = json.loads(raw or b"{}")
        except json.JSONDecodeError as e:
            handler.send_json(400, {"error": f"invalid character in request body: {e}"})
            return
        with self._lock:
            self.chats.append(request)
        model = request.get("model") or ""
        if mode == "not_found" or model not in self.models:
            handler.send_json(404, {"error": f'model "{model}" not found, try pulling it first'})
            return
        if mode == "context_length":
            handler.send_json(400, {"error": CONTEXT_LENGTH_ERROR})
            return
        if mode == "bad_request":
            handler.send_json(400, {"error": 'invalid option provided: "num_predict" must be an integer'})
            return
        messages = request.get("messages") or []
        text = self.reply(messages) if callable(self.reply) else self.reply
        started = time.perf_counter_ns()
        chunks = _chunks(text)
        prompt_words = sum(len(str(m.get("content") or "").split()) for m in messages)
        final: dict[str, Any] = {
            "model": model,
            "created_at": _now(),
            "message": {"role": "assistant", "content": text},
            "done": True,
            "done_reason": "stop",
            "load_duration": 1_000,
            "prompt_eval_count": prompt_words + 1,
            "prompt_eval_duration": 1_000,
            "eval_count": len(chunks),
        }
        if not request.get("stream", True):
            duration = time.perf_counter_ns() - started + 2_000
            final.update(total_duration=duration + 2_000, eval_duration=duration)
            self._send(handler, mode, final)
            return

        handler.send_response(200)
        handler.send_header("Content-Type", "application/x-ndjson")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for chunk in chunks:
            part = {"model": model, "created_at": _now(), "message": {"role": "assistant", "content": chunk}}
            handler.send_chunk(json.dumps({**part, "done": False}).encode() + b"\n")
            if mode == "break_stream" or (mode == "slow" and self._stopping.wait(self.delay)):
                handler.abort()
                return
        duration = time.perf_counter_ns() - started + 2_000
        final.update(message={"role": "assistant", "content": ""}, total_duration=duration + 2_000)
        final.update(eval_duration=duration)
        handler.send_chunk(json.dumps(final).encode() + b"\n")
        handler.send_chunk(b"")

    def _model_info(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": "2025-01-01T00:00:00Z",
            "size": 2_019_393_189,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "3.2B",
                "quantization_level": "Q4_K_M",
            },
        }


# The real llama.cpp server (OpenAI-compatible) on a tiny random model.

TINY_MODEL_ALIAS = "tiny"
# Zephyr-style; llama-cpp-python renders `tokenizer.chat_template` with Jinja2 when no --chat_format is given.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_TINY_WORDS = ("the", "a", "and", "of", "to", "in", "is", "it", "you", "that", "was", "for", "on", "with", "be", "have")


def write_tiny_gguf(path: Path | str, *, seed: int = 0) -> Path:
    """A llama-architecture GGUF with random weights (2 layers, 64-wide, ~400 tokens); the same bytes for a seed.

    Its SentencePiece-style vocabulary has the control tokens, the 256 byte-fallback tokens, the printable ASCII
    characters and a few words, so any text tokenizes; what it generates is gibberish.
    """
    path = Path(path)
    n_embd, n_head, n_layer, n_ff, n_ctx = 64, 4, 2, 128, 2048
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["\u2581"] + [chr(c) for c in range(33, 127)] + [f"\u2581{w}" for w in _TINY_WORDS]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # SentencePiece merges the pair whose result scores highest: longer pieces win.
    scores = [0.0] * (3 + 256) + [float(len(p)) - i / 1000 for i, p in enumerate(pieces)]
    n_vocab = len(tokens)

    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny-test-llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(TINY_CHAT_TEMPLATE)
    # numpy shapes are (rows, columns); GGUF stores them reversed, as llama.cpp wants (token_embd: n_embd x n_vocab).
    writer.add_tensor("token_embd.weight", weights(n_vocab, n_embd))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weights(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", weights(n_vocab, n_embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class _ServerProcess:
    """A server in a child process whose output goes to an anonymous temporary file, quoted when it fails."""

    _process: subprocess.Popen[bytes] | None = None
    _log: Any = None

    def log_tail(self, lines: int = 40) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return "\n".join(self._log.read().decode(errors="replace").splitlines()[-lines:])

    def _stop_process(self, grace: float) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class LlamaCppServer(_ServerProcess):
    """The real `python -m llama_cpp.server` (OpenAI-compatible, at `url` = http://127.0.0.1:PORT/v1) on a GGUF.

    With `api_key`, requests without `Authorization: Bearer <api_key>` get a 401. Its stderr (llama.cpp's load
    log, uvicorn's access log) goes to an anonymous temporary file, quoted when the server fails to start.
    """

    def __init__(
        self,
        model_path: Path | str,
        *,
        alias: str = TINY_MODEL_ALIAS,
        n_ctx: int = 256,
        api_key: str | None = None,
        start_timeout: float = 60,
    ) -> None:
        self.model_path = Path(model_path)
        self.model = alias
        self.n_ctx = n_ctx
        self.api_key = api_key
        self.start_timeout = start_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        if self._process is None:
            raise RuntimeError("the server is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaCppServer:
        if self._process is not None:
            raise RuntimeError("the server is already started")
        self.port = _free_port()
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path)]
        argv += ["--model_alias", self.model, "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--n_ctx", str(self.n_ctx), "--n_threads", "1", "--n_threads_batch", "1"]
        if self.api_key:
            argv += ["--api_key", self.api_key]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (open while the server runs; closed by stop())
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_until_ready(argv)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, argv: list[str]) -> None:
        assert self._process is not None
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        deadline = time.monotonic() + self.start_timeout
        while True:
            with suppress(httpx.TransportError):  # not listening yet
                if httpx.get(f"{self.url}/models", headers=headers, timeout=1).status_code == 200:
                    return
            if self._process.poll() is not None:
                raise RuntimeError(f"`{shlex.join(argv)}` exited with {self._process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"`{shlex.join(argv)}` did not answer in {self.start_timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, grace: float = 5) -> None:
        self._stop_process(grace)

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ModelHostProcess(_ServerProcess):
    """The project's own embedded model host (`manage.py model_host`) on the real packaged SmolLM2, listening on a
    unix socket in a short temporary directory (a socket path must stay under 108 bytes)."""

    def __init__(self, *, n_ctx: int = 2048, queue_max: int = 8, threads: int = 1, start_timeout: float = 60) -> None:
        self.n_ctx = n_ctx
        self.queue_max = queue_max
        # One thread: llama.cpp's threads spin while they wait for each other, and on two cores shared with daphne,
        # a worker and the test itself, two of them can take many times longer than one.
        self.threads = threads
        self.start_timeout = start_timeout
        self._dir = tempfile.mkdtemp(prefix="timmy-mh-")
        self.socket = Path(self._dir) / "host.sock"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def env(self) -> dict[str, str]:
        """What a subprocess (daphne, a worker) needs to use this host."""
        return {"EMBEDDED_SOCKET": str(self.socket), "EMBEDDED_CONTEXT_TOKENS": str(self.n_ctx)}

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> ModelHostProcess:
        env = {
            **os.environ,
            **self.env,
            "EMBEDDED_QUEUE_MAX": str(self.queue_max),
            "EMBEDDED_THREADS": str(self.threads),
            "PYTHONUNBUFFERED": "1",
        }
        argv = [sys.executable, "manage.py", "model_host"]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (open while the host runs; closed by stop())
        root = Path(__file__).resolve().parent.parent
        self._process = subprocess.Popen(
            argv, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            health = self.health()
            if health is not None and health.get("loaded"):
                return self
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = self.log_tail()
                self.stop()
                raise RuntimeError(f"the model host did not load its model:\n{log}")
            time.sleep(0.05)

    def health(self) -> dict[str, Any] | None:
        transport = httpx.HTTPTransport(uds=str(self.socket))
        try:
            with httpx.Client(transport=transport, timeout=2) as client:
                answer: dict[str, Any] = client.get("http://model-host/health").json()
                return answer
        except (httpx.TransportError, ValueError):
            return None

    def stop(self, grace: float = 10) -> None:
        self._stop_process(grace)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> ModelHostProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
