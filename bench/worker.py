"""Benchmark of the worker while models think: auction-close lateness and task throughput (issue 14).

One run, in a fresh temporary data dir (migrated, DEBUG off), with real worker processes (`manage.py run_worker`)
and the local Ollama-protocol test server (tests/llm_servers.py, in this process, on a loopback port) as the only
enabled provider. The server answers each `/api/chat` after a fixed delay, requests in parallel (each waits on its
own thread), so a worker's model calls take the time a slow model would and cost no CPU.

1. Auction-close lateness. A worker at WORKER_CONCURRENCY --concurrency (default 2); a task is posted every
   --interval seconds for --seconds, each with an auction of --auction seconds, from this process, while idle
   persona agents bid. A task's lateness is its closing event's timestamp (`task.assigned`, `task.failed`, or
   the `task.bidding` of an extension when every agent was busy) minus the closing time its auction opened with.
   Two sides, each with its own worker:
   - baseline: the server answers at once, so no model work is running;
   - model work: the server answers after --delay seconds (default 4), and tasks are posted faster than the worker
     runs them, so its model calls run all the time (`model_busy_fraction`: the share of the posting window in
     which at least one call was running).
   Figures: `auction_lateness_p95_s`, `auction_lateness_p95_baseline_s` and their difference
   `auction_lateness_p95_delta_s` (target: at most +1 s).
2. Throughput. --tasks tasks (default 12) are posted and assigned (their auctions closed from this process) before
   a worker starts at WORKER_CONCURRENCY 1, 2 and 4, with the server answering after --task-delay seconds (default
   1). Tasks/s: completed tasks / (last finish - first start), so the worker's start-up does not count. Figures:
   `throughput_1_tasks_per_s` (and _2, _4), `throughput_2_vs_1` (target: at least 1.8) and `throughput_4_vs_1`.

Between phases the worker is stopped with SIGTERM and the tasks left open are failed, so each phase starts with an
empty queue. The poll interval is WORKER_POLL_SECONDS (default 1.0 s), as the worker runs by default.

Run from the project root: `.venv/bin/python bench/worker.py` (about 2.5 minutes with the defaults; --help). Progress
goes to stderr; the last line of stdout is one JSON object with the figures.
"""

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from isolated import DATA_DIR, ROOT, code_version, say  # first: sets up Django in a temporary data dir

# isort: split
import django
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from apps.core.models import WorkerHeartbeat
from apps.events.models import Event, EventType
from apps.providers import services as provider_services
from apps.providers.models import Provider
from apps.swarm import services as swarm
from apps.swarm.models import Agent, Task
from tests.llm_servers import OllamaServer

LATENESS_DELTA_TARGET_S = 1.0
THROUGHPUT_2_VS_1_TARGET = 1.8
LEVELS = (1, 2, 4)
# One per bidding persona (each clearly that persona's kind of work), so that the tasks spread over the agents.
DESCRIPTIONS = (
    "Research the history of the Lightning Network, note {n}",
    "Fix the bug in the backup script, case {n}",
    "Analyse the trend in the weekly data, series {n}",
    "Draft a short blog post about sovereign computing, part {n}",
    "Monitor the server uptime and report, check {n}",
    "Audit the password policy of the admin, item {n}",
)


def now() -> float:
    return time.monotonic()


def description(number: int) -> str:
    return DESCRIPTIONS[number % len(DESCRIPTIONS)].format(n=number)


