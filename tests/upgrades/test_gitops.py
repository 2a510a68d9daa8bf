import os
import re
import shlex
import sys
import time
from pathlib import Path

import git
import pytest

from apps.upgrades.gitops import (
    BranchMoved,
    EditRejected,
    FileEdit,
    GitOpsError,
    MergeConflict,
    MergeResult,
    NothingToCommit,
    TreeNotClean,
    commit_all,
    create_worktree,
    current_branch,
    diff_summary,
    discard_branch,
    head_sha,
    merge_into_target,
    merge_of,
    merged_worktree,
    pytest_counts,
    remove_worktree,
    revert_merge,
    revert_of,
    risk_level,
    run_tests,
    target_moved,
    validate_edits,
    write_edits,
)

WHO = {"author_name": "Timmy", "author_email": "timmy@example.invalid"}
IDENTITY = {
    "GIT_AUTHOR_NAME": "Owner",
    "GIT_AUTHOR_EMAIL": "owner@example.invalid",
    "GIT_COMMITTER_NAME": "Owner",
    "GIT_COMMITTER_EMAIL": "owner@example.invalid",
}
CALC = "def add(a, b):\n    return a + b\n"
TEST_CALC = "from pkg.calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
# The child pytest must not load this project's plugins (pytest-django would look for timmy_site).
CHILD_ENV = {"PATH": os.environ.get("PATH", ""), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": "1"}
PYTEST = f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider"

pytestmark = pytest.mark.usefixtures("isolated_git_config")


def make_repo(root: Path) -> Path:
    """A repository on `main` with a tiny package, its pytest suite, a README, and `vendor`, a symlink to a
    directory outside the repository."""
    (root / "outside").mkdir()
    path = root / "live"
    files = {
        "pkg/__init__.py": "",
        "pkg/calc.py": CALC,
        "tests/test_calc.py": TEST_CALC,
        "pytest.ini": "[pytest]\npythonpath = .\n",
        "README.md": "# tiny\n",
    }
    for name, content in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
    (path / "vendor").symlink_to("../outside")
    with git.Repo.init(path, initial_branch="main") as repo:
        repo.git.add("--all")
        repo.git.commit("-m", "initial", env=IDENTITY)
    return path


def commit_on(repo_path: Path, branch: str, files: dict[str, str]) -> str:
    """Commit `files` on `branch` as the owner would, in a scratch worktree unless it is checked out live."""
    scratch = repo_path.parent / "owner-scratch"
    checked_out = current_branch(repo_path) == branch
    with git.Repo(repo_path) as repo:
        if not checked_out:
            repo.git.worktree("add", str(scratch), branch)
        tree = repo_path if checked_out else scratch
        for name, content in files.items():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_text(content)
        with git.Repo(tree) as owner:
            owner.git.add("--all")
            owner.git.commit("-m", "owner change", env=IDENTITY)
        if not checked_out:
            repo.git.worktree("remove", str(scratch))
    return head_sha(repo_path, branch)


def propose(repo_path: Path, tmp_path: Path, edits: list[FileEdit], branch: str = "upgrade/1") -> Path:
    validate_edits(repo_path, edits, allowed_paths=[], base="main", max_diff_lines=100)
    worktree = create_worktree(repo_path, branch=branch, base="main", worktrees_dir=tmp_path / "data" / "worktrees")
    write_edits(worktree, edits)
    commit_all(worktree, message="upgrade", **WHO)
    return worktree


def live_state(repo_path: Path) -> tuple[str, str | None, dict[str, str], bool]:
    with git.Repo(repo_path) as repo:
        dirty = repo.is_dirty(untracked_files=True)
    files = {
        str(p.relative_to(repo_path)): p.read_text()
        for p in sorted(repo_path.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(repo_path).parts
    }
    return head_sha(repo_path, "HEAD"), current_branch(repo_path), files, dirty


def branches(repo_path: Path) -> dict[str, str]:
    with git.Repo(repo_path) as repo:
        return {head.name: head.commit.hexsha for head in repo.heads}


def worktree_paths(repo_path: Path) -> list[str]:
    with git.Repo(repo_path) as repo:
        lines = repo.git.worktree("list", "--porcelain").splitlines()
    return [line.removeprefix("worktree ") for line in lines if line.startswith("worktree ")]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path)


# Proposing


def test_valid_edits_land_on_a_new_branch_in_a_separate_worktree_and_leave_the_live_tree_untouched(
    repo: Path, tmp_path: Path
) -> None:
    before = live_state(repo)
    edits = [
        FileEdit("pkg/calc.py", CALC + "\n\ndef sub(a, b):\n    return a - b\n"),
        FileEdit("pkg/new/mod.py", "VALUE = 1\n"),
        FileEdit("README.md", None),
    ]
    validate_edits(repo, edits, allowed_paths=["pkg/", "README.md"], base="main", max_diff_lines=20)
    worktree = create_worktree(repo, branch="upgrade/7-add-sub", base="main", worktrees_dir=tmp_path / "wt")
    write_edits(worktree, edits)
    sha = commit_all(worktree, message="Add sub", **WHO)

    assert worktree == (tmp_path / "wt" / "upgrade-7-add-sub").resolve()
    assert branches(repo)["upgrade/7-add-sub"] == sha
    assert "def sub" in (worktree / "pkg/calc.py").read_text()
    assert not (worktree / "README.md").exists()
    with git.Repo(repo) as r:
        commit = r.commit(sha)
        assert (commit.author.name, commit.committer.email) == ("Timmy", "timmy@example.invalid")
    assert live_state(repo) == before

    summary = diff_summary(repo, "main", sha, preview_lines=3)
    assert summary.files_changed == ["README.md", "pkg/calc.py", "pkg/new/mod.py"]
    assert summary.deleted == ["README.md"]
    assert (summary.added_lines, summary.removed_lines) == (5, 1)
    assert "+def sub(a, b):" in summary.diff
    assert summary.preview.splitlines()[:3] == summary.diff.splitlines()[:3]
    assert summary.preview.endswith("more lines")
    assert summary.mode_changes == []
    assert risk_level(summary.files_changed, summary.deleted, mode_changes=summary.mode_changes) == "high"


def test_the_summary_reports_mode_changes_and_they_are_never_low_risk(repo: Path, tmp_path: Path) -> None:
    worktree = create_worktree(repo, branch="modes", base="main", worktrees_dir=tmp_path / "wt")
    (worktree / "README.md").chmod(0o755)  # made executable, content unchanged
    (worktree / "docs").mkdir()
    (worktree / "docs/run.md").write_text("#!/bin/sh\n")
    (worktree / "docs/run.md").chmod(0o755)  # a new executable file
    (worktree / "docs/guide.md").write_text("# guide\n")  # a new plain file
    (worktree / "docs/link.md").symlink_to("guide.md")  # a new symlink
    sha = commit_all(worktree, message="modes", **WHO)

    summary = diff_summary(repo, "main", sha)
    assert summary.files_changed == ["README.md", "docs/guide.md", "docs/link.md", "docs/run.md"]
    assert summary.mode_changes == ["README.md", "docs/link.md", "docs/run.md"]
    assert risk_level(summary.files_changed, summary.deleted, mode_changes=summary.mode_changes) == "medium"
    assert risk_level(summary.files_changed, summary.deleted, mode_changes=[]) == "low"


@pytest.mark.parametrize(
    ("path", "allowed", "reason"),
    [
        ("../x.py", [], "'..' would leave"),
        ("pkg/../../x.py", [], "'..' would leave"),
        ("/etc/passwd", [], "absolute"),
        (".git/config", [], "inside .git"),
        (".GIT/hooks/post-checkout", [], "inside .git"),
        ("pkg/.git/config", [], "inside .git"),
        ("vendor/evil.py", [], "vendor is a symbolic link"),
        ("vendor", [], "vendor is a symbolic link"),
        ("pkg//calc.py", [], "not a normalised"),
        ("pkg/calc.py/x.py", [], "pkg/calc.py is a file"),
        ("pkg", [], "is a directory"),
        ("README.md", ["pkg/", "tests"], "outside the allowed paths"),
        ("pkgs/x.py", ["pkg"], "outside the allowed paths"),
    ],
)
def test_validate_refuses_paths_that_escape_or_are_not_allowed(
    repo: Path, path: str, allowed: list[str], reason: str
) -> None:
    with pytest.raises(EditRejected, match=f"^{re.escape(path)}: .*{re.escape(reason)}") as excinfo:
        validate_edits(repo, [FileEdit(path, "x = 1\n")], allowed_paths=allowed, base="main", max_diff_lines=100)
    assert isinstance(excinfo.value, ValueError)


@pytest.mark.parametrize(
    ("edits", "reason"),
    [
        ([], "no edits"),
        ([FileEdit("pkg/a.py", "a = 1\n"), FileEdit("pkg/a.py", "a = 2\n")], "pkg/a.py: edited more than once"),
        ([FileEdit("pkg/missing.py", None)], "pkg/missing.py: cannot delete, it does not exist"),
        ([FileEdit("notes.txt", "a\x00b")], "notes.txt: content contains NUL"),
    ],
    ids=["empty", "duplicate", "delete-missing", "nul"],
)
def test_validate_refuses_malformed_edit_lists(repo: Path, edits: list[FileEdit], reason: str) -> None:
    with pytest.raises(EditRejected, match=reason):
        validate_edits(repo, edits, allowed_paths=[], base="main", max_diff_lines=100)


def test_validate_refuses_python_that_does_not_parse_naming_the_line(repo: Path) -> None:
    broken = FileEdit("pkg/calc.py", "def add(a, b):\n    return a + b\n\ndef sub(a, b)\n    return a - b\n")
    with pytest.raises(EditRejected, match=r"^pkg/calc\.py: line 4: expected ':'"):
        validate_edits(repo, [broken], allowed_paths=[], base="main", max_diff_lines=100)


def test_validate_refuses_a_diff_larger_than_the_limit(repo: Path) -> None:
    # One line replaced (1 removed + 1 added) and three added: 5 changed lines, counted across files.
    edits = [
        FileEdit("pkg/calc.py", "def add(a, b):\n    return b + a\n\n\nX = 1\n"),
        FileEdit("README.md", "# tiny\n"),
    ]
    validate_edits(repo, edits, allowed_paths=[], base="main", max_diff_lines=5)
    with pytest.raises(EditRejected, match="change 6 lines, more than the limit of 5"):
        validate_edits(repo, [*edits, FileEdit("docs/a.md", "a\n")], allowed_paths=[], base="main", max_diff_lines=5)


def test_commit_refuses_edits_that_change_nothing(repo: Path, tmp_path: Path) -> None:
    worktree = create_worktree(repo, branch="upgrade/noop", base="main", worktrees_dir=tmp_path / "wt")
    write_edits(worktree, [FileEdit("pkg/calc.py", CALC)])
    with pytest.raises(NothingToCommit, match="nothing to commit"):
        commit_all(worktree, message="noop", **WHO)


def test_create_worktree_refuses_an_existing_branch(repo: Path, tmp_path: Path) -> None:
    create_worktree(repo, branch="upgrade/1", base="main", worktrees_dir=tmp_path / "wt")
    with pytest.raises(GitOpsError, match="branch upgrade/1 already exists"):
        create_worktree(repo, branch="upgrade/1", base="main", worktrees_dir=tmp_path / "other")
    with pytest.raises(GitOpsError, match="not a valid branch name"):
        create_worktree(repo, branch="bad..name", base="main", worktrees_dir=tmp_path / "wt")


def test_discard_branch_removes_a_left_over_branch_and_its_worktree_but_never_the_live_one(
    repo: Path, tmp_path: Path
) -> None:
    worktree = create_worktree(repo, branch="self-modify/add-sub-7", base="main", worktrees_dir=tmp_path / "wt")
    discard_branch(repo, "self-modify/add-sub-7")
    assert not worktree.exists() and "self-modify/add-sub-7" not in branches(repo)
    assert worktree_paths(repo) == [str(repo)]
    discard_branch(repo, "self-modify/add-sub-7")  # nothing left: nothing to do
    with pytest.raises(GitOpsError, match="live working tree"):
        discard_branch(repo, "main")
    assert "main" in branches(repo)


def test_remove_worktree_deletes_worktree_and_branch_and_is_idempotent(repo: Path, tmp_path: Path) -> None:
    worktree = create_worktree(repo, branch="upgrade/1", base="main", worktrees_dir=tmp_path / "wt")
    remove_worktree(repo, worktree, branch="upgrade/1")
    assert not worktree.exists()
    assert "upgrade/1" not in branches(repo)
    assert worktree_paths(repo) == [str(repo)]
    remove_worktree(repo, worktree, branch="upgrade/1")
    with pytest.raises(GitOpsError, match="live working tree"):
        remove_worktree(repo, repo)


# Testing


def test_run_tests_reports_a_passing_run_with_counts(repo: Path) -> None:
    run = run_tests(repo, PYTEST, timeout_seconds=60, env=CHILD_ENV)
    assert (run.passed, run.passed_count, run.failed_count, run.timed_out) == (True, 1, 0, False), run.output_tail
    assert "1 passed" in run.output_tail


def test_run_tests_reports_failures_with_counts(repo: Path, tmp_path: Path) -> None:
    failing = "def test_one():\n    assert True\n\n\ndef test_two():\n    assert False\n"
    worktree = propose(repo, tmp_path, [FileEdit("tests/test_more.py", failing)])
    run = run_tests(worktree, PYTEST, timeout_seconds=60, tail_chars=200, env=CHILD_ENV)
    assert (run.passed, run.passed_count, run.failed_count, run.timed_out) == (False, 2, 1, False), run.output_tail
    assert len(run.output_tail) == 200


def test_run_tests_kills_the_whole_process_group_on_timeout(repo: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    sleeper = "import time; time.sleep(60)"
    spawn = (
        f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {sleeper!r}]); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); p.wait()"
    )
    started = time.monotonic()
    run = run_tests(repo, shlex.join([sys.executable, "-c", spawn]), timeout_seconds=1.5)
    assert time.monotonic() - started < 5
    assert (run.passed, run.timed_out, run.passed_count) == (False, True, None)
    assert "started" in run.output_tail
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 3
    while Path(f"/proc/{grandchild}").exists() and "State:\tZ" not in Path(f"/proc/{grandchild}/status").read_text():
        assert time.monotonic() < deadline, "the grandchild outlived the timeout"
        time.sleep(0.05)


