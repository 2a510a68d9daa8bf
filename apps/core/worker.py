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

from apps.core import selectors, services
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
    """The one background process: runs WORKER_STEPS in a loop and beats its heartbeat.

    Steps claim their work with conditional updates, so several workers can run side by side.
    """

    worker_id: str
    steps: list[tuple[str, Step]] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def from_settings(cls, worker_id: str) -> "Worker":
        return cls(worker_id=worker_id, steps=[(path, import_string(path)) for path in settings.WORKER_STEPS])

    @property
    def source(self) -> str:
        return f"worker:{self.worker_id}"[:64]

    def start(self) -> None:
        services.worker_register(worker_id=self.worker_id)
        providers_ensure_defaults()
        joined = swarm_services.agents_bring_online(source=self.source)
        logger.info("worker %s started; %d agent(s) joined", self.worker_id, joined)

    def run_once(self) -> int:
        """Run every step once; return how many items were handled in all."""
        found = 0
        for name, step in self.steps:
            if self.stop_event.is_set():
                break
            try:
                found += step(timezone.now())
            except Exception as exc:
                # A failing step must not stop the others; it is recorded where the operator looks.
                logger.exception("worker step %s failed", name)
                with transaction.atomic():
                    log_event(
                        EventType.SYSTEM_ERROR,
                        source=self.source,
                        data={"step": name, "error": type(exc).__name__, "message": str(exc)},
                    )
        return found

    def run_forever(self) -> None:
        last_beat = time.monotonic()
        cycles = 0
        while not self.stop_event.is_set():
            close_old_connections()
            found = self.run_once()
            cycles += 1
            if time.monotonic() - last_beat >= settings.WORKER_HEARTBEAT_SECONDS:
                services.worker_beat(worker_id=self.worker_id, cycles=cycles)
                cycles = 0
                last_beat = time.monotonic()
            if not found:
                self.stop_event.wait(settings.WORKER_POLL_SECONDS)

    def stop(self) -> None:
        services.worker_stopped(worker_id=self.worker_id)
        # The persona agents live in the workers: they leave when the last worker does.
        if not selectors.workers_alive_count(exclude_worker_id=self.worker_id):
            swarm_services.agents_take_offline(source=self.source)
        logger.info("worker %s stopped", self.worker_id)
