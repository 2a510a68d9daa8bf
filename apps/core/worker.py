import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from apps.core import database, selectors, services
from apps.core.jobs import Job, JobSource, Pool
from apps.events.models import EventType
from apps.events.services import log_event
from apps.providers.services import providers_ensure_defaults
from apps.swarm import services as swarm_services

logger = logging.getLogger("timmy.worker")

Step = Callable[[datetime], int]


def at_most_every(interval: timedelta) -> Callable[[Step], Step]:
    """For a step that need not run every cycle (it asks a remote node, or prunes): it runs at most once per
    `interval` in a process and returns 0 in between."""

    def decorate(step: Step) -> Step:
        last: list[datetime] = []

        @functools.wraps(step)
        def throttled(now: datetime) -> int:
            if last and now - last[0] < interval:
                return 0
            last[:] = [now]
            return step(now)

        return throttled

    return decorate


@dataclass
class Worker:
    """The background process: runs WORKER_STEPS in a loop and beats its heartbeat, while the jobs it claims from
    WORKER_JOBS (model calls, test runs) run in its pool of WORKER_CONCURRENCY threads.

    Steps and job sources claim their work with conditional updates, so several workers can run side by side.
    """

    worker_id: str
    steps: list[tuple[str, Step]] = field(default_factory=list)
    job_sources: list[tuple[str, JobSource]] = field(default_factory=list)
    concurrency: int = 1
    stop_event: threading.Event = field(default_factory=threading.Event)
    # Set by a second Ctrl-C: hand the running jobs back now rather than after the grace period.
    hurry_event: threading.Event = field(default_factory=threading.Event)
    # Set when a job finishes or a stop is asked for, so the loop claims the next job without waiting a poll.
    wake_event: threading.Event = field(default_factory=threading.Event)
    pool: Pool = field(init=False)
    _next_source: int = field(default=0, init=False)
    # Seconds to wait before the next cycle while the database is busy or unreachable (0: it answers).
    backoff: float = field(default=0.0, init=False)
    _database_trouble: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.pool = Pool(size=max(1, self.concurrency), source=self.source, on_done=self.wake_event)

    @classmethod
    def from_settings(cls, worker_id: str, *, concurrency: int | None = None) -> "Worker":
        return cls(
            worker_id=worker_id,
            steps=[(path, import_string(path)) for path in settings.WORKER_STEPS],
            job_sources=[(path, import_string(path)) for path in settings.WORKER_JOBS],
            concurrency=settings.WORKER_CONCURRENCY if concurrency is None else concurrency,
        )

    @property
    def source(self) -> str:
        return f"worker:{self.worker_id}"[:64]

    def start(self) -> None:
        services.worker_register(worker_id=self.worker_id)
        providers_ensure_defaults()
        joined = swarm_services.agents_bring_online(source=self.source)
        logger.info("worker %s started; %d agent(s) joined", self.worker_id, joined)

    def request_stop(self, *, hurry: bool = False) -> None:
        self.stop_event.set()
        if hurry:
            self.hurry_event.set()
        self.wake_event.set()

    def _failed(self, kind: str, name: str, exc: Exception) -> None:
        trouble = database.unavailable(exc)
        if trouble is not None:
            # Not a bug of the step: nothing can be recorded now either. The loop backs off (run_forever).
            self._database_trouble = trouble
            logger.debug("worker %s %s met a %s database: %s", kind.replace("_", " "), name, trouble, exc)
            return
        # A failing step or job source must not stop the others; it is recorded where the operator looks.
        logger.exception("worker %s %s failed: %s: %s", kind.replace("_", " "), name, type(exc).__name__, exc)
        with transaction.atomic():
            log_event(
                EventType.SYSTEM_ERROR,
                source=self.source,
                data={kind: name, "error": type(exc).__name__, "message": str(exc)},
            )

    def run_steps(self) -> int:
        found = 0
        for name, step in self.steps:
            if self.stop_event.is_set() or self._database_trouble:
                break
            try:
                found += step(timezone.now())
            except Exception as exc:
                self._failed("step", name, exc)
        return found

    def claim_jobs(self) -> int:
        """Fill the pool's free places, asking the job sources in turn (each call starts one source further on, so
        a queue of tasks does not starve the drafts); return how many jobs were started."""
        claimed = 0
        sources = self.job_sources
        # At most a pool's worth per call: jobs that end at once must not keep the loop from its steps.
        while (
            sources
            and self.pool.free > 0
            and claimed < self.pool.size
            and not self.stop_event.is_set()
            and not self._database_trouble
        ):
            started = claimed
            first, self._next_source = self._next_source, (self._next_source + 1) % len(sources)
            for name, source in sources[first:] + sources[:first]:
                if (
                    self.pool.free <= 0
                    or claimed >= self.pool.size
                    or self.stop_event.is_set()
                    or self._database_trouble
                ):
                    break
                job = self._claim(name, source)
                if job is not None:
                    self.pool.submit(job)
                    claimed += 1
            if claimed == started:
                break
        return claimed

    def run_once(self) -> int:
        """`run_worker --once`: run every step once, then claim one job from each source and run it here to the
        end, then the steps once more if a job ran (to pay the winner of a task it completed); return how many
        items were handled in all."""
        found = self.run_steps()
        ran = 0
        for name, source in self.job_sources:
            if self.stop_event.is_set():
                break
            job = self._claim(name, source)
            if job is not None:
                self.pool.execute(job)
                ran += 1
        return found + ran + (self.run_steps() if ran else 0)

    def _claim(self, name: str, source: JobSource) -> Job | None:
        try:
            return source(self.worker_id)
        except Exception as exc:
            self._failed("job_source", name, exc)
            return None

    def run_forever(self) -> None:
        last_beat = time.monotonic()
        cycles = 0
        while not self.stop_event.is_set():
            close_old_connections()
            self.wake_event.clear()
            self._database_trouble = None
            found = self.run_steps() + self.claim_jobs()
            cycles += 1
            if time.monotonic() - last_beat >= settings.WORKER_HEARTBEAT_SECONDS:
                try:
                    services.worker_beat(worker_id=self.worker_id, cycles=cycles)
                    cycles = 0
                    last_beat = time.monotonic()
                except Exception as exc:
                    self._failed("heartbeat", "worker_beat", exc)
            if self._database_trouble is not None:
                self._back_off(self._database_trouble)
                continue
            if self.backoff:
                logger.warning("worker %s: the database answers again; carrying on", self.worker_id)
                self.backoff = 0.0
            if not found:
                self.wake_event.wait(settings.WORKER_POLL_SECONDS)

    def _back_off(self, trouble: str) -> None:
        """Wait longer after each cycle the database could not answer (twice as long each time, up to a minute),
        saying so once per wait; a stop still ends the wait at once."""
        self.backoff = min(60.0, max(settings.WORKER_POLL_SECONDS, self.backoff * 2 or settings.DATABASE_BUSY_SECONDS))
        logger.warning(
            "worker %s: the database is %s; waiting %.0f s before trying again", self.worker_id, trouble, self.backoff
        )
        self.stop_event.wait(self.backoff)

    def finish_jobs(self, grace: float | None = None) -> list[str]:
        """Give the running jobs `grace` seconds (WORKER_GRACE_SECONDS) to finish, less if hurried; then hand back
        the claims of those still running, for another worker to resume at once. Returns the jobs handed back."""
        grace = settings.WORKER_GRACE_SECONDS if grace is None else grace
        deadline = time.monotonic() + grace
        while self.pool.busy and not self.hurry_event.is_set() and time.monotonic() < deadline:
            self.pool.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        if not self.pool.busy:
            return []
        released = self.pool.release_all()  # each release logs its own event on the item
        logger.warning("worker %s stopped with %s unfinished; handed back", self.worker_id, ", ".join(released))
        return released

    def stop(self) -> None:
        self.finish_jobs()
        services.worker_stopped(worker_id=self.worker_id)
        # The persona agents live in the workers: they leave when the last worker does.
        if not selectors.workers_alive_count(exclude_worker_id=self.worker_id):
            swarm_services.agents_take_offline(source=self.source)
        logger.info("worker %s stopped", self.worker_id)
