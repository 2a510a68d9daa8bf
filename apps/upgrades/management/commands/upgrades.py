import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.selectors import workers_alive_count
from apps.upgrades import services
from apps.upgrades.models import Upgrade

POLL_SECONDS = 0.5


class Command(BaseCommand):
    help = (
        "The self-upgrade queue: `upgrades list [--status S]`; `upgrades rollback ID --user NAME [--wait SECONDS]` "
        "queues the rollback of an applied upgrade for the worker."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="upgrades, newest first")
        listing.add_argument("--status", choices=Upgrade.Status.values)
        rollback = sub.add_parser(
            "rollback",
            help="queue the rollback of an applied upgrade: the worker undoes it with a revert commit",
            description="Queue the rollback of an applied upgrade. The worker (`run_worker`) reverts its merge with "
            "a revert commit on the target branch; this command does not touch git itself.",
        )
        rollback.add_argument("upgrade_id", type=int)
        rollback.add_argument(
            "--user", required=True, help="who rolls it back (needs the permission upgrades.approve_upgrade)"
        )
        rollback.add_argument(
            "--wait",
            type=float,
            metavar="SECONDS",
            help="wait at most this long for the worker's outcome and report it; exits non-zero if the rollback "
            "failed or is not done in time (it stays queued then)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "list":
            upgrades = Upgrade.objects.order_by("-id")
            if options["status"]:
                upgrades = upgrades.filter(status=options["status"])
            for upgrade in upgrades[:100]:
                tests = "✓" if upgrade.tests_passed else "✗"
                rollback = " (rollback queued)" if upgrade.rollback_queued else ""
                self.stdout.write(
                    f"{upgrade.pk:>5} {upgrade.status:<11} {upgrade.risk:<6} tests {tests} {upgrade.branch}  "
                    f"{upgrade.description[:60]}{rollback}"
                )
            return
        wait = options["wait"]
        if wait is not None and not 0 <= wait <= 86400:
            raise CommandError(f"--wait takes 0 to 86400 seconds, not {wait:g}.")
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user {options['user']!r}.")
        try:
            upgrade = services.upgrade_rollback_request(upgrade_id=options["upgrade_id"], actor=user)
        except services.UpgradeError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Rollback of upgrade {upgrade.pk} queued: a worker reverts it in a moment.")
        if not workers_alive_count():
            self.stderr.write("No worker is running: the rollback waits until one starts (`manage.py run_worker`).")
        if wait is not None:
            self._wait_for(upgrade.pk, wait)

    def _wait_for(self, upgrade_id: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            upgrade = Upgrade.objects.filter(pk=upgrade_id).first()
            if upgrade is None:
                raise CommandError(f"Upgrade {upgrade_id} no longer exists.")
            if upgrade.status == Upgrade.Status.ROLLED_BACK:
                self.stdout.write(f"Rolled back upgrade {upgrade_id} with commit {upgrade.revert_commit}.")
                return
            if not upgrade.rollback_queued:
                raise CommandError(f"Upgrade {upgrade_id} was not rolled back: {upgrade.rollback_error}")
            if time.monotonic() >= deadline:
                doing = f"worker {upgrade.claimed_by} is reverting it" if upgrade.claimed_by else "it is still queued"
                raise CommandError(f"Upgrade {upgrade_id} is not rolled back after {seconds:g} s: {doing}.")
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
