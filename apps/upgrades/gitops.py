"""The git side of upgrades: validate whole-file edits, commit them on a branch in a separate worktree, test,
merge into the target branch with a merge commit, and revert that merge.

Plain functions over paths and refs: no models, no settings. The live working tree is only ever written by
`merge_into_target` and `revert_merge`, and only when the target branch is checked out there and the tree is
clean. Identities go in per call through GIT_AUTHOR_*/GIT_COMMITTER_*; the user's git config is never written.
"""

import ast
import contextlib
import difflib
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import git

SYMLINK_MODE = 0o120000
GITLINK_MODE = 0o160000
# Modes as `git diff --raw` writes them; "000000" is the side where the file does not exist.
REGULAR_FILE_MODE = "100644"
EXECUTABLE_MODE = "100755"
RAW_SYMLINK_MODE = "120000"
RAW_GITLINK_MODE = "160000"
NO_FILE_MODE = "000000"
# Refusals of one branch listed in one message, so the proposer can fix them all at once; the rest are counted.
REFUSALS_SHOWN = 10
KILL_WAIT_SECONDS = 5

RiskLevel = Literal["low", "medium", "high"]


class GitOpsError(Exception):
    pass


class EditRejected(GitOpsError, ValueError):
    pass


class NothingToCommit(GitOpsError):
    pass


class TreeNotClean(GitOpsError):
    pass


class MergeConflict(GitOpsError):
    def __init__(self, message: str, files: Sequence[str]) -> None:
        self.files = list(files)
        super().__init__(f"{message}; conflicting files: {', '.join(self.files) or '(none reported)'}")


class BranchMoved(GitOpsError):
    pass


@dataclass(frozen=True)
class FileEdit:
    path: str
    content: str | None  # None deletes the file


@dataclass(frozen=True)
class DiffSummary:
    files_changed: list[str]
    deleted: list[str]
    # Files whose mode changes, and new files that are not plain files (executable, symlink, submodule).
    mode_changes: list[str]
    added_lines: int
    removed_lines: int
    diff: str
    preview: str


@dataclass(frozen=True)
class TestRun:
    __test__ = False  # not a pytest test class

    passed: bool
    passed_count: int | None
    failed_count: int | None
    duration_seconds: float
    output_tail: str
    timed_out: bool
    # Set by apps.upgrades.sandbox: "bubblewrap" for a sandboxed run, "none" for a run without one.
    sandbox: str = "none"
    limited_by: str = ""  # how memory and processes were limited (cgroup, rlimits)
    limits_not_enforced: tuple[str, ...] = ()
    limits_hit: tuple[str, ...] = ()
    output_cut: bool = False
    # Why the tests were not run at all (no sandbox could be made); "" when they ran.
    not_run: str = ""


@dataclass(frozen=True)
class MergeResult:
    merge_sha: str
    previous_sha: str


@dataclass(frozen=True)
class MergedTree:
    path: Path
    target_sha: str  # pass to merge_into_target(expected_target_sha=...) so what was tested is what lands


# Edits


def validate_edits(
    repo_root: Path,
    edits: Sequence[FileEdit],
    *,
    allowed_paths: Sequence[str],
    base: str,
    max_diff_lines: int,
    max_file_bytes: int | None = None,
) -> None:
    """Raise EditRejected for the first edit that may not be applied on top of `base`.

    Paths are checked against the base commit's tree, which is what the proposal worktree will contain.
    """
    if not edits:
        raise EditRejected("no edits: an upgrade must change at least one file")
    with git.Repo(repo_root) as repo:
        tree = repo.commit(_sha(repo, base)).tree
        root = Path(_working_dir(repo)).resolve()
        seen: set[str] = set()
        changed_lines = 0
        for edit in edits:
            path = edit.path
            if path in seen:
                raise EditRejected(f"{path}: edited more than once")
            seen.add(path)
            _check_path_syntax(path)
            if _is_gitmodules(path):
                raise EditRejected(f"{path}: {GITMODULES_REFUSED}")
            if allowed_paths and not any(_is_under(path, prefix) for prefix in allowed_paths):
                raise EditRejected(f"{path}: outside the allowed paths ({', '.join(allowed_paths)})")
            existing = _base_blob(tree, path, base)
            if not (root / path).resolve().is_relative_to(root):
                raise EditRejected(f"{path}: resolves outside the repository")
            old = existing.data_stream.read().decode("utf-8", errors="replace") if existing is not None else ""
            if edit.content is None:
                if existing is None:
                    raise EditRejected(f"{path}: cannot delete, it does not exist in {base}")
                new = ""
            else:
                new = edit.content
                if "\x00" in new:
                    raise EditRejected(f"{path}: content contains NUL bytes (a binary file): {BINARY_REFUSED}")
                size = len(new.encode("utf-8", errors="surrogateescape"))
                if max_file_bytes is not None and size > max_file_bytes:
                    raise EditRejected(f"{path}: {_too_large(size, max_file_bytes)}")
                if path.endswith(".py"):
                    try:
                        ast.parse(new, filename=path)
                    except SyntaxError as exc:
                        raise EditRejected(f"{path}: line {exc.lineno}: {exc.msg}") from exc
            changed_lines += _changed_lines(old, new)
        if changed_lines > max_diff_lines:
            raise EditRejected(f"the edits change {changed_lines} lines, more than the limit of {max_diff_lines}")


