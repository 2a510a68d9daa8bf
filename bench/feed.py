"""Benchmark of the live activity feed, /ws/events/ (see docs/benchmarks.md).

Each phase starts a fresh daphne on a free loopback port (as `manage.py serve` does), opens WebSocket clients in a
separate process (bench/feed_clients.py, the `websockets` library), and runs the event writer in a third process
(bench/feed_writer.py: log_event at a steady rate, one transaction per event, recording each commit's time).

1. Latency from commit to client, p50 and p95: a few clients, the writer at 10 events/s for 20 s; with the embedded
   default (no Redis: each web process polls the event table) and with Redis (daphne and the writer get REDIS_URL, a
   private redis-server; every commit nudges the followers). Latency is the client's receive time minus the writer's
   time right after COMMIT (same machine, same clock). Targets: p95 <= 250 ms embedded, <= 50 ms with Redis.
2. Load: 500 clients for 60 s at 10 events/s: events delivered / events expected per client and overall (target
   1.0; a `skipped` range counts only once the client has fetched it from /api/v1/events), p95 latency across all
   clients, daphne's RSS (peak and end) and CPU. Embedded, then with Redis.

Baseline: in every phase one more connection, never subscribed, sends a ping about every 100 ms (jittered) and times
the pong, on the same server at the same moment. Latency p95 is also given as a multiple of that round trip's p95;
the delivered/expected ratio is itself the ratio.

Where the time goes, per event: `first_client_*` (commit to the first client that has it: nudge or poll, the read,
the start of the fan-out) and `fanout_spread_*` (first to last client). The machine is shared: every phase reports
the CPU that other processes took meanwhile (`others_cpu_percent`) and how long daphne's event loop was runnable but
had no core (`server_runqueue_wait_percent`). Latency under load moves with both.

All clients come from 127.0.0.1, so WEBSOCKET_MAX_PER_IP is raised (--max-per-ip, default 1000) for the server.

Run from the project root: `.venv/bin/python bench/feed.py` (about 6 minutes; --help for sizes). Everything
happens in a fresh temporary TIMMY_DATA_DIR that is removed at exit, and every process it starts is stopped at exit.
Progress goes to stderr; the last line of stdout is one JSON object with the figures.
"""

import argparse
import atexit
import json
import os
import platform
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

from isolated import (  # first: sets up Django in a temporary data dir, removed at exit
    DATA_DIR,
    ROOT,
    code_version,
    migrate_fresh_database,
    say,
)

# isort: split
import django
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

BENCH = Path(__file__).resolve().parent
EMBEDDED_P95_TARGET_MS = 250.0
REDIS_P95_TARGET_MS = 50.0
DELIVERED_TARGET = 1.0
IDLE_SECONDS = 3  # pings before the writer starts: the round trip of an idle server, for information
START_TIMEOUT = 60
READY_TIMEOUT = 300
DRAIN_SECONDS = 30
STOP_TIMEOUT = 15

ASGI_APPLICATION = "timmy_site.asgi:application"  # what `manage.py serve` runs
PHASES = ("latency_embedded", "latency_redis", "load_embedded", "load_redis")

CHILDREN: list[subprocess.Popen[Any]] = []


# --- processes ---


def start(
    argv: list[str], *, env: dict[str, str], log: Path | None = None, pipes: bool = False
) -> subprocess.Popen[str]:
    out: IO[Any] | int | None = subprocess.PIPE if pipes else None
    if log is not None:
        out = log.open("w", encoding="utf-8")
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT if log is not None else None,
        text=True,
        start_new_session=True,  # Ctrl-C reaches this script alone, which then stops its children
    )
    CHILDREN.append(proc)
    return proc


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in CHILDREN:
        CHILDREN.remove(proc)


def stop_children() -> None:
    for proc in list(reversed(CHILDREN)):
        stop(proc)


atexit.register(stop_children)  # runs before the directory is removed (atexit is last in, first out)


