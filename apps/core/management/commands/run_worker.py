import signal
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from apps.core.services import worker_default_id
from apps.core.worker import Worker
from apps.memory import embeddings


class Command(BaseCommand):
    help = (
        "Run the background worker: closes due auctions, assigns winners, recovers tasks left by a crashed "
        "worker, and writes a heartbeat the dashboard shows. Stops cleanly on SIGTERM or Ctrl-C. "
        "Several workers may run at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Run every step once, then exit.")
        parser.add_argument("--worker-id", default=None, help="Name in the heartbeat table (default host:pid).")

    def handle(self, *args: Any, **options: Any) -> None:
        worker = Worker.from_settings(options["worker_id"] or worker_default_id())

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.stdout.write(f"Received {signal.Signals(signum).name}, stopping after the current step…")
            worker.stop_event.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        worker.start()
        if settings.PRELOAD_MODELS and not options["once"]:
            embeddings.preload()
        self.stdout.write(f"Worker {worker.worker_id} running {len(worker.steps)} step(s).")
        try:
            if options["once"]:
                handled = worker.run_once()
                self.stdout.write(f"Handled {handled} item(s).")
            else:
                worker.run_forever()
        finally:
            worker.stop()
        self.stdout.write("Worker stopped.")