def branch_edits(
    repo_root: Path, *, base: str, tip: str, executable_paths: Sequence[str], max_file_bytes: int
) -> list[FileEdit]:
    """The change from `base` to `tip` (a commit somebody else made) as the whole-file edits validate_edits checks.

    Made of git's tree entries, not of files: it refuses, naming each path, what a text edit could not express and
    what could reach outside the repository once checked out: symbolic links (saying where each points), submodules
    and `.gitmodules`, files that become executable outside `executable_paths`, binary files, and files over
    `max_file_bytes`. Raises EditRejected listing every refused entry."""
    refusals: list[str] = []
    edits: list[FileEdit] = []
    with git.Repo(repo_root) as repo:
        base, tip = _sha(repo, base), _sha(repo, tip)
        binary = _binary_paths(repo, base, tip)
        for change in _tree_changes(repo, base, tip):
            problem = _refusal(repo, change, executable_paths=executable_paths)
            if problem is None and change.new_mode != NO_FILE_MODE:
                size = repo.odb.info(bytes.fromhex(change.new_sha)).size
                if size > max_file_bytes:
                    problem = _too_large(size, max_file_bytes)
                else:
                    data = repo.odb.stream(bytes.fromhex(change.new_sha)).read()
                    if change.path in binary or b"\0" in data:
                        problem = f"is a binary file: {BINARY_REFUSED}"
                    else:
                        edits.append(FileEdit(change.path, data.decode("utf-8", errors="replace")))
            elif problem is None:
                edits.append(FileEdit(change.path, None))
            if problem is not None:
                refusals.append(f"{change.path}: {problem}")
    if refusals:
        more = len(refusals) - REFUSALS_SHOWN
        shown = "; ".join(refusals[:REFUSALS_SHOWN]) + (f"; and {more} more" if more > 0 else "")
        raise EditRejected(shown)
    return edits


@dataclass(frozen=True)
class TreeChange:
    """One entry of `git diff --raw`; a mode is NO_FILE_MODE on the side where the entry does not exist."""

    path: str
    old_mode: str
    new_mode: str
    old_sha: str
    new_sha: str


def _tree_changes(repo: git.Repo, base: str, tip: str) -> list[TreeChange]:
    # Renames come as a deletion and an addition, so each side is checked on its own.
    raw = repo.git.diff("--no-color", "--no-ext-diff", "--no-renames", "--raw", "-z", "--abbrev=40", base, tip)
    fields = raw.split("\0")
    changes = []
    for meta, path in zip(fields[0::2], fields[1::2], strict=False):
        if meta.startswith(":"):
            old_mode, new_mode, old_sha, new_sha = meta[1:].split(" ")[:4]
            changes.append(TreeChange(path, old_mode, new_mode, old_sha, new_sha))
    return changes


GITMODULES_REFUSED = "submodules and .gitmodules are refused: they bring in code from outside the repository"
BINARY_REFUSED = "proposals may only change text files"


def _refusal(repo: git.Repo, change: TreeChange, *, executable_paths: Sequence[str]) -> str | None:
    """Why the entry may not be proposed, as a phrase after its path; None if its modes are fine."""
    old, new = change.old_mode, change.new_mode
    if _is_gitmodules(change.path):
        return GITMODULES_REFUSED
    if new == RAW_GITLINK_MODE:
        what = "changes a submodule" if old == RAW_GITLINK_MODE else "is a submodule"
        return f"{what} (commit {change.new_sha[:12]}): {GITMODULES_REFUSED}"
    if old == RAW_GITLINK_MODE:
        return f"removes a submodule: {GITMODULES_REFUSED}"
    if new == RAW_SYMLINK_MODE:
        link = repo.odb.stream(bytes.fromhex(change.new_sha)).read().decode("utf-8", errors="replace")
        where = " (outside the repository)" if _escapes(change.path, link) else ""
        return f"is a symbolic link to {link[:200]!r}{where}: symbolic links are refused"
    if new == EXECUTABLE_MODE and old != EXECUTABLE_MODE:
        if any(_is_under(change.path, prefix) for prefix in executable_paths if prefix.strip("/")):
            return None
        how = "is a new executable file (mode 100755)" if old == NO_FILE_MODE else f"becomes executable ({old} → {new})"
        allowed = ", ".join(executable_paths) or "none"
        return f"{how} outside the paths where executables are allowed (SELF_MODIFY_EXECUTABLE_PATHS: {allowed})"
    if new not in (NO_FILE_MODE, REGULAR_FILE_MODE, EXECUTABLE_MODE):
        return f"has the mode {new}, which is not a plain file"
    return None