def read_line(proc: subprocess.Popen[str], *, timeout: float, what: str) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if ready else ""
    if not line:
        raise RuntimeError(f"{what}: no answer within {timeout:.0f} s (exit status {proc.poll()})")
    return line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Any, *, proc: subprocess.Popen[Any], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{what} did not start (exit status {proc.poll()}):\n{tail}")
        time.sleep(0.1)


def start_redis() -> tuple[subprocess.Popen[str], str]:
    import redis  # the client library, in the venv with channels-redis

    program = shutil.which("redis-server") or "/usr/bin/redis-server"
    workdir = Path(tempfile.mkdtemp(prefix="redis-", dir=DATA_DIR))
    port = free_port()
    argv = [program, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    log = workdir / "redis.log"
    server = start(argv, env=dict(os.environ), log=log)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)

    def answers() -> bool:
        # Its pid, not just PONG: another redis-server may have taken the port meanwhile.
        try:
            return bool(client.info("server")["process_id"] == server.pid)
        except redis.ConnectionError:
            return False

    wait_until(answers, proc=server, what="redis-server", log=log)
    client.close()
    return server, f"redis://127.0.0.1:{port}/0"


def start_daphne(env: dict[str, str], log: Path, *, asgi: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), asgi]
    daphne = start(argv, env=env, log=log)

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    wait_until(answers, proc=daphne, what="daphne", log=log)
    return daphne, port


# --- /proc ---


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def runqueue_seconds(pid: int) -> float:
    """Time the process's main thread has spent runnable but waiting for a core (/proc/<pid>/schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def memory_mb(pid: int) -> dict[str, float]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found


def machine_cpu() -> tuple[float, float]:
    """Busy and total seconds of all cores since boot."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            try:
                rss = memory_mb(self.pid)["VmRSS"]
            except (FileNotFoundError, KeyError):
                return  # the server has exited (a zombie has no VmRSS): this run is being stopped
            self.peak = max(self.peak, rss)


@dataclass(frozen=True)
class Usage:
    wall: float
    cpu: dict[str, float]
    waited: dict[str, float]
    machine: tuple[float, float]

    @classmethod
    def now(cls, pids: dict[str, list[int]]) -> "Usage":
        cpu = {name: sum(cpu_seconds(pid) for pid in group) for name, group in pids.items()}
        waited = {name: sum(runqueue_seconds(pid) for pid in group) for name, group in pids.items()}
        return cls(time.time(), cpu, waited, machine_cpu())

    def percent_since(self, before: "Usage") -> dict[str, float]:
        wall = self.wall - before.wall
        shares = {f"{name}_cpu_percent": 100 * (self.cpu[name] - before.cpu[name]) / wall for name in self.cpu}
        for name in self.waited:
            # Time the main thread (the event loop) was ready to run but had no core: CPU contention.
            shares[f"{name}_runqueue_wait_percent"] = 100 * (self.waited[name] - before.waited[name]) / wall
        busy, total = self.machine[0] - before.machine[0], self.machine[1] - before.machine[1]
        shares["machine_cpu_percent"] = 100 * busy / total  # of all cores
        # Other processes on the machine (a shared box is noisy), in % of one core like the figures above.
        shares["others_cpu_percent"] = 100 * busy / wall - sum(shares[f"{name}_cpu_percent"] for name in self.cpu)
        return {name: round(value, 1) for name, value in shares.items()}


# --- one phase ---