def test_run_tests_times_out_a_plain_sleeper_within_the_timeout(repo: Path) -> None:
    run = run_tests(repo, shlex.join([sys.executable, "-c", "import time; time.sleep(60)"]), timeout_seconds=1)
    assert run.timed_out and not run.passed
    assert run.duration_seconds < 3


@pytest.mark.parametrize(
    ("output", "counts"),
    [
        ("..F\n3 passed, 1 failed in 0.12s\n", (3, 1)),
        ("FF\n2 failed\n", (0, 2)),
        ("===== 1 failed, 4 passed, 2 errors, 1 warning in 1.02s (0:00:01) =====", (4, 3)),
        ("\x1b[32m5 passed\x1b[0m\x1b[32m in 0.50s\x1b[0m", (5, 0)),
        ("no tests ran in 0.01s\n", (0, 0)),
        ("Traceback: something broke\n", (None, None)),
    ],
)
def test_pytest_counts_reads_the_summary_line(output: str, counts: tuple[int | None, int | None]) -> None:
    assert pytest_counts(output) == counts


# Merging


def test_merge_into_the_checked_out_target_makes_a_merge_commit_in_the_live_tree(repo: Path, tmp_path: Path) -> None:
    previous = head_sha(repo, "main")
    propose(repo, tmp_path, [FileEdit("pkg/calc.py", CALC + "X = 1\n")])
    result = merge_into_target(repo, target_branch="main", branch="upgrade/1", message="Merge upgrade 1", **WHO)

    assert result.previous_sha == previous
    assert head_sha(repo, "main") == result.merge_sha
    with git.Repo(repo) as r:
        merge = r.commit(result.merge_sha)
        assert [p.hexsha for p in merge.parents] == [previous, head_sha(repo, "upgrade/1")]
        assert merge.message.strip() == "Merge upgrade 1"
        assert not r.is_dirty(untracked_files=True)
    assert (repo / "pkg/calc.py").read_text() == CALC + "X = 1\n"


