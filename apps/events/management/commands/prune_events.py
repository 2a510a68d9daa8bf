from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.events.services import events_prune_days

MAX_DAYS = 36_500


class Command(BaseCommand):
    help = "Delete audit events older than N days (default EVENT_RETENTION_DAYS) and report how many went."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=settings.EVENT_RETENTION_DAYS)

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"]
        if not 1 <= days <= MAX_DAYS:
            raise CommandError(f"--days must be between 1 and {MAX_DAYS}.")
        removed, cutoff = events_prune_days(days=days)
        self.stdout.write(f"Removed {removed} event(s) older than {days} day(s) (before {cutoff:%Y-%m-%d %H:%M} UTC).")
