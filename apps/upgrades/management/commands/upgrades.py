from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.upgrades import services
from apps.upgrades.models import Upgrade


class Command(BaseCommand):
    help = "The self-upgrade queue: `upgrades list [--status S]`, `upgrades rollback ID --user NAME`."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="upgrades, newest first")
        listing.add_argument("--status", choices=Upgrade.Status.values)
        rollback = sub.add_parser("rollback", help="undo an applied upgrade with a revert commit")
        rollback.add_argument("upgrade_id", type=int)
        rollback.add_argument(
            "--user", required=True, help="who rolls it back (needs the permission upgrades.approve_upgrade)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "list":
            upgrades = Upgrade.objects.order_by("-id")
            if options["status"]:
                upgrades = upgrades.filter(status=options["status"])
            for upgrade in upgrades[:100]:
                tests = "✓" if upgrade.tests_passed else "✗"
                self.stdout.write(
                    f"{upgrade.pk:>5} {upgrade.status:<11} {upgrade.risk:<6} tests {tests} {upgrade.branch}  "
                    f"{upgrade.description[:60]}"
                )
            return
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user {options['user']!r}.")
        try:
            upgrade = services.upgrade_rollback(upgrade_id=options["upgrade_id"], actor=user)
        except services.UpgradeError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Rolled back upgrade {upgrade.pk} with commit {upgrade.revert_commit}.")