def test_merge_of_finds_the_merge_that_brought_a_commit_into_the_target(repo: Path, tmp_path: Path) -> None:
    propose(repo, tmp_path, [FileEdit("pkg/calc.py", CALC + "X = 1\n")])
    proposal = head_sha(repo, "upgrade/1")
    assert merge_of(repo, target_branch="main", commit=proposal) is None
    result = merge_into_target(repo, target_branch="main", branch="upgrade/1", message="Merge", **WHO)
    assert merge_of(repo, target_branch="main", commit=proposal) == result
    commit_on(repo, "main", {"README.md": "# later\n"})
    assert merge_of(repo, target_branch="main", commit=proposal) == result  # later commits do not change it
    # A commit that came in by a fast-forward, with no merge of its own: the commit itself.
    before = head_sha(repo, "main")
    with git.Repo(repo) as r:
        r.git.branch("ff", "main")
    fast_forwarded = commit_on(repo, "ff", {"README.md": "# fast-forwarded\n"})
    with git.Repo(repo) as r:
        r.git.merge("--ff-only", "ff")
    assert merge_of(repo, target_branch="main", commit=fast_forwarded) == MergeResult(fast_forwarded, before)


def test_merge_into_a_target_that_is_not_checked_out_moves_only_its_ref(repo: Path, tmp_path: Path) -> None:
    with git.Repo(repo) as r:
        r.git.branch("release", "main")
    propose(repo, tmp_path, [FileEdit("pkg/calc.py", CALC + "X = 1\n")])
    before = live_state(repo)
    result = merge_into_target(repo, target_branch="release", branch="upgrade/1", message="Merge", **WHO)

    assert head_sha(repo, "release") == result.merge_sha
    assert result.previous_sha == head_sha(repo, "main")
    assert live_state(repo) == before
    assert len(worktree_paths(repo)) == 2  # the live tree and the proposal's; the scratch one is gone
    with git.Repo(repo) as r:
        assert r.git.show(f"{result.merge_sha}:pkg/calc.py") == (CALC + "X = 1").rstrip("\n")