def _binary_paths(repo: git.Repo, base: str, tip: str) -> set[str]:
    # numstat writes "-\t-" for what git takes for binary (its own heuristic, or the owner's .gitattributes).
    numstat = repo.git.diff(
        "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", "--numstat", "-z", base, tip
    )
    binary = set()
    for record in numstat.split("\0"):
        plus, _, rest = record.partition("\t")
        minus, _, path = rest.partition("\t")
        if plus == "-" and minus == "-" and path:
            binary.add(path)
    return binary


def _escapes(path: str, link: str) -> bool:
    """Whether a symbolic link at `path` with this target points outside the repository."""
    if link.startswith("/") or "\0" in link:
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), link))
    return resolved == ".." or resolved.startswith("../")


def _too_large(size: int, limit: int) -> str:
    return f"is {size:,} bytes, over the limit of {limit:,} bytes (SELF_MODIFY_MAX_FILE_BYTES)"


def _is_gitmodules(path: str) -> bool:
    # Git reads only the top-level one, but a nested one does nothing useful and may become top-level by a move.
    return PurePosixPath(path).name.lower() == ".gitmodules"


def write_edits(worktree: Path, edits: Sequence[FileEdit]) -> None:
    root = worktree.resolve()
    for edit in edits:
        _check_path_syntax(edit.path)
        target = root / edit.path
        # validate_edits checked the base tree; this guards a worktree that differs from it.
        if target.is_symlink():
            raise EditRejected(f"{edit.path}: is a symbolic link in the worktree {root}; edits are written as files")
        if not target.parent.resolve().is_relative_to(root):
            raise EditRejected(f"{edit.path}: resolves outside the worktree {root}")
        if edit.content is None:
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(edit.content.encode("utf-8"))


def commit_all(worktree: Path, *, message: str, author_name: str, author_email: str) -> str:
    with git.Repo(worktree) as repo:
        repo.git.add("--all")
        if not repo.git.diff("--cached", "--name-only"):
            raise NothingToCommit(f"nothing to commit in {worktree}: the edits leave every file as it was")
        # No hooks: they are the owner's interactive tooling; the proposal is gated by run_tests and a human.
        repo.git.commit("--no-verify", "--no-gpg-sign", "-m", message, env=_identity(author_name, author_email))
        return _sha(repo, "HEAD")


# Worktrees


def create_worktree(repo_path: Path, *, branch: str, base: str, worktrees_dir: Path) -> Path:
    with git.Repo(repo_path) as repo:
        _check_branch_name(repo, branch)
        if _resolve(repo, f"refs/heads/{branch}") is not None:
            raise GitOpsError(f"branch {branch} already exists")
        base_sha = _sha(repo, base)
        worktrees_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = worktrees_dir.resolve() / _safe_name(branch)
        if path.exists():
            raise GitOpsError(f"{path} already exists")
        repo.git.worktree("add", "-b", branch, str(path), base_sha)
    return path


def merged_worktree(
    repo_path: Path, *, target_branch: str, branch: str, worktrees_dir: Path, author_name: str, author_email: str
) -> MergedTree:
    """A detached worktree at the target's current head with `branch` merged in but not committed, to re-run the
    tests on what a merge would produce. Raises MergeConflict (and leaves nothing behind) if it would conflict.
    Remove it with remove_worktree."""
    with git.Repo(repo_path) as repo:
        target_sha = _branch_sha(repo, target_branch)
        branch_sha = _branch_sha(repo, branch)
        worktrees_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = worktrees_dir.resolve() / f"{_safe_name(branch)}-on-{target_sha[:12]}"
        if path.exists():
            raise GitOpsError(f"{path} already exists")
        repo.git.worktree("add", "--detach", str(path), target_sha)
        try:
            with git.Repo(path) as merged:
                try:
                    # Git wants an identity even for a merge it does not commit.
                    merged.git.merge("--no-ff", "--no-commit", branch_sha, env=_identity(author_name, author_email))
                except git.GitCommandError as exc:
                    conflicts = _unmerged_paths(merged)
                    if conflicts:
                        raise MergeConflict(f"{branch} does not merge cleanly into {target_branch}", conflicts) from exc
                    raise GitOpsError(f"merging {branch} into {target_branch} failed: {_stderr(exc)}") from exc
        except GitOpsError:
            _remove_registered_worktree(repo, path)
            raise
    return MergedTree(path=path, target_sha=target_sha)


