from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.ledger import services
from apps.ledger.backends.base import BackendError


class Command(BaseCommand):
    help = (
        "Re-check pending ledger entries against the Lightning node (settle, fail or expire them as the node says) "
        "and the running totals against the rows; print what disagrees. Exit status 1 when something drifted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=500, help="pending entries to check (default 500)")

    def handle(self, *args: Any, limit: int, **options: Any) -> None:
        if limit < 1:
            raise CommandError("--limit must be at least 1.")
        try:
            report = services.reconcile(limit=limit)
        except BackendError as exc:
            raise CommandError(f"The node could not be asked: {exc}") from exc
        self.stdout.write(
            f"Checked {report.checked} pending entries: {report.settled} settled, {report.failed} failed, "
            f"{report.expired} expired, {report.still_pending} still pending."
        )
        if report.unreachable:
            self.stderr.write("The node stopped answering; the rest stay pending.")
        for line in report.drift:
            self.stderr.write(f"Drift: {line}")
        if report.drift or report.unreachable:
            raise CommandError(f"{len(report.drift)} disagreement(s) between the ledger and the node.", returncode=1)