@pytest.mark.parametrize(
    ("mess", "seen"),
    [
        ({"pkg/calc.py": CALC + "# local edit\n"}, "pkg/calc.py"),
        ({"scratch.txt": "mine\n"}, "scratch.txt"),
    ],
    ids=["modified", "untracked"],
)
def test_merge_refuses_a_live_tree_that_is_not_clean(
    repo: Path, tmp_path: Path, mess: dict[str, str], seen: str
) -> None:
    propose(repo, tmp_path, [FileEdit("pkg/calc.py", CALC + "X = 1\n")])
    for name, content in mess.items():
        (repo / name).write_text(content)
    previous = branches(repo)
    with pytest.raises(TreeNotClean, match=seen):
        merge_into_target(repo, target_branch="main", branch="upgrade/1", message="Merge", **WHO)
    assert branches(repo) == previous


@pytest.mark.parametrize("target_checked_out", [True, False], ids=["checked-out", "not-checked-out"])
def test_merge_conflict_leaves_the_target_and_the_live_tree_as_before(
    repo: Path, tmp_path: Path, target_checked_out: bool
) -> None:
    if not target_checked_out:
        with git.Repo(repo) as r:
            r.git.checkout("-b", "work")
    propose(repo, tmp_path, [FileEdit("pkg/calc.py", "def add(a, b):\n    return a + b + 0\n")])
    commit_on(repo, "main", {"pkg/calc.py": "def add(a, b):\n    return b + a\n"})
    before_branches, before_live = branches(repo), live_state(repo)

    with pytest.raises(MergeConflict, match=r"conflicting files: pkg/calc\.py") as excinfo:
        merge_into_target(repo, target_branch="main", branch="upgrade/1", message="Merge", **WHO)

    assert excinfo.value.files == ["pkg/calc.py"]
    assert branches(repo) == before_branches
    assert live_state(repo) == before_live
    assert not (Path(git.Repo(repo).git_dir) / "MERGE_HEAD").exists()
    assert len(worktree_paths(repo)) == 2


