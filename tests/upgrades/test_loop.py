"""The self-modify loop end to end on a real git repository with its own test suite, and a local server that
speaks Ollama's protocol answering with file edits: propose, retry, refuse, approve, apply, conflict, roll back."""

from io import StringIO
from pathlib import Path

import git
import pytest
from django.core.management import CommandError, call_command

from apps.events.models import Event
from apps.upgrades import loop, services, worker
from apps.upgrades.gitops import current_branch, head_sha
from apps.upgrades.models import Upgrade, UpgradeRequest
from tests.upgrades.test_gitops import CALC, IDENTITY, commit_on

SUB = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
BROKEN = "def add(a, b):\n    return a - b\n"
TEST_SUB = (
    "from pkg.calc import add, sub\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
    "def test_sub():\n    assert sub(5, 3) == 2\n"
)

pytestmark = pytest.mark.usefixtures("isolated_git_config")


def reply(*files: tuple[str, str], summary: str = "Add sub") -> str:
    blocks = "".join(f"=== FILE: {path} ===\n{content}=== END FILE ===\n" for path, content in files)
    return f"{blocks}=== SUMMARY: {summary} ===\n"


GOOD = reply(("pkg/calc.py", SUB), ("tests/test_calc.py", TEST_SUB))


def live(repo: Path) -> tuple[str, str | None, str, bool]:
    with git.Repo(repo) as r:
        return r.head.commit.hexsha, current_branch(repo), (repo / "pkg/calc.py").read_text(), r.is_dirty()


def test_a_change_is_proposed_tested_on_its_own_branch_and_the_live_tree_is_untouched(repo, model):
    before = live(repo)
    server = model(GOOD)
    upgrade = loop.draft(instruction="Add a sub function to pkg/calc.py", request_id=7)
    assert live(repo) == before
    assert upgrade.status == Upgrade.Status.PROPOSED and upgrade.tests_passed
    assert upgrade.test_results["passed_count"] == 2 and upgrade.attempts == 1
    assert upgrade.branch == "self-modify/add-a-sub-function-to-pkgcalcpy-7"
    assert sorted(upgrade.files_changed) == ["pkg/calc.py", "tests/test_calc.py"]
    assert "+def sub(a, b):" in upgrade.diff and upgrade.base_commit == before[0]
    assert (upgrade.description, upgrade.risk) == ("Add sub", "high")  # tests/ runs when anyone runs the suite
    assert Path(upgrade.worktree_path).is_relative_to(Path(repo).parent / "data" / "worktrees")
    # The model was shown the file the instruction names (the repository context follows the system prompt).
    assert CALC in server.chats[0]["messages"][0]["content"]
    assert Event.objects.filter(event_type="upgrade.proposed").count() == 1


def test_failing_tests_go_back_to_the_model_and_the_fixed_change_is_proposed(repo, model):
    server = model(reply(("pkg/calc.py", BROKEN)), GOOD)
    upgrade = loop.draft(instruction="Add sub")
    assert (upgrade.attempts, upgrade.tests_passed) == (2, True)
    second = server.chats[1]["messages"]
    assert "The tests fail with your change" in second[-1]["content"] and "assert" in second[-1]["content"]


def test_after_the_last_attempt_a_change_whose_tests_fail_is_still_proposed_as_failing(repo, model, reviewer):
    model(reply(("pkg/calc.py", BROKEN)))
    upgrade = loop.draft(instruction="Break add")
    assert (upgrade.attempts, upgrade.tests_passed) == (3, False)
    assert upgrade.test_results["failed_count"] == 1 and "tests fail" in upgrade.error_message
    with pytest.raises(services.UpgradeTestsFailed):
        services.upgrade_approve(upgrade_id=upgrade.pk, actor=reviewer)


