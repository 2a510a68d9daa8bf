import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Run the dashboard (daphne) and the worker together, as `make run` does. Ctrl-C or SIGTERM stops both; "
        "if either exits, the other is stopped too."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=settings.PORT)

    def handle(self, *args: Any, **options: Any) -> None:
        python = sys.executable
        web = [python, "-m", "daphne", "-b", options["host"], "-p", str(options["port"]), "timmy_site.asgi:application"]
        worker = [python, "manage.py", "run_worker"]
        stopping = False

        def on_signal(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

        # Own process groups: Ctrl-C reaches only this command, which then stops the children in order.
        procs = {
            "web": subprocess.Popen(web, cwd=settings.BASE_DIR, start_new_session=True),
            "worker": subprocess.Popen(worker, cwd=settings.BASE_DIR, start_new_session=True),
        }
        self.stdout.write(f"Dashboard on http://{options['host']}:{options['port']}/  (Ctrl-C stops everything)")
        failed = ""
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    failed = f"{name} exited with status {proc.returncode}"
                    stopping = True
            time.sleep(0.2)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, proc in procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop in time; killing it.")
                proc.kill()
                proc.wait()
        if failed:
            raise CommandError(f"Stopped because the {failed}.")
        self.stdout.write("Stopped.")