def test_merge_refuses_when_the_target_moved_after_the_tested_sha(repo: Path, tmp_path: Path) -> None:
    tested = head_sha(repo, "main")
    propose(repo, tmp_path, [FileEdit("pkg/calc.py", CALC + "X = 1\n")])
    commit_on(repo, "main", {"docs/notes.md": "moved\n"})
    with pytest.raises(BranchMoved):
        merge_into_target(
            repo, target_branch="main", branch="upgrade/1", message="Merge", expected_target_sha=tested, **WHO
        )


def test_a_moved_target_is_detected_and_the_merged_result_can_be_tested(repo: Path, tmp_path: Path) -> None:
    base = head_sha(repo, "main")
    new_test = "from pkg.calc import add, sub\n\n\ndef test_sub():\n    assert sub(add(1, 1), 1) == 1\n"
    propose(repo, tmp_path, [FileEdit("pkg/calc.py", CALC + "\n\ndef sub(a, b):\n    return a - b\n")])
    assert not target_moved(repo, "main", base)
    moved_to = commit_on(repo, "main", {"tests/test_sub.py": new_test})
    assert target_moved(repo, "main", base)
    before = live_state(repo)

    merged = merged_worktree(repo, target_branch="main", branch="upgrade/1", worktrees_dir=tmp_path / "merged", **WHO)
    run = run_tests(merged.path, PYTEST, timeout_seconds=60, env=CHILD_ENV)

    assert merged.target_sha == moved_to
    assert (run.passed, run.passed_count) == (True, 2), run.output_tail
    assert live_state(repo) == before
    assert head_sha(repo, "main") == moved_to
    remove_worktree(repo, merged.path)
    result = merge_into_target(
        repo, target_branch="main", branch="upgrade/1", message="Merge", expected_target_sha=merged.target_sha, **WHO
    )
    assert result.previous_sha == moved_to


