"""Model-bound work of the worker (running a task, drafting or applying an upgrade): claimed by a job source, run in
the worker's pool of WORKER_CONCURRENCY threads while its loop keeps closing auctions and paying winners.

A job source (see WORKER_JOBS) takes the worker's id and claims at most one item, with a lease, returning a Job or
None. `run` does the work (it renews its own lease, see apps.core.leases) and records the outcome only while the
claim is still its own. `release` hands an unfinished claim back at once, for another worker to resume, when this one
is stopping and its grace period is over."""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import connections, transaction

from apps.core import database
from apps.events.models import EventType
from apps.events.services import log_event

logger = logging.getLogger("timmy.worker")

JobSource = Callable[[str], "Job | None"]


@dataclass
class Job:
    name: str  # "task 12", "change request 3": for logs and events
    run: Callable[[], object]
    release: Callable[[], bool]  # True if the claim was still this worker's and is now back in the queue


@dataclass
class Pool:
    """At most `size` jobs at a time, each in its own daemon thread: a model call that outlives the grace period
    must not keep the process alive once its claim has been handed back."""

    size: int
    source: str  # the worker's event source
    on_done: threading.Event = field(default_factory=threading.Event)
    _running: dict[threading.Thread, Job] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def free(self) -> int:
        with self._lock:
            return self.size - len(self._running)

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._running.values())

    def submit(self, job: Job) -> None:
        thread = threading.Thread(target=self._run, args=(job,), name=f"job {job.name}", daemon=True)
        with self._lock:
            self._running[thread] = job
        thread.start()

    def _run(self, job: Job) -> None:
        try:
            self.execute(job)
        finally:
            connections.close_all()  # this thread's own connections
            with self._lock:
                self._running.pop(threading.current_thread(), None)
            self.on_done.set()

    def execute(self, job: Job) -> None:
        """Run a job in this thread (the pool's threads, or `run_worker --once`)."""
        try:
            job.run()
        except Exception as exc:
            kind = database.unavailable(exc)
            if kind is not None:
                self._hand_back(job, kind, exc)
                return
            # The job's own failures are recorded on its item; this is a bug, shown where the operator looks.
            logger.exception("job %s failed: %s: %s", job.name, type(exc).__name__, exc)
            with transaction.atomic():
                log_event(
                    EventType.SYSTEM_ERROR,
                    source=self.source,
                    data={"job": job.name, "error": type(exc).__name__, "message": str(exc)},
                )

    def _hand_back(self, job: Job, kind: str, exc: Exception) -> None:
        # Not the job's failure: the database could not be written. Its claim goes back for a later try (or, if the
        # database is still away, its lease runs out and the item is recovered): nothing is counted against it.
        logger.warning("job %s stopped: database %s (%s); handing its claim back", job.name, kind, exc)
        try:
            job.release()
        except Exception as again:
            if database.unavailable(again) is None:
                # Not the database's doing: a bug of the release, shown with its traceback.
                logger.exception("could not hand back %s; its lease will run out instead", job.name)
            else:
                logger.warning("could not hand back %s (%s); its lease will run out instead", job.name, again)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running jobs to finish, at most `timeout` seconds; True if none is left."""
        with self._lock:
            threads = list(self._running)
        end = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if end is None else max(0.0, end - time.monotonic()))
        return not self.busy

    def release_all(self) -> list[str]:
        """Hand back the claims of the jobs still running; their threads' outcomes will be dropped."""
        released = []
        for job in self.jobs():
            try:
                if job.release():
                    released.append(job.name)
            except Exception:
                logger.exception("could not release %s; its lease will run out instead", job.name)
        return released