def percentile(values: list[float], p: float) -> float:
    """Nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


@dataclass(frozen=True)
class PhaseConfig:
    name: str
    clients: int
    duration: float
    rate: float
    redis: bool
    client_procs: int


def run_phase(config: PhaseConfig, *, session: str, max_per_ip: int, asgi: str) -> dict[str, Any]:
    workdir = DATA_DIR / config.name
    workdir.mkdir()
    redis_server, redis_url = start_redis() if config.redis else (None, "")
    env = {**os.environ, "REDIS_URL": redis_url, "WEBSOCKET_MAX_PER_IP": str(max_per_ip)}
    daphne, port = start_daphne(env, workdir / "daphne.log", asgi=asgi)
    rss_idle = memory_mb(daphne.pid)["VmRSS"]
    sampler = RssSampler(daphne.pid)
    sampler.start()

    say(f"[{config.name}] daphne pid {daphne.pid} on port {port}; opening {config.clients} clients")
    shares = [
        config.clients // config.client_procs + (k < config.clients % config.client_procs)
        for k in range(config.client_procs)
    ]
    shards = []
    for k, count in enumerate(shares):
        argv = [sys.executable, str(BENCH / "feed_clients.py"), "--clients", str(count)]
        argv += ["--url", f"ws://127.0.0.1:{port}/ws/events/", "--origin", f"http://127.0.0.1:{port}"]
        argv += ["--api", f"http://127.0.0.1:{port}/api/v1/events", "--out", str(workdir / f"clients-{k}.json")]
        argv += ["--drain", str(DRAIN_SECONDS)] + (["--ping"] if k == 0 else [])
        shards.append(start(argv, env={**env, "BENCH_SESSIONID": session}, pipes=True))
    opening = time.monotonic()
    for k, shard in enumerate(shards):
        answer = read_line(shard, timeout=READY_TIMEOUT, what=f"client process {k}")
        if not answer.startswith("ready"):
            raise RuntimeError(f"client process {k}: {answer}")
    rss_connected = memory_mb(daphne.pid)["VmRSS"]
    say(f"[{config.name}] {config.clients} clients subscribed in {time.monotonic() - opening:.1f} s")
    time.sleep(IDLE_SECONDS)

    commits_file = workdir / "commits.txt"
    argv = [sys.executable, str(BENCH / "feed_writer.py"), "--rate", str(config.rate)]
    argv += ["--duration", str(config.duration), "--out", str(commits_file)]
    writer = start(argv, env=env, pipes=True)
    writer_cpu_start = float(read_line(writer, timeout=START_TIMEOUT, what="writer").split()[1])
    pids = {"server": [daphne.pid], "clients": [s.pid for s in shards]}
    before = Usage.now(pids)
    say(f"[{config.name}] writing {config.rate:g} events/s for {config.duration:g} s")
    writer.wait(timeout=config.duration + START_TIMEOUT)
    after = Usage.now(pids)
    if writer.returncode != 0:
        raise RuntimeError(f"the writer exited with status {writer.returncode}")
    assert writer.stdout is not None
    writer_cpu = float(writer.stdout.read().split()[2]) - writer_cpu_start
    usage = after.percent_since(before)
    usage["writer_cpu_percent"] = round(100 * writer_cpu / (after.wall - before.wall), 1)
    usage["others_cpu_percent"] = round(usage["others_cpu_percent"] - usage["writer_cpu_percent"], 1)

    for shard in shards:
        assert shard.stdin is not None
        shard.stdin.write(f"stop {commits_file}\n")
        shard.stdin.flush()
    for k, shard in enumerate(shards):
        read_line(shard, timeout=DRAIN_SECONDS + START_TIMEOUT, what=f"client process {k} (draining)")
        shard.wait(timeout=STOP_TIMEOUT)
    sampler.stopping.set()
    sampler.join()
    memory = memory_mb(daphne.pid)
    stop(daphne)
    if redis_server is not None:
        stop(redis_server)

    results = [json.loads((workdir / f"clients-{k}.json").read_text()) for k in range(len(shards))]
    figures = summarise(config, results, commits_file, window=(before.wall, after.wall))
    figures.update(
        {
            "server_rss_mb_idle": round(rss_idle, 1),
            "server_rss_mb_connected": round(rss_connected, 1),
            "server_rss_mb_peak": round(max(memory["VmHWM"], sampler.peak), 1),
            "server_rss_mb_end": round(memory["VmRSS"], 1),
            **usage,
        }
    )
    # How long one event's fan-out occupies the server's single event loop, and its cost per client message.
    per_event_ms = usage["server_cpu_percent"] * 10 / config.rate
    figures["server_cpu_ms_per_event"] = round(per_event_ms, 2)
    figures["server_cpu_us_per_message"] = round(per_event_ms * 1000 / config.clients, 1)
    say(
        f"[{config.name}] latency p50 {figures['latency_p50_ms']} ms, p95 {figures['latency_p95_ms']} ms "
        f"(ping->pong p95 {figures['pingpong_p95_ms']} ms, x{figures['latency_p95_vs_pingpong']}); "
        f"delivered/expected {figures['delivered_vs_expected']} (worst client {figures['worst_client_ratio']}); "
        f"skipped {figures['skipped_events']}, fetched {figures['fetched_events']}; "
        f"server CPU {figures['server_cpu_percent']}% of a core ({figures['server_cpu_us_per_message']} us a message), "
        f"RSS peak {figures['server_rss_mb_peak']} MB; "
        f"clients CPU {figures['clients_cpu_percent']}%, client loop lag p95 {figures['client_loop_lag_p95_ms']} ms; "
        f"first client p50/p95 {figures['first_client_p50_ms']}/{figures['first_client_p95_ms']} ms, "
        f"fan-out spread p50/p95 {figures['fanout_spread_p50_ms']}/{figures['fanout_spread_p95_ms']} ms; "
        f"other processes {figures['others_cpu_percent']}% of a core; server waited for a core "
        f"{figures['server_runqueue_wait_percent']}% of the time"
    )
    return figures


def summarise(
    config: PhaseConfig, results: list[dict[str, Any]], commits_file: Path, *, window: tuple[float, float]
) -> dict[str, Any]:
    commits = {}
    nudges = []
    for line in commits_file.read_text(encoding="ascii").splitlines():
        event_id, committed, nudged = line.split()
        commits[int(event_id)] = float(committed)
        nudges.append((float(nudged) - float(committed)) * 1000)
    clients = [c for r in results for c in r["clients"]]
    latencies: list[float] = []
    by_event: dict[int, list[float]] = defaultdict(list)
    expected_total = delivered_total = 0
    worst = 1.0
    for c in clients:
        have = {event_id for event_id, _ in c["received"]} | set(c["fetched"])
        expected = [event_id for event_id in commits if event_id > c["position"]]
        delivered = sum(1 for event_id in expected if event_id in have)
        expected_total += len(expected)
        delivered_total += delivered
        worst = min(worst, delivered / len(expected) if expected else 1.0)
        for event_id, received in c["received"]:
            if event_id in commits:
                latency = (received - commits[event_id]) * 1000
                latencies.append(latency)
                by_event[event_id].append(latency)
    # Where the time goes, per event: until the first client has it (nudge or poll, read, first send), then
    # until the last one has it (the fan-out, in the server and in the client process).
    first = [min(values) for values in by_event.values()]
    spread = [max(values) - min(values) for values in by_event.values()]
    pings = [rtt for r in results for sent, rtt in r.get("pings", []) if window[0] <= sent <= window[1]]
    idle_pings = [rtt for r in results for sent, rtt in r.get("pings", []) if sent < window[0]]
    lags = [lag for r in results for at, lag in r["lags"] if window[0] <= at <= window[1]]
    p95, ping_p95 = percentile(latencies, 95), percentile(pings, 95)
    errors = [e for c in clients for e in c["errors"]]
    return {
        "clients": len(clients),
        "duration_s": config.duration,
        "events_per_s": config.rate,
        "events_written": len(commits),
        "redis": config.redis,
        "latency_p50_ms": round(percentile(latencies, 50), 1),
        "latency_p95_ms": round(p95, 1),
        "latency_p99_ms": round(percentile(latencies, 99), 1),
        "latency_max_ms": round(max(latencies, default=float("nan")), 1),
        "latency_samples": len(latencies),
        "first_client_p50_ms": round(percentile(first, 50), 1),
        "first_client_p95_ms": round(percentile(first, 95), 1),
        "fanout_spread_p50_ms": round(percentile(spread, 50), 1),
        "fanout_spread_p95_ms": round(percentile(spread, 95), 1),
        # From COMMIT to the end of log_event's on_commit callbacks in the writer: the Redis nudge, if any.
        "writer_after_commit_p50_ms": round(percentile(nudges, 50), 2),
        "writer_after_commit_p95_ms": round(percentile(nudges, 95), 2),
        "pingpong_p50_ms": round(percentile(pings, 50), 2),
        "pingpong_p95_ms": round(ping_p95, 2),
        "pingpong_idle_p95_ms": round(percentile(idle_pings, 95), 2),
        "latency_p95_vs_pingpong": round(p95 / ping_p95, 1),
        "delivered_vs_expected": round(delivered_total / expected_total, 6) if expected_total else None,
        "worst_client_ratio": round(worst, 6),
        "events_expected": expected_total,
        "events_delivered": delivered_total,
        "skipped_events": sum(count for c in clients for _, _, count in c["skipped"]),
        "fetched_events": sum(len(c["fetched"]) for c in clients),
        "duplicates": sum(c["duplicates"] for c in clients),
        "client_errors": len(errors),
        "client_error_sample": errors[:3],
        "drained_s": round(max(r["drained_s"] for r in results), 1),
        "client_procs": len(results),
        "client_loop_lag_p95_ms": round(percentile(lags, 95), 1),
        "client_loop_lag_max_ms": round(max(lags, default=float("nan")), 1),
    }


# --- main ---


def make_session() -> str:
    user = get_user_model().objects.create_user("bench", is_staff=True)
    client = Client(SERVER_NAME="127.0.0.1")
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return f"{os.cpu_count()} cores ({model}), {round(memory_kb / 1024 / 1024)} GB, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10, help="events per second written (default 10)")
    parser.add_argument("--latency-clients", type=int, default=5, help="clients in the latency phases (default 5)")
    parser.add_argument("--latency-duration", type=float, default=20, help="seconds of writing (default 20)")
    parser.add_argument("--load-clients", type=int, default=500, help="clients in the load phases (default 500)")
    parser.add_argument("--load-duration", type=float, default=60, help="seconds of writing (default 60)")
    parser.add_argument("--client-procs", type=int, default=1, help="processes the load clients are split into")
    parser.add_argument("--max-per-ip", type=int, default=1000, help="WEBSOCKET_MAX_PER_IP for the server")
    parser.add_argument(
        "--asgi",
        default=ASGI_APPLICATION,
        help=f"the application daphne serves, to measure a candidate change (default {ASGI_APPLICATION})",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated, in this order: {', '.join(PHASES)} (default: all)",
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.phases.split(",") if name.strip()]
    if not chosen or set(chosen) - set(PHASES):
        parser.error(f"--phases: choose among {', '.join(PHASES)}")
    if args.max_per_ip < args.load_clients + 1:
        parser.error("--max-per-ip must allow every client and the pinging connection")

    migrate_fresh_database(f"WEBSOCKET_MAX_PER_IP={args.max_per_ip} for the server")
    session = make_session()
    connection.close()

    configs = {
        "latency_embedded": PhaseConfig(
            "latency_embedded", args.latency_clients, args.latency_duration, args.rate, False, 1
        ),
        "latency_redis": PhaseConfig("latency_redis", args.latency_clients, args.latency_duration, args.rate, True, 1),
        "load_embedded": PhaseConfig(
            "load_embedded", args.load_clients, args.load_duration, args.rate, False, args.client_procs
        ),
        "load_redis": PhaseConfig(
            "load_redis", args.load_clients, args.load_duration, args.rate, True, args.client_procs
        ),
    }
    figures = {
        name: run_phase(configs[name], session=session, max_per_ip=args.max_per_ip, asgi=args.asgi)
        for name in PHASES
        if name in chosen
    }

    summary: dict[str, Any] = {}
    checks: dict[str, bool] = {}
    for name, prefix in (("latency_embedded", "latency_embedded"), ("latency_redis", "latency_redis")):
        if name in figures:
            phase = figures[name]
            target = REDIS_P95_TARGET_MS if phase["redis"] else EMBEDDED_P95_TARGET_MS
            summary |= {
                f"{prefix}_p50_ms": phase["latency_p50_ms"],
                f"{prefix}_p95_ms": phase["latency_p95_ms"],
                f"{prefix}_p95_vs_pingpong": phase["latency_p95_vs_pingpong"],
                f"{prefix}_pingpong_p95_ms": phase["pingpong_p95_ms"],
            }
            checks[f"{prefix}_p95_ms"] = phase["latency_p95_ms"] <= target
    if "latency_embedded" in figures:
        summary["latency_clients"] = args.latency_clients
        # The transport baseline: ping->pong on the same server, in the embedded latency phase.
        summary["pingpong_p95_ms"] = figures["latency_embedded"]["pingpong_p95_ms"]
    if {"load_embedded", "load_redis"} & set(figures):
        summary |= {"clients": args.load_clients, "duration_s": args.load_duration, "events_per_s": args.rate}
    # The names for the embedded load run (delivered_vs_expected, load_p95_ms, server_rss_mb_peak, ...).
    for name, prefix, latency in (("load_embedded", "", "load_"), ("load_redis", "load_redis_", "load_redis_")):
        if name in figures:
            phase = figures[name]
            target = REDIS_P95_TARGET_MS if phase["redis"] else EMBEDDED_P95_TARGET_MS
            summary |= {
                f"{prefix}delivered_vs_expected": phase["delivered_vs_expected"],
                f"{latency}p50_ms": phase["latency_p50_ms"],
                f"{latency}p95_ms": phase["latency_p95_ms"],
                f"{latency}p95_vs_pingpong": phase["latency_p95_vs_pingpong"],
                f"{latency}pingpong_p95_ms": phase["pingpong_p95_ms"],
                f"{prefix}server_rss_mb_peak": phase["server_rss_mb_peak"],
                f"{prefix}server_rss_mb_end": phase["server_rss_mb_end"],
                f"{prefix}server_cpu_percent": phase["server_cpu_percent"],
                f"{prefix}others_cpu_percent": phase["others_cpu_percent"],
            }
            checks[f"{prefix}delivered_vs_expected"] = phase["delivered_vs_expected"] == DELIVERED_TARGET
            checks[f"{latency}p95_ms"] = phase["latency_p95_ms"] <= target
    print(
        json.dumps(
            {
                **summary,
                "phases_run": list(figures),
                "phases": figures,
                "targets": {
                    "latency_embedded_p95_ms": f"<= {EMBEDDED_P95_TARGET_MS:g}",
                    "latency_redis_p95_ms": f"<= {REDIS_P95_TARGET_MS:g}",
                    "load_p95_ms": f"<= {EMBEDDED_P95_TARGET_MS:g}",
                    "load_redis_p95_ms": f"<= {REDIS_P95_TARGET_MS:g}",
                    "delivered_vs_expected": f"== {DELIVERED_TARGET:g}, as load_redis_delivered_vs_expected",
                },
                "checks": checks,
                "targets_met": all(checks.values()),
                "settings": {
                    "WEBSOCKET_MAX_PER_IP": args.max_per_ip,
                    "WEBSOCKET_EVENT_THROTTLE": settings.WEBSOCKET_EVENT_THROTTLE,
                    "ACTIVITY_FEED_BUFFER": settings.ACTIVITY_FEED_BUFFER,
                    "ACTIVITY_FEED_POLL_SECONDS": settings.ACTIVITY_FEED_POLL_SECONDS,
                    "DEBUG": False,
                },
                "asgi": args.asgi,
                "code": code_version(),
                "machine": machine(),
                "python": platform.python_version(),
                "django": django.get_version(),
                "daphne": version("daphne"),
                "channels": version("channels"),
                "channels_redis": version("channels-redis"),
                "websockets": version("websockets"),
                "redis_server": subprocess.run(
                    [shutil.which("redis-server") or "/usr/bin/redis-server", "--version"],
                    capture_output=True,
                    text=True,
                )
                .stdout.split()[2]
                .removeprefix("v="),
                "date": datetime.now(UTC).date().isoformat(),
            }
        )
    )


if __name__ == "__main__":
    main()
