from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.upgrades import loop, services
from apps.upgrades.models import Upgrade


class Command(BaseCommand):
    help = (
        "Propose a change to SELF_MODIFY_REPO (default: this checkout) for a person to approve. With an instruction, "
        "a model writes the change on a new branch in its own worktree, which is tested there (and fixed, up to "
        "SELF_MODIFY_MAX_ATTEMPTS tries); with --branch, an existing branch is proposed as it is. Prints the "
        "upgrade's id. Nothing reaches the target branch until it is approved and the worker applies it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("text", help="the instruction, or with --branch the description of the change")
        parser.add_argument("--branch", help="propose this existing branch instead of asking a model")
        parser.add_argument(
            "--queue", action="store_true", help="leave the drafting to the worker; print the request id"
        )

    def handle(self, *args: Any, text: str, branch: str | None, queue: bool, **options: Any) -> None:
        if not text.strip():
            raise CommandError("Say what the change should do.")
        try:
            if queue:
                if branch:
                    raise CommandError("--queue drafts with a model; a --branch is proposed at once.")
                request = services.upgrade_request_create(instruction=text, actor=None)
                self.stdout.write(f"Queued change request {request.pk}: the worker will draft it.")
                return
            if branch:
                upgrade = loop.propose_branch(branch=branch, description=text)
            else:
                self.stderr.write("Asking the model for the change; each attempt is tested in its own worktree …")
                upgrade = loop.draft(instruction=text)
        except services.UpgradeError as exc:
            raise CommandError(str(exc)) from exc
        self._report(upgrade)

    def _report(self, upgrade: Upgrade) -> None:
        results = upgrade.test_results
        timed_out = ", timed out" if results.get("timed_out") else ""
        tests = (
            f"tests passed ({results.get('passed_count')} passed)"
            if upgrade.tests_passed
            else f"tests FAILED ({results.get('failed_count')} failed{timed_out})"
        )
        self.stdout.write(
            f"Proposed upgrade {upgrade.pk} on {upgrade.branch}: {len(upgrade.files_changed)} file(s), "
            f"risk {upgrade.risk}, {tests}, {upgrade.attempts} attempt(s)."
        )
        self.stdout.write(str(upgrade.pk))