def discard_branch(repo_path: Path, branch: str) -> None:
    """Delete `branch` and the worktree it is checked out in, if they exist (a draft left behind by a worker that
    died). Refuses the live tree's branch."""
    with git.Repo(repo_path) as repo:
        if _resolve(repo, f"refs/heads/{branch}") is None:
            return
        if _live_branch(repo) == branch:
            raise GitOpsError(f"refusing to delete {branch}: it is checked out in the live working tree")
        elsewhere = _worktree_of_branch(repo, branch)
        if elsewhere is not None:
            _remove_registered_worktree(repo, Path(elsewhere))
        repo.git.branch("-D", branch)


def remove_worktree(repo_path: Path, worktree: Path, *, branch: str | None = None) -> None:
    """Force-remove the worktree and delete `branch`; either may already be gone."""
    with git.Repo(repo_path) as repo:
        if worktree.resolve() == Path(_working_dir(repo)).resolve():
            raise GitOpsError(f"refusing to remove the live working tree {worktree}")
        _remove_registered_worktree(repo, worktree)
        if branch is not None and _resolve(repo, f"refs/heads/{branch}") is not None:
            repo.git.branch("-D", branch)


def git_pointer(worktree: Path) -> bytes:
    """The worktree's `.git` file (`gitdir: …`), read before untrusted code runs there, for restore_worktree."""
    return (worktree / ".git").read_bytes()


def restore_worktree(worktree: Path, pointer: bytes) -> None:
    """Put a worktree back as its HEAD after untrusted code ran in it (a proposal's tests): its `.git` file first,
    from `pointer`, since the code may have put a git directory of its own there whose config has git run commands;
    then tracked files are reset and everything else is removed, so nothing it left is committed or run later."""
    root = worktree.resolve()
    # Directories it made unreadable or unwritable would stop the clean-up; links are never followed.
    root.chmod(root.stat().st_mode & 0o7777 | 0o700)
    for folder, dirs, _ in os.walk(root):
        for name in dirs:
            path = Path(folder) / name
            if not path.is_symlink():
                path.chmod(path.lstat().st_mode & 0o7777 | 0o700)
    dot_git = root / ".git"
    if dot_git.is_dir() and not dot_git.is_symlink():
        shutil.rmtree(dot_git)
    elif dot_git.is_symlink() or dot_git.exists():
        dot_git.unlink()
    dot_git.write_bytes(pointer)
    try:
        with git.Repo(root) as repo:
            repo.git.reset("--hard", "--quiet", "HEAD")
            repo.git.clean("-ffdxq")  # -ff: nested repositories too
    except git.GitCommandError as exc:
        raise GitOpsError(f"could not restore {root} after its test run: {_stderr(exc)}") from exc


# Refs


def current_branch(repo_path: Path) -> str | None:
    with git.Repo(repo_path) as repo:
        return _live_branch(repo)


def head_sha(repo_path: Path, ref: str) -> str:
    with git.Repo(repo_path) as repo:
        return _sha(repo, ref)


def merge_base(repo_path: Path, one: str, other: str) -> str | None:
    """The best common ancestor of two commits, or None when they share no history."""
    with git.Repo(repo_path) as repo:
        try:
            return str(repo.git.merge_base(_sha(repo, one), _sha(repo, other)))
        except git.GitCommandError as exc:
            if exc.status == 1:
                return None
            raise


def target_moved(repo_path: Path, target_branch: str, base_sha: str) -> bool:
    with git.Repo(repo_path) as repo:
        return _branch_sha(repo, target_branch) != _sha(repo, base_sha)


# Review


def diff_summary(repo_path: Path, base: str, head: str, *, preview_lines: int = 200) -> DiffSummary:
    """What `head` changes since it forked from `base` (git diff base...head)."""
    with git.Repo(repo_path) as repo:
        span = f"{_sha(repo, base)}...{_sha(repo, head)}"
        options = ["--no-color", "--no-ext-diff", "--no-renames"]
        numstat = repo.git.diff(*options, "--numstat", "-z", span)
        deleted = [p for p in repo.git.diff(*options, "--name-only", "-z", "--diff-filter=D", span).split("\0") if p]
        raw = repo.git.diff(*options, "--raw", "-z", span)
        text = repo.git.diff(*options, "--src-prefix=a/", "--dst-prefix=b/", span)
    files: list[str] = []
    added = removed = 0
    for record in numstat.split("\0"):
        if not record:
            continue
        plus, minus, path = record.split("\t", 2)
        files.append(path)
        if plus != "-":  # "-" for binary files
            added += int(plus)
            removed += int(minus)
    lines = text.splitlines()
    preview = text
    if len(lines) > preview_lines:
        preview = "\n".join([*lines[:preview_lines], f"… {len(lines) - preview_lines} more lines"])
    return DiffSummary(
        files_changed=files,
        deleted=deleted,
        mode_changes=_mode_changes(raw),
        added_lines=added,
        removed_lines=removed,
        diff=text,
        preview=preview,
    )