@pytest.mark.parametrize(
    "bad",
    [
        reply(("../escape.py", "x = 1\n")),
        reply(("/etc/passwd", "root\n")),
        reply((".git/config", "[core]\n")),
        reply(("vendor/inside.py", "x = 1\n")),  # vendor is a symlink to a directory outside the repository
        reply(("pkg/calc.py", "def add(a, b)\n    return a + b\n")),  # not Python
        "Sure! Here is the change you asked for.",
    ],
    ids=["parent", "absolute", "git-dir", "symlink", "syntax", "no-format"],
)
def test_refused_edits_are_explained_to_the_model_and_never_written(repo, model, bad):
    server = model(bad, GOOD)
    upgrade = loop.draft(instruction="Add sub")
    assert (upgrade.attempts, upgrade.tests_passed) == (2, True)
    assert "That change was refused" in server.chats[1]["messages"][-1]["content"]
    assert not (repo.parent / "escape.py").exists() and not (repo.parent / "outside" / "inside.py").exists()


def test_no_usable_change_in_any_attempt_records_nothing(repo, model):
    model("I cannot do that.")
    with pytest.raises(loop.DraftFailed, match="3 attempt"):
        loop.draft(instruction="Add sub")
    assert not Upgrade.objects.exists()
    assert [b.name for b in git.Repo(repo).branches] == ["main"]


def test_an_oversize_change_is_refused(repo, model, settings):
    settings.UPGRADE_MAX_DIFF_LINES = 3
    model(GOOD)
    with pytest.raises(loop.DraftFailed, match="lines"):
        loop.draft(instruction="Add sub")


def test_approved_then_applied_by_the_worker_after_testing_the_moved_target(repo, model, reviewer):
    model(GOOD)
    upgrade = loop.draft(instruction="Add sub")
    services.upgrade_approve(upgrade_id=upgrade.pk, actor=reviewer)
    moved = commit_on(repo, "main", {"README.md": "# tiny, moved\n"})
    assert worker.apply_approved_upgrades(None) == 1  # type: ignore[arg-type]
    applied = Upgrade.objects.get(pk=upgrade.pk)
    assert applied.status == Upgrade.Status.APPLIED, applied.error_message
    assert (applied.replaced_commit, head_sha(repo, "main")) == (moved, applied.applied_commit)
    with git.Repo(repo) as r:
        merge = r.commit(applied.applied_commit)
        assert len(merge.parents) == 2 and merge.message.startswith(f"Merge upgrade {upgrade.pk}")
    assert "def sub" in (repo / "pkg/calc.py").read_text()
    assert not Path(applied.worktree_path).exists()


def test_a_conflict_with_the_moved_target_fails_the_upgrade_and_leaves_the_target(repo, model, reviewer):
    model(GOOD)
    upgrade = loop.draft(instruction="Add sub")
    services.upgrade_approve(upgrade_id=upgrade.pk, actor=reviewer)
    moved = commit_on(repo, "main", {"pkg/calc.py": "def add(a, b):\n    return b + a\n"})
    worker.apply_approved_upgrades(None)  # type: ignore[arg-type]
    failed = Upgrade.objects.get(pk=upgrade.pk)
    assert failed.status == Upgrade.Status.FAILED and "conflict" in failed.error_message.lower()
    assert head_sha(repo, "main") == moved and not git.Repo(repo).is_dirty(untracked_files=True)


def test_a_live_tree_with_uncommitted_work_is_never_merged_into(repo, model, reviewer):
    model(GOOD)
    upgrade = loop.draft(instruction="Add sub")
    services.upgrade_approve(upgrade_id=upgrade.pk, actor=reviewer)
    (repo / "notes.txt").write_text("work in progress\n")
    before = head_sha(repo, "main")
    worker.apply_approved_upgrades(None)  # type: ignore[arg-type]
    failed = Upgrade.objects.get(pk=upgrade.pk)
    assert failed.status == Upgrade.Status.FAILED and "Not applied" in failed.error_message
    assert head_sha(repo, "main") == before and (repo / "notes.txt").exists()