def test_merged_worktree_reports_a_conflict_and_leaves_nothing_behind(repo: Path, tmp_path: Path) -> None:
    propose(repo, tmp_path, [FileEdit("pkg/calc.py", "def add(a, b):\n    return a + b + 0\n")])
    commit_on(repo, "main", {"pkg/calc.py": "def add(a, b):\n    return b + a\n"})
    with pytest.raises(MergeConflict, match=r"pkg/calc\.py"):
        merged_worktree(repo, target_branch="main", branch="upgrade/1", worktrees_dir=tmp_path / "merged", **WHO)
    assert len(worktree_paths(repo)) == 2
    assert not any((tmp_path / "merged").iterdir())


@pytest.mark.parametrize("target_checked_out", [True, False], ids=["checked-out", "not-checked-out"])
def test_revert_merge_undoes_the_change_with_a_new_commit(repo: Path, tmp_path: Path, target_checked_out: bool) -> None:
    if not target_checked_out:
        with git.Repo(repo) as r:
            r.git.checkout("-b", "work")
    original = head_sha(repo, "main")
    propose(repo, tmp_path, [FileEdit("pkg/calc.py", CALC + "X = 1\n"), FileEdit("README.md", None)])
    merge = merge_into_target(repo, target_branch="main", branch="upgrade/1", message="Merge", **WHO)

    revert = revert_merge(repo, target_branch="main", merge_sha=merge.merge_sha, message="Revert upgrade 1", **WHO)

    assert head_sha(repo, "main") == revert
    with git.Repo(repo) as r:
        assert r.commit(revert).parents[0].hexsha == merge.merge_sha
        assert r.commit(revert).message.strip() == "Revert upgrade 1"
        assert r.git.diff(original, revert) == ""
        assert not r.is_dirty(untracked_files=True)
        assert not (Path(r.git_dir) / "REVERT_HEAD").exists()
    if target_checked_out:
        assert (repo / "pkg/calc.py").read_text() == CALC
        assert (repo / "README.md").exists()
    with pytest.raises(NothingToCommit, match="already undone"):
        revert_merge(repo, target_branch="main", merge_sha=merge.merge_sha, message="again", **WHO)
    assert head_sha(repo, "main") == revert