def _mode_changes(raw: str) -> list[str]:
    # `git diff --raw -z`: ":<old mode> <new mode> <old sha> <new sha> <status>\0<path>\0" per file (no renames).
    fields = raw.split("\0")
    changed: list[str] = []
    for meta, path in zip(fields[0::2], fields[1::2], strict=False):
        if not meta.startswith(":"):
            continue
        old_mode, new_mode = meta[1:].split(" ", 2)[:2]
        if NO_FILE_MODE not in (old_mode, new_mode) and old_mode != new_mode:
            changed.append(path)  # e.g. made executable, or a file replaced by a symlink
        elif old_mode == NO_FILE_MODE and new_mode != REGULAR_FILE_MODE:
            changed.append(path)  # created executable, as a symlink or as a submodule
    return changed


HIGH_RISK_PREFIXES = ("apps/ledger/", "apps/upgrades/", "timmy_site/")
DOC_SUFFIXES = (".md", ".rst", ".txt")


def risk_level(files_changed: Sequence[str], deleted: Sequence[str], *, mode_changes: Sequence[str]) -> RiskLevel:
    """High for deletions, migrations, settings, payments, the upgrades app and test code; low only for a change to
    documentation with no mode change; medium otherwise."""
    if deleted:
        return "high"
    for path in files_changed:
        parts = PurePosixPath(path).parts
        dirs, name = parts[:-1], parts[-1]
        if "migrations" in dirs or "settings" in dirs or name == "settings.py" or path.startswith(HIGH_RISK_PREFIXES):
            return "high"
        # The proposal's own test run is sandboxed, but whoever runs the suite later (the owner, CI) runs every
        # conftest.py and test module with their full environment: a change there is code that will execute.
        if _runs_with_the_tests(path):
            return "high"
    if not mode_changes and all(_is_doc(path) for path in files_changed):
        return "low"
    return "medium"


# Tests