def test_rollback_is_queued_and_the_worker_adds_a_revert_commit(repo, model, reviewer):
    model(GOOD)
    upgrade = loop.draft(instruction="Add sub")
    services.upgrade_approve(upgrade_id=upgrade.pk, actor=reviewer)
    worker.apply_approved_upgrades(None)  # type: ignore[arg-type]
    applied = head_sha(repo, "main")
    out = StringIO()
    call_command("upgrades", "rollback", str(upgrade.pk), "--user", "reviewer", stdout=out, stderr=StringIO())
    assert f"Rollback of upgrade {upgrade.pk} queued" in out.getvalue() and head_sha(repo, "main") == applied
    assert worker.run_rollbacks(None) == 1  # type: ignore[arg-type]
    rolled = Upgrade.objects.get(pk=upgrade.pk)
    assert rolled.status == Upgrade.Status.ROLLED_BACK
    assert (repo / "pkg/calc.py").read_text() == CALC and head_sha(repo, "main") == rolled.revert_commit
    with pytest.raises(CommandError, match="already rolled back"):
        call_command("upgrades", "rollback", str(upgrade.pk), "--user", "reviewer")


def test_rejecting_removes_the_branch_and_the_worktree(repo, model, reviewer):
    model(GOOD)
    upgrade = loop.draft(instruction="Add sub")
    services.upgrade_reject_and_clean(upgrade_id=upgrade.pk, actor=reviewer, reason="Not now")
    assert [b.name for b in git.Repo(repo).branches] == ["main"]
    assert not Path(upgrade.worktree_path).exists()


def test_an_existing_branch_is_proposed_through_the_same_gate(repo, db):
    with git.Repo(repo) as r:
        r.git.branch("feature")
    commit_on(repo, "feature", {"pkg/calc.py": SUB, "tests/test_calc.py": TEST_SUB})
    out = StringIO()
    call_command("self_modify", "--branch", "feature", "Add sub by hand", stdout=out)
    upgrade = Upgrade.objects.get()
    assert out.getvalue().strip().splitlines()[-1] == str(upgrade.pk)
    assert (upgrade.description, upgrade.instruction, upgrade.tests_passed) == ("Add sub by hand", "", True)
    assert upgrade.branch.startswith("self-modify/branch-feature-") and "feature" in [
        b.name for b in git.Repo(repo).branches
    ]
    with git.Repo(repo) as r:
        r.git.branch("escape", "main")
    commit_on(repo, "escape", {".github/x.py": "x = (\n"})
    with pytest.raises(CommandError, match="cannot be proposed"):
        call_command("self_modify", "--branch", "escape", "Broken")
    with pytest.raises(CommandError, match="No branch"):
        call_command("self_modify", "--branch", "nope", "Missing")


def test_the_worker_drafts_a_queued_request(repo, model):
    model(GOOD)
    out = StringIO()
    call_command("self_modify", "--queue", "Add sub", stdout=out)
    request = UpgradeRequest.objects.get()
    assert f"Queued change request {request.pk}" in out.getvalue()
    assert worker.run_upgrade_requests(None) == 1  # type: ignore[arg-type]
    request.refresh_from_db()
    assert request.status == UpgradeRequest.Status.DONE and request.upgrade.tests_passed
    assert worker.run_upgrade_requests(None) == 0  # type: ignore[arg-type]


def test_a_branch_that_only_makes_a_doc_executable_is_not_low_risk(repo, db, settings):
    settings.SELF_MODIFY_EXECUTABLE_PATHS = ["README.md"]  # elsewhere a new executable is refused (test_escapes)
    with git.Repo(repo) as r:
        r.git.branch("docs-only", "main")
        r.git.branch("docs-exec", "main")
    commit_on(repo, "docs-only", {"README.md": "# tiny, documented\n"})
    scratch = repo.parent / "exec-scratch"
    with git.Repo(repo) as r:
        r.git.worktree("add", str(scratch), "docs-exec")
    (scratch / "README.md").chmod(0o755)
    with git.Repo(scratch) as tree:
        tree.git.commit("-am", "make the readme executable", env=IDENTITY)
    call_command("self_modify", "--branch", "docs-only", "Document", stdout=StringIO())
    call_command("self_modify", "--branch", "docs-exec", "Make the readme executable", stdout=StringIO())
    documented, executable = Upgrade.objects.order_by("id")
    assert (documented.risk, executable.risk) == ("low", "medium")
    assert executable.files_changed == ["README.md"] and "new mode 100755" in executable.diff
