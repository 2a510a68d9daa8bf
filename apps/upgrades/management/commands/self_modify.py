from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.upgrades import loop, services
from apps.upgrades.models import Upgrade


class Command(BaseCommand):
    help = (
        "Propose a change to SELF_MODIFY_REPO (default: this checkout) for a person to approve. With an instruction, "
        "a model writes the change on a new branch in its own worktree, which is tested there (and fixed, up to "
        "SELF_MODIFY_MAX_ATTEMPTS tries); with --branch, an existing branch is proposed as it is, unless it adds "
        "a symbolic link, a submodule, a binary or oversize file or an executable outside "
        "SELF_MODIFY_EXECUTABLE_PATHS (refused, saying which file and why). Prints the upgrade's id. Nothing "
        "reaches the target branch until it is approved and the worker applies it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("text", help="the instruction, or with --branch the description of the change")
        parser.add_argument("--branch", help="propose this existing branch instead of asking a model")
        parser.add_argument(
            "--queue",
            action="store_true",
            help="leave the drafting (or, with --branch, the test run, after the branch is checked) to the worker; "
            "print the request id",
        )

    def handle(self, *args: Any, text: str, branch: str | None, queue: bool, **options: Any) -> None:
        if not text.strip():
            raise CommandError("Say what the change should do.")
        try:
            if queue and branch:
                request = loop.queue_branch(branch=branch, description=text, actor=None)
                self.stdout.write(
                    f"Queued {branch} at {request.commit[:12]} as change request {request.pk}: the worker will test "
                    "and propose it."
                )
                return
            if queue:
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
        if results.get("not_run"):
            tests = f"tests NOT RUN ({results['not_run']})"
        elif upgrade.tests_passed:
            tests = f"tests passed ({results.get('passed_count')} passed)"
        else:
            tests = f"tests FAILED ({results.get('failed_count')} failed{timed_out})"
        if results.get("sandbox") == "none":
            self.stderr.write("Warning: the tests ran WITHOUT a sandbox (SELF_MODIFY_UNSANDBOXED_TESTS): high risk.")
        self.stdout.write(
            f"Proposed upgrade {upgrade.pk} on {upgrade.branch}: {len(upgrade.files_changed)} file(s), "
            f"risk {upgrade.risk}, {tests}, {upgrade.attempts} attempt(s)."
        )
        self.stdout.write(str(upgrade.pk))
