from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.providers.services import usage_rebuild


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--since wants a day as YYYY-MM-DD, not {value!r}") from None


class Command(BaseCommand):
    help = (
        "Recompute the usage figures (/router/usage) from the request records. Without --since: from the first day "
        "the records cover whole (they are pruned after PROVIDER_REQUEST_RETENTION_DAYS; the figures of older days "
        "are kept and left alone)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", metavar="YYYY-MM-DD", help="first day to recompute (replaces its figures)")

    def handle(self, *args: Any, **options: Any) -> None:
        since = _day(options["since"]) if options["since"] else None
        rebuilt = usage_rebuild(since=since)
        if rebuilt.since is None:
            self.stdout.write("No request records: nothing to rebuild.")
            return
        self.stdout.write(
            f"Rebuilt the usage figures from {rebuilt.since.isoformat()}: {rebuilt.requests} requests "
            f"over {rebuilt.days} day{'s' if rebuilt.days != 1 else ''} in {rebuilt.rows} rows."
        )
