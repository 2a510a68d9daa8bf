"""The self-modify loop: ask the router for a change as whole files, validate it, write it on a new branch in a
worktree of its own under the data dir (the live tree is never touched), commit, test, and on failure give the
model the reason and try again, up to SELF_MODIFY_MAX_ATTEMPTS. The result is a proposed upgrade, with or without
passing tests; nothing is merged until a person approves it (apps.upgrades.services).

`propose_branch` puts an existing branch (made by a person or another tool) through the same gate.
"""

import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import git
from django.conf import settings
from django.utils.text import slugify

from apps.providers import router
from apps.upgrades import gitops, selectors, services
from apps.upgrades.models import Upgrade

SYSTEM_PROMPT = """You change a code base by writing whole files. Reply in exactly this format and nothing else:

=== FILE: path/relative/to/the/repository ===
the complete new content of the file
=== END FILE ===

(one block per file you change or create; to delete a file write the single line `=== DELETE: path ===`), then
one last line:

=== SUMMARY: one line that says what the change does ===

Keep the change as small as the instruction allows, and keep the tests passing."""
FILE_BLOCK = re.compile(r"^=== FILE: (?P<path>[^\n]+?) ===\n(?P<content>.*?)^=== END FILE ===[ \t]*$", re.M | re.S)
DELETE_LINE = re.compile(r"^=== DELETE: (?P<path>[^\n]+?) ===[ \t]*$", re.M)
SUMMARY_LINE = re.compile(r"^=== SUMMARY: (?P<summary>[^\n]+?) ===[ \t]*$", re.M)
# What the model is shown of the repository: its file list, and the files the instruction names.
LISTED_FILES_MAX = 400
SHOWN_CHARS_MAX = 30_000


class DraftFailed(services.UpgradeError):
    """No usable change came out of the loop (the message says why)."""


@dataclass(frozen=True)
class Target:
    repo: Path
    branch: str


def target() -> Target:
    repo = Path(settings.SELF_MODIFY_REPO)
    try:
        branch = settings.SELF_MODIFY_TARGET_BRANCH or gitops.current_branch(repo)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise DraftFailed(f"SELF_MODIFY_REPO {repo} is not a git repository.") from exc
    if not branch:
        raise DraftFailed(f"{repo} has no current branch (detached HEAD): set SELF_MODIFY_TARGET_BRANCH.")
    return Target(repo, branch)


def parse_edits(reply: str) -> tuple[list[gitops.FileEdit], str]:
    """The edits and the summary in a model's reply; DraftFailed saying what is wrong with the format."""
    edits = [gitops.FileEdit(m["path"].strip(), m["content"]) for m in FILE_BLOCK.finditer(reply)]
    edits += [gitops.FileEdit(m["path"].strip(), None) for m in DELETE_LINE.finditer(reply)]
    if not edits:
        raise DraftFailed("The reply has no `=== FILE: path ===` … `=== END FILE ===` block and no DELETE line.")
    summary = SUMMARY_LINE.search(reply)
    return edits, summary["summary"].strip() if summary else ""


def _context(repo: Path, base: str, instruction: str) -> str:
    files = git.Repo(repo).git.ls_tree("-r", "--name-only", base).splitlines()
    shown: list[str] = []
    used = 0
    for path in files:
        if path in instruction and used < SHOWN_CHARS_MAX:
            content = git.Repo(repo).git.show(f"{base}:{path}")[: SHOWN_CHARS_MAX - used]
            shown.append(f"=== {path} ===\n{content}\n")
            used += len(content)
    listing = "\n".join(files[:LISTED_FILES_MAX]) + ("\n…" if len(files) > LISTED_FILES_MAX else "")
    return f"Files in the repository:\n{listing}\n\n" + ("Current content:\n" + "".join(shown) if shown else "")


def _ask(messages: list[dict[str, str]]) -> str:
    try:
        return router.complete(messages, system_prompt=SYSTEM_PROMPT).content
    except router.RouterError as exc:
        raise DraftFailed(f"No model answered: {exc}") from exc