def percentile(values: list[float], fraction: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# --- the worker process ---


class WorkerProcess:
    def __init__(self, name: str, *, concurrency: int, server: OllamaServer) -> None:
        self.worker_id = f"bench-{name}"
        self.log_path = DATA_DIR / f"worker-{name}.log"
        env = {
            **os.environ,
            "WORKER_CONCURRENCY": str(concurrency),
            # The provider row says where the server is; the setting agrees, for rows the worker may create.
            "OLLAMA_HOST": server.url,
            # Echo's results are stored as memories: the hashed embedder keeps torch out of the measure.
            "EMBEDDING_BACKEND": "hashed",
            "PRELOAD_MODELS": "0",
            # Forge's tasks would otherwise become change requests, drafted and tested (the test suite) here.
            "FORGE_PROPOSES_UPGRADES": "0",
            "OMP_NUM_THREADS": "1",
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "run_worker", "--worker-id", self.worker_id],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def fail(self, why: str) -> SystemExit:
        log = self.log_path.read_text(errors="replace")[-3000:]
        return SystemExit(f"worker {self.worker_id}: {why}\n{log}")

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise self.fail(f"exited with status {self.proc.returncode}")

    def wait_ready(self, timeout: float = 60) -> None:
        """Registered, and the persona agents online to bid (the worker brings them online as it starts)."""
        deadline = now() + timeout
        while not (
            WorkerHeartbeat.objects.filter(worker_id=self.worker_id, stopped_at=None).exists()
            and not Agent.objects.filter(bids_on_tasks=True, status=Agent.Status.OFFLINE).exists()
        ):
            self.check()
            if now() > deadline:
                raise self.fail(f"not ready after {timeout} s")
            time.sleep(0.1)

    def stop(self, timeout: float) -> None:
        """SIGTERM: the worker finishes (or hands back) the tasks it runs; killed if it takes over `timeout`."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                say(f"  worker {self.worker_id} still running {timeout:.0f} s after SIGTERM: killed")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def wait_until(done: Callable[[], bool], *, worker: WorkerProcess, timeout: float) -> bool:
    deadline = now() + timeout
    while not done():
        worker.check()
        if now() > deadline:
            return False
        time.sleep(0.2)
    return True


def close_open_tasks() -> int:
    """Fail what a phase left open (assigned but not run, or handed back at stop), so the next starts empty."""
    open_ids = list(Task.objects.exclude(status__in=Task.TERMINAL).values_list("pk", flat=True))
    for task_id in open_ids:
        swarm.task_fail(task_id=task_id, reason="The benchmark phase ended.")
    return len(open_ids)


# --- 1. auction-close lateness ---


@dataclass
class Lateness:
    posted: int
    seconds: list[float]
    without_bids: int
    still_bidding: int
    model_busy_fraction: float
    tasks_run: int

    def figures(self) -> dict[str, Any]:
        return {
            "posted": self.posted,
            "closed": len(self.seconds),
            "closed_without_bids": self.without_bids,
            "not_closed": self.still_bidding,
            "p50_s": rounded(percentile(self.seconds, 0.5)),
            "p95_s": rounded(percentile(self.seconds, 0.95)),
            "max_s": rounded(max(self.seconds, default=None)),
            "model_busy_fraction": round(self.model_busy_fraction, 3),
            "tasks_run": self.tasks_run,
        }


def lateness_phase(
    name: str,
    *,
    server: OllamaServer,
    delay: float,
    concurrency: int,
    seconds: float,
    interval: float,
    auction: int,
) -> Lateness:
    server.mode, server.delay = ("slow", delay) if delay else ("normal", 0.0)
    worker = WorkerProcess(name, concurrency=concurrency, server=server)
    task_ids: list[int] = []
    try:
        worker.wait_ready()
        started = now()
        while (due := started + len(task_ids) * interval) < started + seconds:
            time.sleep(max(0.0, due - now()))
            worker.check()
            task_ids.append(swarm.task_post(description=description(len(task_ids)), auction_seconds=auction).pk)
        # A worker held by a model call closes the last auctions when the call ends.
        wait_until(
            lambda: not Task.objects.filter(pk__in=task_ids, status=Task.Status.BIDDING).exists(),
            worker=worker,
            timeout=auction + 2 * delay + 30,
        )
    finally:
        worker.stop(timeout=delay + 40)
    stopped = timezone.now()
    result = lateness_of(task_ids, stopped=stopped)
    close_open_tasks()
    return result


def lateness_of(task_ids: list[int], *, stopped: datetime) -> Lateness:
    tasks = {task.pk: task for task in Task.objects.filter(pk__in=task_ids)}
    closing: dict[int, Event] = {}
    first_close: dict[int, datetime] = {}  # an extension moves auction_closes_at: the opening event has the first
    events = Event.objects.filter(
        task_id__in=[str(pk) for pk in task_ids],
        event_type__in=[EventType.TASK_BIDDING, EventType.TASK_ASSIGNED, EventType.TASK_FAILED],
    ).order_by("id")
    for event in events:
        pk = int(event.task_id)
        if event.event_type == EventType.TASK_BIDDING and not event.data.get("extended"):
            first_close.setdefault(pk, datetime.fromisoformat(event.data["closes_at"]))
        else:  # assigned, failed, or extended: the worker acted on the due auction
            closing.setdefault(pk, event)
    seconds = []
    for pk, event in closing.items():
        closes_at = first_close.get(pk) or tasks[pk].auction_closes_at
        assert closes_at is not None
        seconds.append((event.timestamp - closes_at).total_seconds())
    without_bids = sum(event.event_type == EventType.TASK_FAILED for event in closing.values())
    # The share of the posting window (first to last auction's close) in which some model call was running.
    closes = [t.auction_closes_at for t in tasks.values() if t.auction_closes_at is not None]
    runs = sorted((t.started_at, t.finished_at or stopped) for t in tasks.values() if t.started_at is not None)
    busy = timedelta(0)
    if closes:
        window_start, window_end = min(closes), max(closes)
        covered_until = window_start
        for start, end in runs:
            start, end = max(start, covered_until), min(end, window_end)
            if end > start:
                busy += end - start
                covered_until = end
        window = (window_end - window_start).total_seconds()
        fraction = busy.total_seconds() / window if window > 0 else 0.0
    else:
        fraction = 0.0
    return Lateness(
        posted=len(task_ids),
        seconds=seconds,
        without_bids=without_bids,
        still_bidding=len(task_ids) - len(closing),
        model_busy_fraction=fraction,
        tasks_run=len(runs),
    )


# --- 2. throughput ---


@dataclass
class Throughput:
    concurrency: int
    tasks: int
    completed: int
    failed: int
    span_seconds: float | None

    @property
    def tasks_per_second(self) -> float | None:
        if not self.span_seconds or not self.completed:
            return None
        return self.completed / self.span_seconds

    def figures(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "completed": self.completed,
            "failed": self.failed,
            "seconds": rounded(self.span_seconds),
            "tasks_per_s": rounded(self.tasks_per_second),
        }


def throughput_phase(*, server: OllamaServer, concurrency: int, tasks: int, delay: float) -> Throughput:
    server.mode, server.delay = "slow", delay
    # The last worker took the agents offline as it stopped: they are back to bid before this one starts.
    swarm.agents_bring_online(source="bench")
    posted = [swarm.task_post(description=description(n), auction_seconds=2) for n in range(tasks)]
    last_close = max(task.auction_closes_at for task in posted if task.auction_closes_at is not None)
    time.sleep(max(0.0, (last_close - timezone.now()).total_seconds()) + 0.05)
    swarm.auctions_close_due()
    task_ids = [task.pk for task in posted]
    if Task.objects.filter(pk__in=task_ids).exclude(status=Task.Status.ASSIGNED).exists():
        raise SystemExit(f"throughput at {concurrency}: not every task was assigned before the worker started")

    worker = WorkerProcess(f"throughput-{concurrency}", concurrency=concurrency, server=server)
    try:
        finished = wait_until(
            lambda: not Task.objects.filter(pk__in=task_ids).exclude(status__in=Task.TERMINAL).exists(),
            worker=worker,
            timeout=tasks * delay + 60,
        )
        if not finished:
            say(f"  throughput at {concurrency}: not every task finished in {tasks * delay + 60:.0f} s")
    finally:
        worker.stop(timeout=delay + 40)
    done = list(Task.objects.filter(pk__in=task_ids, status=Task.Status.COMPLETED))
    span = None
    if done:
        first = min(t.started_at for t in done if t.started_at is not None)
        last = max(t.finished_at for t in done if t.finished_at is not None)
        span = (last - first).total_seconds()
    result = Throughput(
        concurrency=concurrency,
        tasks=tasks,
        completed=len(done),
        failed=Task.objects.filter(pk__in=task_ids, status=Task.Status.FAILED).count(),
        span_seconds=span,
    )
    close_open_tasks()
    return result


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else round(numerator / denominator, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30, help="posting time of each lateness side (default 30)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two posted tasks (default 1)")
    parser.add_argument("--auction", type=int, default=2, help="auction length of the posted tasks, s (default 2)")
    parser.add_argument("--delay", type=float, default=4.0, help="a model call while posting, s (default 4)")
    parser.add_argument("--concurrency", type=int, default=2, help="WORKER_CONCURRENCY while posting (default 2)")
    parser.add_argument("--tasks", type=int, default=12, help="tasks of each throughput round (default 12)")
    parser.add_argument("--task-delay", type=float, default=1.0, help="a model call in throughput rounds (default 1)")
    args = parser.parse_args()
    if args.seconds <= 0 or args.interval <= 0 or args.delay <= 0 or args.task_delay <= 0:
        parser.error("--seconds, --interval, --delay and --task-delay must be positive")
    if args.auction < 1 or args.concurrency < 1 or args.tasks < 2:
        parser.error("--auction and --concurrency must be at least 1, --tasks at least 2")

    say(f"data dir {DATA_DIR} (removed at exit); DEBUG off")
    started = now()
    call_command("migrate", verbosity=0, interactive=False)
    load_before = os.getloadavg()
    pool = hasattr(settings, "WORKER_CONCURRENCY")
    if not pool:
        say("no WORKER_CONCURRENCY setting: the worker runs one task at a time (figures 'before the pool')")

    with OllamaServer() as server:
        provider_services.providers_ensure_defaults()
        Provider.objects.exclude(kind=Provider.Kind.OLLAMA).update(enabled=False)
        # A context window of its own, as an operator sets in the admin: the router then never asks /api/show,
        # which the test server delays like a chat (Ollama answers it at once).
        Provider.objects.filter(kind=Provider.Kind.OLLAMA).update(
            enabled=True, base_url=server.url, model=server.models[0], context_tokens=4096
        )
        say(
            f"Ollama-protocol server on {server.url}; lateness: a task every {args.interval} s for {args.seconds} s, "
            f"auctions of {args.auction} s, WORKER_CONCURRENCY {args.concurrency}"
        )
        baseline = lateness_phase(
            "baseline",
            server=server,
            delay=0.0,
            concurrency=args.concurrency,
            seconds=args.seconds,
            interval=args.interval,
            auction=args.auction,
        )
        say(f"lateness, no model work: {json.dumps(baseline.figures())}")
        loaded = lateness_phase(
            "model-work",
            server=server,
            delay=args.delay,
            concurrency=args.concurrency,
            seconds=args.seconds,
            interval=args.interval,
            auction=args.auction,
        )
        say(f"lateness, model calls of {args.delay} s: {json.dumps(loaded.figures())}")
        rounds: dict[int, Throughput] = {}
        for level in LEVELS:
            rounds[level] = throughput_phase(server=server, concurrency=level, tasks=args.tasks, delay=args.task_delay)
            say(f"throughput at WORKER_CONCURRENCY {level}: {json.dumps(rounds[level].figures())}")
    load_after = os.getloadavg()

    p95 = percentile(loaded.seconds, 0.95)
    p95_baseline = percentile(baseline.seconds, 0.95)
    delta = None if p95 is None or p95_baseline is None else p95 - p95_baseline
    rates = {level: rounds[level].tasks_per_second for level in LEVELS}
    two_vs_one, four_vs_one = ratio(rates[2], rates[1]), ratio(rates[4], rates[1])
    met = {
        "auction_lateness": delta is not None and delta <= LATENESS_DELTA_TARGET_S and not loaded.still_bidding,
        "throughput_2_vs_1": two_vs_one is not None and two_vs_one >= THROUGHPUT_2_VS_1_TARGET,
        "every_task_completed": all(r.completed == r.tasks for r in rounds.values()),
    }
    print(
        json.dumps(
            {
                "benchmark": "worker",
                "auction_lateness_p95_s": rounded(p95),
                "auction_lateness_p95_baseline_s": rounded(p95_baseline),
                "auction_lateness_p95_delta_s": rounded(delta),
                **{f"throughput_{level}_tasks_per_s": rounded(rates[level]) for level in LEVELS},
                "throughput_2_vs_1": two_vs_one,
                "throughput_4_vs_1": four_vs_one,
                "targets": {
                    "auction_lateness_p95_delta_s": f"<= {LATENESS_DELTA_TARGET_S}",
                    "throughput_2_vs_1": f">= {THROUGHPUT_2_VS_1_TARGET}",
                },
                "met": met,
                "targets_met": all(met.values()),
                "lateness_with_model_work": loaded.figures(),
                "lateness_baseline": baseline.figures(),
                "throughput": {str(level): rounds[level].figures() for level in LEVELS},
                "settings": {
                    "worker_concurrency_setting": pool,
                    "lateness_concurrency": args.concurrency,
                    "worker_poll_seconds": settings.WORKER_POLL_SECONDS,
                    "post_interval_s": args.interval,
                    "post_seconds": args.seconds,
                    "auction_s": args.auction,
                    "model_delay_s": args.delay,
                    "throughput_model_delay_s": args.task_delay,
                },
                "seconds": round(now() - started, 1),
                "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
                "cpus": os.cpu_count(),
                "code": code_version(),
                "django": django.get_version(),
                "python": platform.python_version(),
                "date": datetime.now(UTC).date().isoformat(),
            }
        )
    )


if __name__ == "__main__":
    main()