def test_revert_of_finds_a_revert_made_by_hand_unless_it_was_itself_reverted(repo: Path, tmp_path: Path) -> None:
    propose(repo, tmp_path, [FileEdit("pkg/calc.py", CALC + "X = 1\n")])
    merge = merge_into_target(repo, target_branch="main", branch="upgrade/1", message="Merge", **WHO)
    assert revert_of(repo, target_branch="main", merge_sha=merge.merge_sha) is None
    commit_on(repo, "main", {"README.md": "# tiny, later\n"})

    with git.Repo(repo) as r:
        r.git.revert("-m", "1", "--no-edit", merge.merge_sha, env=IDENTITY)
        by_hand = head_sha(repo, "main")
        assert revert_of(repo, target_branch="main", merge_sha=merge.merge_sha) == by_hand
        r.git.revert("--no-edit", by_hand, env=IDENTITY)  # the change is back
    assert revert_of(repo, target_branch="main", merge_sha=merge.merge_sha) is None
    with pytest.raises(GitOpsError, match="is not a git repository"):
        revert_of(tmp_path / "nowhere", target_branch="main", merge_sha=merge.merge_sha)


def test_revert_refuses_a_commit_that_is_not_a_merge(repo: Path) -> None:
    with pytest.raises(GitOpsError, match="not a merge commit"):
        revert_merge(repo, target_branch="main", merge_sha=head_sha(repo, "main"), message="x", **WHO)


# Review


@pytest.mark.parametrize(
    ("files", "deleted", "modes", "level"),
    [
        (["docs/guide.md", "README.md", "notes.rst", "docs/api/index.txt"], [], [], "low"),
        (["apps/core/views.py", "docs/guide.md"], [], [], "medium"),
        (["requirements/base.txt"], [], [], "medium"),
        (["apps/core/migrations/0002_x.py"], [], [], "high"),
        (["timmy_site/urls.py"], [], [], "high"),
        (["other/settings.py"], [], [], "high"),
        (["apps/ledger/services.py"], [], [], "high"),
        (["apps/upgrades/gitops.py"], [], [], "high"),
        (["docs/guide.md"], ["docs/old.md"], [], "high"),
        # Code that runs whenever the suite runs, with the runner's environment.
        (["conftest.py"], [], [], "high"),
        (["docs/guide.md", "apps/core/conftest.py"], [], [], "high"),
        (["tests/anything.py"], [], [], "high"),
        (["tests/fixtures/data.json"], [], [], "high"),
        (["apps/core/tests/test_views.py"], [], [], "high"),
        (["apps/core/test_models.py", "docs/guide.md"], [], [], "high"),
        # What the runner loads and how it is started.
        (["pyproject.toml"], [], [], "high"),
        (["pytest.ini"], [], [], "high"),
        (["sub/setup.cfg"], [], [], "high"),
        (["Makefile"], [], [], "high"),
        # A mode change alone, or with documentation.
        (["scripts/deploy.sh"], [], ["scripts/deploy.sh"], "medium"),
        (["docs/guide.md"], [], ["docs/guide.md"], "medium"),
    ],
)
def test_risk_level(files: list[str], deleted: list[str], modes: list[str], level: str) -> None:
    assert risk_level(files, deleted, mode_changes=modes) == level


def test_revert_that_conflicts_with_later_changes_leaves_the_target_as_it_was(repo: Path, tmp_path: Path) -> None:
    propose(repo, tmp_path, [FileEdit("pkg/calc.py", "def add(a, b):\n    return a + b + 0\n")])
    merge = merge_into_target(repo, target_branch="main", branch="upgrade/1", message="Merge", **WHO)
    commit_on(repo, "main", {"pkg/calc.py": "def add(a, b):\n    return a + b + 1\n"})
    before_branches, before_live = branches(repo), live_state(repo)

    with pytest.raises(MergeConflict, match=r"pkg/calc\.py"):
        revert_merge(repo, target_branch="main", merge_sha=merge.merge_sha, message="Revert", **WHO)

    assert (branches(repo), live_state(repo)) == (before_branches, before_live)
    with git.Repo(repo) as r:
        assert not [p for p in ("REVERT_HEAD", "MERGE_HEAD", "sequencer") if (Path(r.git_dir) / p).exists()]