def draft(*, instruction: str, request_id: int | None = None) -> Upgrade:
    """Run the loop for `instruction` and propose the result. Raises DraftFailed when the model gave nothing
    usable in SELF_MODIFY_MAX_ATTEMPTS tries (no upgrade is recorded then).

    For a change request drafted again after its worker died: the upgrade that worker proposed, if it got that far;
    otherwise its branch and worktree are discarded and the draft starts over."""
    where = target()
    suffix = str(request_id) if request_id is not None else uuid.uuid4().hex[:8]
    branch = f"self-modify/{slugify(instruction)[:40].strip('-') or 'change'}-{suffix}"
    if request_id is not None:
        earlier = selectors.upgrade_on_branch(repo_path=str(where.repo), branch=branch)
        if earlier is not None:
            return earlier
        gitops.discard_branch(where.repo, branch)
    base = gitops.head_sha(where.repo, where.branch)
    messages = [
        {
            "role": "user",
            "content": f"{_context(where.repo, base, instruction)}\nInstruction: {instruction}",
        }
    ]
    worktree: Path | None = None
    run: gitops.TestRun | None = None
    summary = ""
    problem = ""
    attempts = 0
    for attempts in range(1, settings.SELF_MODIFY_MAX_ATTEMPTS + 1):
        reply = _ask(messages)
        messages.append({"role": "assistant", "content": reply})
        head = gitops.head_sha(where.repo, branch) if worktree else base
        try:
            edits, summary = parse_edits(reply)
            gitops.validate_edits(
                where.repo,
                edits,
                allowed_paths=settings.SELF_MODIFY_ALLOWED_PATHS,
                base=head,
                max_diff_lines=settings.UPGRADE_MAX_DIFF_LINES,
            )
            if worktree is None:
                worktree = gitops.create_worktree(
                    where.repo, branch=branch, base=base, worktrees_dir=services.worktrees_dir()
                )
            gitops.write_edits(worktree, edits)
            gitops.commit_all(
                worktree,
                message=f"{summary or instruction[:70]}\n\nSelf-modify attempt {attempts}: {instruction}",
                author_name=services.AUTHOR_NAME,
                author_email=services.AUTHOR_EMAIL,
            )
        except (DraftFailed, gitops.EditRejected, gitops.NothingToCommit) as exc:
            problem = str(exc)
            messages.append(
                {"role": "user", "content": f"That change was refused: {problem}\nReply again, whole files."}
            )
            continue
        run = services.run_proposal_tests(worktree)
        if run.passed:
            break
        problem = f"the tests failed:\n{run.output_tail}"
        messages.append(
            {
                "role": "user",
                "content": f"The tests fail with your change:\n{run.output_tail}\nFix it: whole files again.",
            }
        )
    if worktree is None or run is None:
        raise DraftFailed(f"After {attempts} attempt(s) the model gave no usable change: {problem}")
    return _propose(
        where,
        branch=branch,
        worktree=worktree,
        base=base,
        description=summary or instruction[:200],
        instruction=instruction,
        run=run,
        attempts=attempts,
        error="" if run.passed else _failure(run, problem),
    )


def _failure(run: gitops.TestRun, problem: str) -> str:
    text = (
        "The tests time out with the proposed change." if run.timed_out else "The tests fail with the proposed change."
    )
    if problem and not problem.startswith("the tests failed"):
        text += f" The last attempt was refused: {problem}"
    return text


def propose_branch(*, branch: str, description: str) -> Upgrade:
    """Propose an existing branch of the target repository as it is: the same validation and isolated test run.
    The branch is copied to `self-modify/branch-…` so the original stays untouched."""
    where = target()
    repo = git.Repo(where.repo)
    try:
        tip = gitops.head_sha(where.repo, branch)
    except gitops.GitOpsError as exc:
        raise DraftFailed(f"No branch {branch!r} in {where.repo}.") from exc
    bases = repo.merge_base(where.branch, tip)
    if not bases:
        raise DraftFailed(f"{branch} shares no history with {where.branch}.")
    base = bases[0].hexsha
    changed = gitops.diff_summary(where.repo, base, tip)
    if not changed.files_changed:
        raise DraftFailed(f"{branch} has no changes against {where.branch}.")
    edits = [
        gitops.FileEdit(path, None if path in changed.deleted else repo.git.show(f"{tip}:{path}") + "\n")
        for path in changed.files_changed
    ]
    try:
        gitops.validate_edits(
            where.repo,
            edits,
            allowed_paths=settings.SELF_MODIFY_ALLOWED_PATHS,
            base=base,
            max_diff_lines=settings.UPGRADE_MAX_DIFF_LINES,
        )
    except gitops.EditRejected as exc:
        raise DraftFailed(f"{branch} cannot be proposed: {exc}") from exc
    copy = f"self-modify/branch-{slugify(branch)[:40]}-{uuid.uuid4().hex[:6]}"
    worktree = gitops.create_worktree(where.repo, branch=copy, base=tip, worktrees_dir=services.worktrees_dir())
    run = services.run_proposal_tests(worktree)
    return _propose(
        where, branch=copy, worktree=worktree, base=base, description=description, instruction="", run=run, attempts=1
    )


def _propose(
    where: Target,
    *,
    branch: str,
    worktree: Path,
    base: str,
    description: str,
    instruction: str,
    run: gitops.TestRun,
    attempts: int,
    error: str = "",
) -> Upgrade:
    head = gitops.head_sha(where.repo, branch)
    summary = gitops.diff_summary(where.repo, base, head)
    return services.upgrade_propose(
        proposal=services.Proposal(
            description=description,
            instruction=instruction,
            repo_path=str(where.repo),
            target_branch=where.branch,
            branch=branch,
            worktree_path=str(worktree),
            base_commit=base,
            head_commit=head,
            files_changed=summary.files_changed,
            diff=summary.diff,
            diff_preview=summary.preview,
            risk=gitops.risk_level(summary.files_changed, summary.deleted, mode_changes=summary.mode_changes),
            test_results=services.test_results_of(run, settings.SELF_MODIFY_TEST_COMMAND),
            attempts=attempts,
            error_message=error[:4000],
        )
    )
