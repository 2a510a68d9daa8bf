import signal
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.services import worker_default_id
from apps.core.worker import Worker
from apps.memory import embeddings


class Command(BaseCommand):
    help = (
        "Run the background worker: closes due auctions, pays winners, recovers the work of crashed workers and "
        "writes a heartbeat the dashboard shows, while it runs tasks, drafts and applies upgrades in a pool of "
        "WORKER_CONCURRENCY threads. On SIGTERM or Ctrl-C it stops claiming at once and gives running jobs "
        "WORKER_GRACE_SECONDS to finish (a second Ctrl-C: at once), then hands the rest back for another worker. "
        "Several workers may run at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Run every step once, then exit.")
        parser.add_argument("--worker-id", default=None, help="Name in the heartbeat table (default host:pid).")
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help=f"Jobs run at once (default WORKER_CONCURRENCY, {settings.WORKER_CONCURRENCY}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        concurrency = options["concurrency"]
        if concurrency is not None and concurrency < 1:
            raise CommandError(f"--concurrency must be at least 1, not {concurrency}.")
        worker = Worker.from_settings(options["worker_id"] or worker_default_id(), concurrency=concurrency)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if worker.stop_event.is_set():
                self.stdout.write(f"Received {name} again: handing the running jobs back now…")
                worker.request_stop(hurry=True)
                return
            busy = worker.pool.busy
            self.stdout.write(
                f"Received {name}: no new work is claimed"
                + (
                    f"; {busy} running job(s) get {settings.WORKER_GRACE_SECONDS:g} s to finish…"
                    if busy
                    else ", stopping…"
                )
            )
            worker.request_stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        worker.start()
        if settings.PRELOAD_MODELS and not options["once"]:
            embeddings.preload()
        self.stdout.write(
            f"Worker {worker.worker_id} running {len(worker.steps)} step(s), up to {worker.pool.size} job(s) at once."
        )
        try:
            if options["once"]:
                handled = worker.run_once()
                self.stdout.write(f"Handled {handled} item(s).")
            else:
                worker.run_forever()
        finally:
            worker.stop()
        self.stdout.write("Worker stopped.")
