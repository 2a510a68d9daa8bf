import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.providers import embedded

MODEL_HOST_RESTARTS = 3
# How long a child may take to stop after SIGTERM (the worker: on top of WORKER_GRACE_SECONDS).
STOP_SECONDS = 15


class Command(BaseCommand):
    help = (
        "Run the dashboard (daphne), the worker and the embedded model host together, as `make run` does. Ctrl-C "
        "or SIGTERM stops them all, the model host last (the worker's running jobs get WORKER_GRACE_SECONDS; a "
        "second Ctrl-C hands them back at once); if the dashboard or the worker exits, the rest are stopped too. "
        "The model host is restarted if it dies, and not started when one already runs (`manage.py model_host`)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument(
            "--no-model-host",
            action="store_true",
            help="Do not start the embedded model host (apps.providers.embedded).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        python = sys.executable
        web = [python, "-m", "daphne", "-b", options["host"], "-p", str(options["port"]), "timmy_site.asgi:application"]
        worker = [python, "manage.py", "run_worker"]
        stopping = False
        signals = 0

        def on_signal(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping, signals
            stopping = True
            signals += 1

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

        # Own process groups: Ctrl-C reaches only this command, which then stops the children in order.
        model_host = [python, "manage.py", "model_host"]
        start_model_host = not options["no_model_host"] and not embedded.host_running()
        procs: dict[str, subprocess.Popen[bytes]] = {}
        # First, so that the model loads while daphne and the worker start.
        if start_model_host:
            procs["model host"] = subprocess.Popen(model_host, cwd=settings.BASE_DIR, start_new_session=True)
        # The site's own origins (SITE_ORIGINS, apps/core/origins.py) follow the address it really serves.
        web_env = {**os.environ, "HOST": options["host"], "PORT": str(options["port"])}
        procs["web"] = subprocess.Popen(web, cwd=settings.BASE_DIR, env=web_env, start_new_session=True)
        procs["worker"] = subprocess.Popen(worker, cwd=settings.BASE_DIR, start_new_session=True)
        self.stdout.write(f"Dashboard on http://{options['host']}:{options['port']}/  (Ctrl-C stops everything)")
        failed = ""
        host_restarts = 0
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is None:
                    continue
                if name == "model host" and host_restarts < MODEL_HOST_RESTARTS:
                    # Chats fail over meanwhile; the dashboard and the worker need not stop for it.
                    host_restarts += 1
                    self.stderr.write(f"The model host exited with status {proc.returncode}; restarting it.")
                    procs[name] = subprocess.Popen(model_host, cwd=settings.BASE_DIR, start_new_session=True)
                    continue
                failed = f"{name} exited with status {proc.returncode}"
                stopping = True
            time.sleep(0.2)
        # The model host last: the worker's running jobs may be using it during their grace period.
        first = {name: proc for name, proc in procs.items() if name != "model host"}
        self._stop(first, timeout=settings.WORKER_GRACE_SECONDS + STOP_SECONDS, signals=lambda: signals)
        self._stop({k: v for k, v in procs.items() if k not in first}, timeout=STOP_SECONDS, signals=lambda: signals)
        if failed:
            raise CommandError(f"Stopped because the {failed}.")
        self.stdout.write("Stopped.")

    def _stop(self, procs: dict[str, subprocess.Popen[bytes]], *, timeout: float, signals: Callable[[], int]) -> None:
        """SIGTERM, then wait up to `timeout`, passing a further Ctrl-C on (the worker then hands its jobs back at
        once); what is still running after that is killed."""
        seen = signals()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(proc.poll() is None for proc in procs.values()) and time.monotonic() < deadline:
            if signals() != seen:
                seen = signals()
                for proc in procs.values():
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
        for name, proc in procs.items():
            if proc.poll() is None:
                self.stderr.write(f"{name} did not stop in time; killing it.")
                proc.kill()
                proc.wait()
