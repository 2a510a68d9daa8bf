import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.memory import services
from apps.memory.embeddings import get_embedder

BAR_WIDTH = 30


class Command(BaseCommand):
    help = (
        "Re-embed the memories whose vectors were made by another embedder than the one in use now "
        "(EMBEDDING_BACKEND, EMBEDDING_MODEL_PATH), so that searches compare like with like, and the long ones "
        "stored before memories were embedded in chunks (their embedding model ends in ' (unchunked)'), every "
        "chunk of each. Forgotten memories are left alone. Shows a progress bar on stderr."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=64, help="memories embedded at once (default 64)")
        parser.add_argument("--all", action="store_true", help="re-embed every memory, even the current model's")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        embedder = get_embedder()
        self.stdout.write(f"Embedding with {embedder.name} ({embedder.dimensions} dimensions).")
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            filled = BAR_WIDTH * done // max(total, 1)
            rate = done / max(time.monotonic() - started, 1e-6)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self.stderr.write(f"\r[{bar}] {done}/{total} ({rate:.0f}/s)", ending="")
            self.stderr.flush()

        done = services.reindex(batch_size=options["batch_size"], everything=options["all"], progress=progress)
        if done:
            self.stderr.write("")
        self.stdout.write(f"Re-embedded {done} memor{'y' if done == 1 else 'ies'}." if done else "Nothing to re-embed.")
