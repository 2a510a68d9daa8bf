"""Benchmark of the cascade router, apps/providers/router.py (see docs/benchmarks.md).

One local server that speaks Ollama's API (tests/llm_servers.py, normal mode, no delay) answers every request, and
one loopback address where nothing listens plays a dead provider (connection refused). Measured in one run, the
variants interleaved request by request (each round starts with the next variant), so that load from other processes
falls on all of them alike:

1. `direct`: `ollama.Client.chat` on one client, with the timeouts the router's client gets: the baseline.
2. `router_live`: `router.complete()` with one provider, the live server.
3. `router_dead_first`: a dead provider at priority 1, then the live one. The breaker threshold is set out of
   reach, so every request pays the refused connection, the failure record and the `provider.failover` event.
4. `router_breaker_open`: the same dead provider with its breaker open (threshold 1, opened by one real request
   before the round; recovery time out of reach), so it is skipped without a connection.
5. `litellm_live` and `litellm_dead_first`: LiteLLM's Router over the same two addresses (`ollama_chat/<model>`,
   `num_retries=0`); the dead deployment has `order` 1 and the live one `order` 2 in one model group, and a failure
   should cool a deployment down for an hour (`allowed_fails=0`, `cooldown_time=3600`): the closest it has to an
   open breaker. LiteLLM never cools a deployment down for a connection error, so it tries the dead one every time
   (`litellm_skips_dead_tier` shows whether it did).

Figures, from the medians: `router_overhead_p50_ms` (router_live - direct, target <= 1 ms),
`dead_first_tier_cost_p50_ms` (router_dead_first - router_live, target <= 20 ms), `breaker_open_cost_p50_ms`
(router_breaker_open - router_live, target <= 1 ms), and LiteLLM's medians over ours (`litellm_vs_router_*`, target
> 1: we are faster). Every answer is checked: the server's echo of this request's prompt, from the provider expected,
and a connection to the dead address exactly when one is expected.

Run from the project root: `.venv/bin/python bench/router.py` (`--help` for sizes). LiteLLM comes with
requirements/bench.txt; `--no-litellm` leaves it out. Everything happens in a fresh temporary TIMMY_DATA_DIR that is
removed at exit, with DEBUG off. Nothing may leave the machine: a connection or a name lookup for anything but the
loopback address stops the run. Progress goes to stderr; the last line of stdout is one JSON object with the figures.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from types import ModuleType
from typing import Any

from isolated import DATA_DIR, code_version, say  # first: sets up Django in a temporary data dir, removed at exit

# isort: split
import django
import httpx
import ollama
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings

from apps.providers import router
from apps.providers.models import CircuitState, Provider, ProviderMetrics
from tests.llm_servers import OllamaServer, refused_url

ROUTER_OVERHEAD_TARGET_MS = 1.0
DEAD_FIRST_TIER_TARGET_MS = 20.0
BREAKER_OPEN_TARGET_MS = 1.0
# Out of reach during a run: the dead-first variant must never open its breaker, an open one must stay open.
NEVER = 10**9

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class LoopbackOnly:
    """Counts connections by port, and stops the run at any connection or name lookup off the loopback address.

    An audit hook sees every `socket.connect` and `socket.getaddrinfo` of the process, whichever library makes it.
    """

    def __init__(self) -> None:
        self.connects: Counter[int] = Counter()
        sys.addaudithook(self._audit)

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect":
            address = args[1]
            if isinstance(address, tuple):
                if address[0] not in LOOPBACK:
                    raise RuntimeError(f"refusing a connection off this machine, to {address}")
                self.connects[address[1]] += 1
        elif event == "socket.getaddrinfo" and args[0] not in LOOPBACK and args[0] is not None:
            raise RuntimeError(f"refusing a name lookup for {args[0]!r}")


def import_litellm() -> ModuleType:
    # Only here, because LiteLLM reads these at import: the model cost map from the copy it ships (not from
    # GitHub), and one logging thread, so that `settle` below can wait for its work after each request.
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ["LOGGING_EXECUTOR_MAX_THREADS"] = "1"
    import litellm  # only in requirements/bench.txt

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    if litellm.callbacks or litellm.success_callback or litellm.failure_callback:
        raise RuntimeError("LiteLLM has callbacks configured; this benchmark wants none")
    return litellm


@dataclass
class Variant:
    name: str
    call: Callable[[list[dict[str, str]]], str]  # returns the answer's text
    prepare: Callable[[], None] = lambda: None  # outside the timing
    settle: Callable[[], None] = lambda: None  # outside the timing
    samples: list[float] = field(default_factory=list)


class Bench:
    def __init__(self, server: OllamaServer, dead_url: str, network: LoopbackOnly, litellm: ModuleType | None) -> None:
        self.server = server
        self.dead_url = dead_url
        self.dead_port = int(dead_url.rsplit(":", 1)[1])
        self.network = network
        self.model = server.models[0]
        self.live = Provider.objects.create(
            name="live", kind=Provider.Kind.OLLAMA, priority=2, model=self.model, base_url=server.url
        )
        ProviderMetrics.objects.create(provider=self.live)
        # The baseline: the same library and timeouts as the router's OllamaClient, one client for the whole run.
        self.client = ollama.Client(
            host=server.url,
            timeout=httpx.Timeout(
                self.live.read_timeout_seconds,
                connect=self.live.connect_timeout_seconds,
                pool=self.live.connect_timeout_seconds,
            ),
        )
        self.dead_state: str | None = None
        self.variants = [
            Variant("direct", self.call_direct),
            Variant("router_live", self.call_router, prepare=lambda: self.dead_provider(None)),
            Variant("router_dead_first", self.call_router, prepare=lambda: self.dead_provider(CircuitState.CLOSED)),
            Variant("router_breaker_open", self.call_router, prepare=lambda: self.dead_provider(CircuitState.OPEN)),
        ]
        # Per variant: the requests to the server and the connections to the dead address that one request must make
        # (None: not checked, only counted).
        self.expected: dict[str, tuple[int, int | None]] = {
            "direct": (1, 0),
            "router_live": (1, 0),
            "router_dead_first": (1, 1),
            "router_breaker_open": (1, 0),
        }
        self.dead_connects: dict[str, list[int]] = {}
        if litellm is not None:
            self.litellm_live = litellm.Router(
                model_list=[self.litellm_deployment("live", server.url, order=1)], num_retries=0
            )
            self.litellm_cascade = litellm.Router(
                model_list=[
                    self.litellm_deployment("cascade", dead_url, order=1),
                    self.litellm_deployment("cascade", server.url, order=2),
                ],
                num_retries=0,
                allowed_fails=0,
                cooldown_time=3600,
            )
            settle = litellm.utils.executor.submit
            self.variants += [
                Variant(
                    "litellm_live",
                    lambda m: self.call_litellm(self.litellm_live, "live", m),
                    settle=lambda: settle(int).result(),
                ),
                Variant(
                    "litellm_dead_first",
                    lambda m: self.call_litellm(self.litellm_cascade, "cascade", m),
                    settle=lambda: settle(int).result(),
                ),
            ]
            self.expected |= {"litellm_live": (1, 0), "litellm_dead_first": (1, None)}

    def litellm_deployment(self, group: str, url: str, *, order: int) -> dict[str, Any]:
        params = {
            "model": f"ollama_chat/{self.model}",
            "api_base": url,
            "order": order,
            "timeout": self.live.read_timeout_seconds,
        }
        return {"model_name": group, "litellm_params": params}

    # The calls, each returning the text of the answer.

    def call_direct(self, messages: list[dict[str, str]]) -> str:
        return self.client.chat(model=self.model, messages=messages, options={}).message.content or ""

    def call_router(self, messages: list[dict[str, str]]) -> str:
        completion = router.complete(messages)
        if completion.provider != "live":
            raise RuntimeError(f"answered by {completion.provider!r}, not by the live provider")
        return completion.content

    def call_litellm(self, litellm_router: Any, group: str, messages: list[dict[str, str]]) -> str:
        response = litellm_router.completion(model=group, messages=messages)
        if response._hidden_params.get("api_base") != self.server.url:
            raise RuntimeError(f"LiteLLM answered from {response._hidden_params.get('api_base')}, not the live server")
        return response.choices[0].message.content or ""

    # The dead provider, in the state a variant wants, set outside the timing.

    def dead_provider(self, state: str | None) -> None:
        if state == self.dead_state:
            return
        Provider.objects.filter(name="dead").delete()
        self.dead_state = None
        if state is None:
            return
        dead = Provider.objects.create(
            name="dead", kind=Provider.Kind.OLLAMA, priority=1, model=self.model, base_url=self.dead_url
        )
        ProviderMetrics.objects.create(provider=dead)
        if state == CircuitState.OPEN:
            # One real request opens it: the dead provider fails (the first failure reaches threshold 1).
            with override_settings(CIRCUIT_BREAKER_THRESHOLD=1):
                self.call_router([{"role": "user", "content": "open the breaker"}])
            if ProviderMetrics.objects.get(provider=dead).circuit_state != CircuitState.OPEN:
                raise RuntimeError("the dead provider's breaker did not open")
        self.dead_state = state

    def request(self, variant: Variant, prompt: str) -> float:
        variant.prepare()
        chats = self.server.requests["/api/chat"]
        dead = self.network.connects[self.dead_port]
        messages = [{"role": "user", "content": prompt}]
        start = time.perf_counter()
        answer = variant.call(messages)
        elapsed = (time.perf_counter() - start) * 1000
        variant.settle()
        if answer != f"Echo: {prompt}":
            raise RuntimeError(f"{variant.name}: answer {answer!r} to {prompt!r}")
        made = (self.server.requests["/api/chat"] - chats, self.network.connects[self.dead_port] - dead)
        self.dead_connects.setdefault(variant.name, []).append(made[1])
        chats_expected, dead_expected = self.expected[variant.name]
        if made[0] != chats_expected or (dead_expected is not None and made[1] != dead_expected):
            raise RuntimeError(
                f"{variant.name}: {made[0]} request(s) to the server and {made[1]} connection(s) to the dead "
                f"address, expected {chats_expected} and {dead_expected}"
            )
        return elapsed

    def run(self, *, requests: int, warmup: int) -> None:
        n = len(self.variants)
        for i in range(warmup + requests):
            for k in range(n):
                variant = self.variants[(i + k) % n]
                ms = self.request(variant, f"ping {i} from {variant.name}")
                if i >= warmup:
                    variant.samples.append(ms)
            if (i + 1) % 100 == 0 or i + 1 == warmup + requests:
                say(f"  {i + 1}/{warmup + requests} rounds (the first {warmup} are warm-up)")

    def queries_per_request(self) -> dict[str, int]:
        """SQL statements one request of each router variant runs (counted apart from the timing)."""
        counts = {}
        for variant in self.variants:
            if variant.name.startswith("router_"):
                variant.prepare()
                with CaptureQueriesContext(connection) as queries:
                    variant.call([{"role": "user", "content": "count"}])
                counts[variant.name] = len(queries.captured_queries)
        return counts


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="measured requests per variant (default 500)")
    parser.add_argument("--warmup", type=int, default=20, help="rounds before measuring (default 20)")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    args = parser.parse_args()

    network = LoopbackOnly()
    litellm = None if args.no_litellm else import_litellm()
    say(f"data dir {DATA_DIR} (removed at exit); DEBUG off")
    call_command("migrate", verbosity=0, interactive=False)
    load_before = os.getloadavg()

    with (
        OllamaServer() as server,
        override_settings(CIRCUIT_BREAKER_THRESHOLD=NEVER, CIRCUIT_BREAKER_RECOVERY_SECONDS=NEVER),
    ):
        bench = Bench(server, refused_url(), network, litellm)
        names = ", ".join(v.name for v in bench.variants)
        say(f"server {server.url}, dead {bench.dead_url}; {args.requests} requests each of {names}, interleaved")
        bench.run(requests=args.requests, warmup=args.warmup)
        queries = bench.queries_per_request()
    connection.close()

    stats = {
        v.name: {
            "p50_ms": round(statistics.median(v.samples), 3),
            "p95_ms": round(p95(v.samples), 3),
            "min_ms": round(min(v.samples), 3),
        }
        for v in bench.variants
    }
    for name, s in stats.items():
        say(f"  {name:20} p50 {s['p50_ms']:8.3f} ms  p95 {s['p95_ms']:8.3f} ms  min {s['min_ms']:8.3f} ms")
    p50 = {name: s["p50_ms"] for name, s in stats.items()}
    if p50["direct"] > 10:
        say(
            f"  the direct call takes {p50['direct']:.1f} ms at p50 on loopback: the server is slow to answer "
            "(e.g. Nagle's algorithm against delayed ACKs), which hides the costs measured here"
        )

    figures: dict[str, Any] = {
        "router_overhead_p50_ms": round(p50["router_live"] - p50["direct"], 3),
        "dead_first_tier_cost_p50_ms": round(p50["router_dead_first"] - p50["router_live"], 3),
        "breaker_open_cost_p50_ms": round(p50["router_breaker_open"] - p50["router_live"], 3),
    }
    met = {
        "router_overhead": figures["router_overhead_p50_ms"] <= ROUTER_OVERHEAD_TARGET_MS,
        "dead_first_tier_cost": figures["dead_first_tier_cost_p50_ms"] <= DEAD_FIRST_TIER_TARGET_MS,
        "breaker_open_cost": figures["breaker_open_cost_p50_ms"] <= BREAKER_OPEN_TARGET_MS,
    }
    if litellm is not None:
        figures |= {
            "litellm_live_p50_ms": p50["litellm_live"],
            "litellm_dead_first_p50_ms": p50["litellm_dead_first"],
            "litellm_vs_router_live": round(p50["litellm_live"] / p50["router_live"], 2),
            "litellm_vs_router_dead_first": round(p50["litellm_dead_first"] / p50["router_dead_first"], 2),
            # LiteLLM's cooldown against our open breaker: it tries the dead deployment on every request.
            "litellm_vs_router_breaker_open": round(p50["litellm_dead_first"] / p50["router_breaker_open"], 2),
            "litellm_skips_dead_tier": 0 in bench.dead_connects["litellm_dead_first"],
        }
        met |= {
            "faster_than_litellm_live": figures["litellm_vs_router_live"] > 1,
            "faster_than_litellm_dead_first": figures["litellm_vs_router_dead_first"] > 1,
        }
    load_after = os.getloadavg()
    print(
        json.dumps(
            {
                **figures,
                "variants": stats,
                "router_queries_per_request": queries,
                "targets": {
                    "router_overhead_p50_ms": f"<= {ROUTER_OVERHEAD_TARGET_MS}",
                    "dead_first_tier_cost_p50_ms": f"<= {DEAD_FIRST_TIER_TARGET_MS}",
                    "breaker_open_cost_p50_ms": f"<= {BREAKER_OPEN_TARGET_MS}",
                    "litellm_vs_router_*": "> 1",
                },
                "met": met,
                "targets_met": all(met.values()),
                "requests": args.requests,
                "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
                "cpus": os.cpu_count(),
                "debug": False,
                "code": code_version(),
                "ollama": version("ollama"),
                "litellm": version("litellm") if litellm is not None else None,
                "django": django.get_version(),
                "python": platform.python_version(),
                "date": datetime.now(UTC).date().isoformat(),
            }
        )
    )


if __name__ == "__main__":
    main()