SUMMARY_WORDS = "passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?|rerun"
SUMMARY_LINE = re.compile(rf"(?:no tests ran|\d+ (?:{SUMMARY_WORDS})(?:, \d+ (?:{SUMMARY_WORDS}))*)(?: in .*)?")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def run_tests(
    worktree: Path,
    command: str,
    *,
    timeout_seconds: float,
    tail_chars: int = 4000,
    env: Mapping[str, str] | None = None,
) -> TestRun:
    """Run `command` (split like a shell would, but no shell) in `worktree`; on timeout kill its process group.

    The worktree has no virtualenv of its own: name the interpreter by absolute path. `env` replaces the
    environment (default: this process's)."""
    argv = shlex.split(command)
    if not argv:
        raise GitOpsError("the test command is empty")
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            argv,
            cwd=worktree,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
        )
    except OSError as exc:
        raise GitOpsError(f"cannot run the test command {argv[0]!r}: {exc}") from exc
    timed_out = False
    try:
        output, _ = process.communicate(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
        output = _kill_and_drain(process)
    except BaseException:
        _kill_and_drain(process)
        raise
    duration = time.monotonic() - started
    text = output.decode("utf-8", errors="replace")
    passed_count, failed_count = pytest_counts(text)
    return TestRun(
        passed=process.returncode == 0 and not timed_out,
        passed_count=passed_count,
        failed_count=failed_count,
        duration_seconds=duration,
        output_tail=text[-tail_chars:] if tail_chars > 0 else "",
        timed_out=timed_out,
    )


def pytest_counts(output: str) -> tuple[int | None, int | None]:
    """(passed, failed + errors) from pytest's last summary line, or (None, None) when there is none."""
    for raw in reversed(output.splitlines()):
        line = ANSI_ESCAPE.sub("", raw).strip().strip("=").strip()
        if SUMMARY_LINE.fullmatch(line):
            counts = {word: int(n) for n, word in re.findall(rf"(\d+) ({SUMMARY_WORDS})", line)}
            failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
            return counts.get("passed", 0), failed
    return None, None


# Merge and revert


def merge_into_target(
    repo_path: Path,
    *,
    target_branch: str,
    branch: str,
    message: str,
    author_name: str,
    author_email: str,
    expected_target_sha: str | None = None,
) -> MergeResult:
    """A --no-ff merge commit of `branch` into `target_branch`; after a conflict the target is as it was.

    With `expected_target_sha`, refuse (BranchMoved) if the target is no longer there, e.g. it moved after the
    merged result was tested."""
    env = _identity(author_name, author_email)
    with git.Repo(repo_path) as repo:
        _require_clean(repo)
        previous = _branch_sha(repo, target_branch)
        if expected_target_sha is not None and previous != _sha(repo, expected_target_sha):
            raise BranchMoved(f"{target_branch} is at {previous[:12]}, not {expected_target_sha[:12]}")
        branch_sha = _branch_sha(repo, branch)
        if _is_ancestor(repo, branch_sha, previous):
            raise GitOpsError(f"{branch} is already merged into {target_branch}")

        def merge(tree: git.Repo) -> None:
            try:
                tree.git.merge("--no-ff", "--no-verify", "--no-gpg-sign", "-m", message, branch_sha, env=env)
            except git.GitCommandError as exc:
                conflicts = _unmerged_paths(tree)
                _restore(tree, previous)
                if conflicts:
                    raise MergeConflict(f"{branch} does not merge cleanly into {target_branch}", conflicts) from exc
                raise GitOpsError(f"merging {branch} into {target_branch} failed: {_stderr(exc)}") from exc

        merge_sha = _commit_on_branch(repo, target_branch, previous, merge)
    return MergeResult(merge_sha=merge_sha, previous_sha=previous)


def merge_of(repo_path: Path, *, target_branch: str, commit: str) -> MergeResult | None:
    """How `commit` reached `target_branch`, or None if the target does not contain it: the commit on the target's
    first-parent line that brought it in and the head that one replaced. For a commit that came in without a merge
    (a fast-forward), that is the commit itself and its first parent."""
    with git.Repo(repo_path) as repo:
        target_sha = _branch_sha(repo, target_branch)
        sha = _sha(repo, commit)
        if not _is_ancestor(repo, sha, target_sha):
            return None
        # The oldest commit of the target's own line that descends from `commit`: its first parent does not.
        line = repo.git.rev_list("--first-parent", "--ancestry-path", "--parents", "--reverse", f"{sha}..{target_sha}")
        first = line.split("\n", 1)[0].split()
        if not first or first[1] == sha:
            parents = repo.commit(sha).parents
            return MergeResult(merge_sha=sha, previous_sha=parents[0].hexsha if parents else "")
        return MergeResult(merge_sha=first[0], previous_sha=first[1])


def revert_merge(
    repo_path: Path, *, target_branch: str, merge_sha: str, message: str, author_name: str, author_email: str
) -> str:
    """A commit on `target_branch` that undoes the merge `merge_sha` (git revert -m 1); returns its sha."""
    env = _identity(author_name, author_email)
    with git.Repo(repo_path) as repo:
        _require_clean(repo)
        previous = _branch_sha(repo, target_branch)
        merge_commit = repo.commit(_sha(repo, merge_sha))
        if len(merge_commit.parents) != 2:
            raise GitOpsError(f"{merge_sha} is not a merge commit")
        if not _is_ancestor(repo, merge_commit.hexsha, previous):
            raise GitOpsError(f"{merge_sha} is not on {target_branch}")

        def revert(tree: git.Repo) -> None:
            try:
                tree.git.revert("-m", "1", "--no-commit", merge_commit.hexsha)
            except git.GitCommandError as exc:
                conflicts = _unmerged_paths(tree)
                _restore(tree, previous)
                if conflicts:
                    raise MergeConflict(f"reverting {merge_sha[:12]} conflicts with later changes", conflicts) from exc
                raise GitOpsError(f"reverting {merge_sha[:12]} failed: {_stderr(exc)}") from exc
            if not tree.git.diff("--cached", "--name-only"):
                _restore(tree, previous)
                raise NothingToCommit(f"reverting {merge_sha[:12]} changes nothing: it is already undone")
            tree.git.commit("--no-verify", "--no-gpg-sign", "-m", message, env=env)

        return _commit_on_branch(repo, target_branch, previous, revert)


def revert_of(repo_path: Path, *, target_branch: str, merge_sha: str) -> str | None:
    """The commit on `target_branch` that reverts `merge_sha` and is not itself reverted later, or None.

    Found by git's own revert line, "This reverts commit <full sha>", which `git revert` writes and an upgrade's
    rollback message ends with: so a revert made by hand counts too."""
    try:
        opened = git.Repo(repo_path)
    except (git.NoSuchPathError, git.InvalidGitRepositoryError) as exc:
        raise GitOpsError(f"{repo_path} is not a git repository") from exc
    with opened as repo:
        target = _branch_sha(repo, target_branch)
        sha = _sha(repo, merge_sha)
        for revert in _reverts(repo, sha, target):
            if not _reverts(repo, revert, target):
                return revert
    return None


def _reverts(repo: git.Repo, sha: str, head: str) -> list[str]:
    """Commits after `sha` up to `head` whose message says they revert it, oldest first."""
    found = repo.git.rev_list("--reverse", "--fixed-strings", f"--grep=This reverts commit {sha}", f"{sha}..{head}")
    return found.split()


# Helpers


def _commit_on_branch(repo: git.Repo, branch: str, previous: str, operation: Callable[[git.Repo], None]) -> str:
    """Run `operation` (which commits, or restores the tree and raises) on `branch` and return the new head.

    If the branch is checked out in the live tree, it runs there. Otherwise it runs in a temporary detached
    worktree at `previous`, and the branch ref moves only afterwards, by compare-and-swap from `previous`."""
    if _live_branch(repo) == branch:
        operation(repo)
        return _sha(repo, "HEAD")
    elsewhere = _worktree_of_branch(repo, branch)
    if elsewhere is not None:
        raise GitOpsError(f"{branch} is checked out in another worktree ({elsewhere}); it cannot be updated from here")
    scratch = Path(tempfile.mkdtemp(prefix="upgrade-merge-"))
    try:
        repo.git.worktree("add", "--detach", str(scratch), previous)
        with git.Repo(scratch) as tree:
            operation(tree)
            new_head = _sha(tree, "HEAD")
        try:
            repo.git.update_ref("-m", "upgrades", f"refs/heads/{branch}", new_head, previous)
        except git.GitCommandError as exc:
            raise BranchMoved(f"{branch} moved while it was being updated; it was left as it is") from exc
        return new_head
    finally:
        _remove_registered_worktree(repo, scratch)
        shutil.rmtree(scratch, ignore_errors=True)


def _restore(tree: git.Repo, head: str) -> None:
    # The tree was clean before the operation, so resetting to `head` discards only what the operation did.
    git_dir = Path(tree.git_dir)
    if (git_dir / "MERGE_HEAD").exists():
        tree.git.merge("--abort")
    tree.git.reset("--hard", head)
    if (git_dir / "sequencer").exists() or (git_dir / "REVERT_HEAD").exists():
        tree.git.revert("--quit")


def _require_clean(repo: git.Repo) -> None:
    root = _working_dir(repo)
    if repo.is_dirty(untracked_files=True):
        entries = [line[3:] for line in repo.git.status("--porcelain").splitlines()]
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise TreeNotClean(f"the working tree {root} has uncommitted changes or untracked files: {shown}")
    git_dir = Path(repo.git_dir)
    for marker, operation in [
        ("MERGE_HEAD", "merge"),
        ("REVERT_HEAD", "revert"),
        ("CHERRY_PICK_HEAD", "cherry-pick"),
        ("rebase-merge", "rebase"),
        ("rebase-apply", "rebase"),
    ]:
        if (git_dir / marker).exists():
            raise TreeNotClean(f"a {operation} is in progress in {root}")


def _remove_registered_worktree(repo: git.Repo, path: Path) -> None:
    repo.git.worktree("prune")
    wanted = path.resolve()
    if any(Path(registered).resolve() == wanted for registered, _ in _worktrees(repo)):
        repo.git.worktree("remove", "--force", "--force", str(wanted))
    repo.git.worktree("prune")


def _worktrees(repo: git.Repo) -> list[tuple[str, str | None]]:
    """(path, branch name or None) of every worktree, the main one first."""
    found: list[tuple[str, str | None]] = []
    for block in repo.git.worktree("list", "--porcelain", "-z").split("\0\0"):
        fields = dict(line.split(" ", 1) for line in block.split("\0") if " " in line)
        if "worktree" in fields:
            ref = fields.get("branch")
            found.append((fields["worktree"], ref.removeprefix("refs/heads/") if ref else None))
    return found


def _worktree_of_branch(repo: git.Repo, branch: str) -> str | None:
    return next((path for path, checked_out in _worktrees(repo) if checked_out == branch), None)


def _live_branch(repo: git.Repo) -> str | None:
    try:
        return str(repo.git.symbolic_ref("--quiet", "--short", "HEAD"))
    except git.GitCommandError:  # detached HEAD
        return None


def _resolve(repo: git.Repo, ref: str) -> str | None:
    if not ref or ref.startswith("-"):
        return None
    try:
        return str(repo.git.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}"))
    except git.GitCommandError:
        return None


def _sha(repo: git.Repo, ref: str) -> str:
    sha = _resolve(repo, ref)
    if sha is None:
        raise GitOpsError(f"{ref!r} does not name a commit")
    return sha


def _branch_sha(repo: git.Repo, branch: str) -> str:
    sha = _resolve(repo, f"refs/heads/{branch}")
    if sha is None:
        raise GitOpsError(f"there is no branch {branch!r}")
    return sha


def _is_ancestor(repo: git.Repo, ancestor: str, descendant: str) -> bool:
    try:
        repo.git.merge_base("--is-ancestor", ancestor, descendant)
    except git.GitCommandError as exc:
        if exc.status == 1:
            return False
        raise
    return True


def _unmerged_paths(repo: git.Repo) -> list[str]:
    return [p for p in repo.git.diff("--name-only", "--diff-filter=U", "-z").split("\0") if p]


def _check_branch_name(repo: git.Repo, branch: str) -> None:
    try:
        if branch.startswith("-"):
            raise ValueError(branch)
        repo.git.check_ref_format("--branch", branch)
    except (ValueError, git.GitCommandError) as exc:
        raise GitOpsError(f"{branch!r} is not a valid branch name") from exc


def _working_dir(repo: git.Repo) -> str:
    if repo.working_tree_dir is None:
        raise GitOpsError(f"{repo.git_dir} is a bare repository")
    return str(repo.working_tree_dir)


def _identity(name: str, email: str) -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def _stderr(exc: git.GitCommandError) -> str:
    # GitPython keeps stderr as "\n  stderr: '<text>'".
    text = str(exc.stderr).strip().removeprefix("stderr: '").removesuffix("'").strip()
    return text or str(exc)


def _safe_name(branch: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", branch).strip(".-") or "worktree"


def _check_path_syntax(path: str) -> None:
    if not path:
        raise EditRejected("an edit has an empty path")
    if path.startswith("/"):
        raise EditRejected(f"{path}: absolute paths are not allowed")
    if "\\" in path or "\x00" in path:
        raise EditRejected(f"{path}: backslashes and NUL are not allowed in paths")
    parts = path.split("/")
    if ".." in parts:
        raise EditRejected(f"{path}: '..' would leave the repository")
    if any(part in ("", ".") for part in parts):
        raise EditRejected(f"{path}: not a normalised relative path")
    # Case- and trailing-dot-insensitive, as case-insensitive and Windows file systems see it.
    if any(part.lower().rstrip(". ") == ".git" for part in parts):
        raise EditRejected(f"{path}: inside .git")


def _is_under(path: str, prefix: str) -> bool:
    prefix = prefix.strip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


def _base_blob(tree: git.Tree, path: str, base: str) -> git.Blob | None:
    """The file at `path` in the base tree, or None if it does not exist; refuse symlinks and submodules on
    the way, and paths that need a file to be a directory or the other way round."""
    parts = path.split("/")
    node = tree
    for depth, name in enumerate(parts, start=1):
        here = "/".join(parts[:depth])
        try:
            entry = node.join(name)
        except KeyError:
            return None
        if entry.mode == SYMLINK_MODE:
            raise EditRejected(f"{path}: {here} is a symbolic link in {base}")
        if entry.mode == GITLINK_MODE:
            raise EditRejected(f"{path}: {here} is a submodule in {base}")
        last = depth == len(parts)
        if isinstance(entry, git.Tree):
            if last:
                raise EditRejected(f"{path}: is a directory in {base}")
            node = entry
        elif not last:
            raise EditRejected(f"{path}: {here} is a file in {base}, not a directory")
        elif isinstance(entry, git.Blob):
            return entry
    return None


def _changed_lines(old: str, new: str) -> int:
    a, b = old.splitlines(), new.splitlines()
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return sum((i2 - i1) + (j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")


# Files that decide what the test runner loads (plugins, addopts, the test command itself), wherever they are.
TEST_RUNNER_FILES = frozenset({"pyproject.toml", "pytest.ini", "setup.cfg", "tox.ini", "Makefile", "manage.py"})


def _runs_with_the_tests(path: str) -> bool:
    parts = PurePosixPath(path).parts
    name = parts[-1]
    if name == "conftest.py" or name in TEST_RUNNER_FILES or "tests" in parts[:-1]:
        return True
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def _is_doc(path: str) -> bool:
    parts = PurePosixPath(path).parts
    if "requirements" in parts[:-1] or parts[-1].startswith("requirements"):
        return False  # dependency pins are .txt but not documentation
    return "docs" in parts[:-1] or path.endswith(DOC_SUFFIXES)


def _kill_and_drain(process: subprocess.Popen[bytes]) -> bytes:
    """Kill the process group and return what it wrote; the leader is not reaped yet, so its pid is the group's."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    try:
        output, _ = process.communicate(timeout=KILL_WAIT_SECONDS)
    except subprocess.TimeoutExpired as exc:
        # Something outside the group still holds the pipe open: stop reading.
        output = exc.output or b""
        if process.stdout is not None:
            process.stdout.close()
        process.wait()
    return output or b""
