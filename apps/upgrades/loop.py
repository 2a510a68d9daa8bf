"""The self-modify loop: ask the router for a change as whole files, validate it, write it on a new branch in a
worktree of its own under the data dir (the live tree is never touched), commit, test, and on failure give the
model the reason and try again, up to SELF_MODIFY_MAX_ATTEMPTS. The result is a proposed upgrade, with or without
passing tests; nothing is merged until a person approves it (apps.upgrades.services).

`propose_branch` puts an existing branch (made by a person or another tool) through the same gate.

The model is shown the part of the repository that matters for the instruction, fitted to its context window by
the router (apps.providers.context): the files the instruction names, then files whose paths and contents share
its words (rarer words count more), then the repository's layout. A file too large to go in whole also comes as an
excerpt around the lines that share those words; every piece says which lines it shows.
"""

import math
import re
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import git
from django.conf import settings
from django.utils.text import slugify

from apps.providers import router
from apps.providers.context import Message, Prompt, estimate_tokens
from apps.upgrades import gitops, selectors, services
from apps.upgrades.models import Upgrade, UpgradeRequest

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

# The repository is the point of this prompt: it may take most of what the window leaves after the reply's reserve;
# the rest stays for the reply, which holds whole files (the files shown, changed).
CONTEXT_SHARE = 0.6
# The least room for a reply, which holds whole files (up to half the window on a small model).
REPLY_MIN_TOKENS = 1024
# A file too large to go in whole also comes as an excerpt this size, small enough for a 2k-token model.
NAMED_EXCERPT_TOKENS = 450
RELATED_EXCERPT_TOKENS = 200
RELATED_FILES_MAX = 6
LISTED_PATHS_MAX = 15
# Larger files (vendored bundles, data) and files with longer lines (minified) are listed, never read.
READ_BYTES_MAX = 200_000
LINE_CHARS_MAX = 1000
# A failure told to the model is required in every retry, so it is kept small enough for a 2k-token model.
FEEDBACK_TOKENS = 400
# A file's path counts this much more than its content when it shares a word of the instruction.
PATH_WEIGHT = 3.0
WORD = re.compile(r"[A-Za-z0-9_]+")
CAMEL_OR_SNAKE = re.compile(r"_|(?<=[a-z0-9])(?=[A-Z])")
# Words of an instruction that say nothing about where the change goes, though few files may hold them (words
# most files hold, like "the", weigh nothing anyway).
STOP_WORDS = frozenset({"please", "make", "add", "change", "update", "use", "new", "file", "function", "instead"})


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


def terms(text: str) -> Iterator[str]:
    """The words of `text` as they are compared with an instruction's: lower case, without a plural's `s`, each
    identifier whole and in its parts (`log_event`, `log`, `event`; `UpgradeRequest`, `upgrade`, `request`)."""
    for token in WORD.findall(text):
        yield _stem(token.lower())
        parts = CAMEL_OR_SNAKE.split(token)
        if len(parts) > 1:
            yield from (_stem(part.lower()) for part in parts if len(part) >= 3)


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


@dataclass(frozen=True)
class RepoFile:
    path: str
    # None: binary, a symlink, larger than READ_BYTES_MAX or minified.
    text: str | None
    size: int

    @cached_property
    def lines(self) -> list[str]:
        return self.text.splitlines() if self.text else []

    @cached_property
    def path_terms(self) -> frozenset[str]:
        return frozenset(terms(self.path))

    @cached_property
    def content_terms(self) -> Counter[str]:
        return Counter(terms(self.text)) if self.text else Counter()


def repository_files(repo: Path, base: str) -> list[RepoFile]:
    files = []
    with git.Repo(repo) as r:
        for item in r.commit(base).tree.traverse():
            if not isinstance(item, git.Blob):
                continue
            text = None
            if item.mode in (0o100644, 0o100755) and item.size <= READ_BYTES_MAX:
                data = item.data_stream.read()
                if b"\0" not in data and all(len(line) <= LINE_CHARS_MAX for line in data.splitlines()):
                    text = data.decode("utf-8", errors="replace")
            files.append(RepoFile(str(item.path), text, item.size))
    return sorted(files, key=lambda f: f.path)


def named_files(instruction: str, files: Sequence[RepoFile]) -> list[RepoFile]:
    """The files the instruction names, in the order it names them: by path (`apps/upgrades/loop.py`), by module
    (`apps.upgrades.loop`), or by a file name no other file has (`loop.py`, `Makefile`)."""
    by_name = Counter(PurePosixPath(f.path).name for f in files)
    found: list[tuple[int, RepoFile]] = []
    for f in files:
        names = [f.path]
        if f.path.endswith(".py"):
            names.append(f.path.removesuffix(".py").replace("/", "."))
        name = PurePosixPath(f.path).name
        if by_name[name] == 1:
            names.append(name)
        for mention in names:
            match = re.search(rf"(?<![\w./-]){re.escape(mention)}(?![\w/-])", instruction)
            if match:
                found.append((match.start(), f))
                break
    return [f for _, f in sorted(found, key=lambda pair: (pair[0], pair[1].path))]


def _weights(instruction: str, files: Sequence[RepoFile]) -> dict[str, float]:
    """The instruction's words, each weighted by how few files share it; a word most files share (`apps`, `self`)
    says nothing about where the change goes."""
    words = dict.fromkeys(w for w in terms(instruction) if len(w) >= 3 and w not in STOP_WORDS)
    weights = {}
    for word in words:
        shared = sum(1 for f in files if word in f.path_terms or word in f.content_terms)
        if 0 < shared <= len(files) / 2:
            weights[word] = math.log((len(files) + 1) / shared)
    return weights


def _score(f: RepoFile, weights: dict[str, float]) -> float:
    score = 0.0
    for word, weight in weights.items():
        if word in f.path_terms:
            score += PATH_WEIGHT * weight
        count = f.content_terms[word]
        if count:
            score += weight * (1 + math.log(count))
    return score


def related_files(
    files: Sequence[RepoFile], weights: dict[str, float], *, exclude: Sequence[RepoFile] = ()
) -> list[RepoFile]:
    """Files that share the instruction's words, most first."""
    skip = {f.path for f in exclude}
    scored = [(score, f) for f in files if f.path not in skip and (score := _score(f, weights)) > 0]
    return [f for _, f in sorted(scored, key=lambda pair: (-pair[0], pair[1].path))]


def _whole(f: RepoFile) -> str:
    if not f.text:
        return f"=== {f.path} (whole file: empty) ==="
    count = len(f.lines)
    return f"=== {f.path} (whole file, {count} line{'s' if count != 1 else ''}) ===\n{f.text.rstrip(chr(10))}"


def _excerpt(f: RepoFile, weights: dict[str, float], budget: int) -> str | None:
    """Whole lines of `f` within `budget` tokens around the lines that share the instruction's words (from the
    top when none does), with a header that says which lines are left out; None if not even one line fits."""
    lines = f.lines
    costs = [estimate_tokens(line) + 1 for line in lines]
    # The words that found the file by its path do not tell its lines apart.
    weights = {word: w for word, w in weights.items() if word not in f.path_terms}
    scores = [sum(weights.get(word, 0.0) for word in set(terms(line))) for line in lines]
    # The span of whole lines within the budget with the most weight (the first such span on a tie).
    best: tuple[float, int, int] | None = None
    end = used = 0
    weight = 0.0
    for start in range(len(lines)):
        if end < start:
            end, used, weight = start, 0, 0.0
        while end < len(lines) and used + costs[end] <= budget:
            used += costs[end]
            weight += scores[end]
            end += 1
        if end > start:
            if best is None or weight > best[0]:
                best = (weight, start, end)
            used -= costs[start]
            weight -= scores[start]
    if best is None:
        return None
    _, start, end = best
    # Centre the lines that matter in the span: from the first to the last of them, widened on both sides in turn.
    hits = [i for i in range(start, end) if scores[i]] or [start]
    first, last = hits[0], hits[-1] + 1
    used = sum(costs[first:last])
    grown = True
    while grown:
        grown = False
        if first > 0 and used + costs[first - 1] <= budget:
            first -= 1
            used += costs[first]
            grown = True
        if last < len(lines) and used + costs[last] <= budget:
            used += costs[last]
            last += 1
            grown = True
    left_out = [f"{a}-{b}" if a != b else str(a) for a, b in ((1, first), (last + 1, len(lines))) if a <= b]
    header = (
        f"=== {f.path}, lines {first + 1}-{last} of {len(lines)} only (an excerpt: lines "
        f"{' and '.join(left_out)} are left out) ==="
    )
    return header + "\n" + "\n".join(lines[first:last])


def _file_pieces(f: RepoFile, weights: dict[str, float], excerpt_tokens: int) -> list[str]:
    """The file whole and, when that is larger than `excerpt_tokens`, an excerpt for a model with less room
    (a piece that does not fit the window is left out by the router's fitting, the next is tried)."""
    if f.text is None:
        return [f"=== {f.path} ({f.size:,} bytes): not shown (binary, a symlink, too large or minified) ==="]
    whole = _whole(f)
    if estimate_tokens(whole) <= excerpt_tokens:
        return [whole]
    excerpt = _excerpt(f, weights, excerpt_tokens)
    return [whole, excerpt] if excerpt else [whole]


def _listing(files: Sequence[RepoFile]) -> str:
    def described(f: RepoFile) -> str:
        count = len(f.lines)
        return f"{f.path} ({count} line{'s' if count != 1 else ''})" if f.text else f"{f.path} ({f.size:,} bytes)"

    return "Files that may matter, most first:\n" + "\n".join(described(f) for f in files)


def _layout(files: Sequence[RepoFile]) -> str:
    """Each top-level directory with its subdirectories and how many files each holds; the top-level files."""
    top: dict[str, Counter[str]] = {}
    root: list[str] = []
    for f in files:
        parts = PurePosixPath(f.path).parts
        if len(parts) == 1:
            root.append(f.path)
        else:
            top.setdefault(parts[0], Counter())[parts[1] if len(parts) > 2 else ""] += 1
    lines = []
    for directory, counts in top.items():
        inside = [f"{name}/ ({n})" for name, n in sorted(counts.items()) if name]
        if counts[""]:
            inside.insert(0, f"{counts['']} file{'s' if counts[''] != 1 else ''}")
        lines.append(f"{directory}/ ({sum(counts.values())}): {', '.join(inside)}")
    if root:
        lines.append("top level: " + ", ".join(root))
    return f"Layout ({len(files)} files; files in each directory):\n" + "\n".join(lines)


def repository_context(repo: Path, base: str, instruction: str) -> list[str]:
    """The pieces of the repository at `base` the model is shown for `instruction`, most useful first."""
    files = repository_files(repo, base)
    weights = _weights(instruction, files)
    named = named_files(instruction, files)
    related = related_files(files, weights, exclude=named)
    pieces: list[str] = []
    for f in named:
        pieces += _file_pieces(f, weights, NAMED_EXCERPT_TOKENS)
    if related:
        pieces.append(_listing(related[:LISTED_PATHS_MAX]))
    for f in related[:RELATED_FILES_MAX]:
        pieces += _file_pieces(f, weights, RELATED_EXCERPT_TOKENS)
    pieces.append(_layout(files))
    return pieces


def _bounded(text: str, *, keep_end: bool) -> str:
    """`text` within FEEDBACK_TOKENS, in whole lines: its last lines (a test run's summary is at the end) or its
    first, saying how many were left out."""
    if estimate_tokens(text) <= FEEDBACK_TOKENS:
        return text
    lines = text.splitlines()
    kept: list[str] = []
    used = 0
    for line in reversed(lines) if keep_end else lines:
        used += estimate_tokens(line) + 1
        if used > FEEDBACK_TOKENS - 20:
            break
        kept.append(line)
    if not kept:
        # One line longer than the budget: its end (or start), saying it is cut.
        chars = (FEEDBACK_TOKENS - 20) * 3
        if keep_end:
            return f"(only the last {chars} characters)\n{text[-chars:]}"
        return f"{text[:chars]}\n(only the first {chars} characters)"
    left_out = len(lines) - len(kept)
    if keep_end:
        return f"(the first {left_out} lines are left out)\n" + "\n".join(reversed(kept))
    return "\n".join(kept) + f"\n(the last {left_out} lines are left out)"


def draft_prompt(
    *, context: Sequence[str], base: str, instruction: str, history: Sequence[Message] = (), feedback: str = ""
) -> Prompt:
    """What is asked of the model: the edit format and the instruction always, with the latest failure after a
    failed attempt; the repository context and the earlier attempts as the model's window allows."""
    ask = f"{feedback}\n\nInstruction: {instruction}" if feedback else f"Instruction: {instruction}"
    return Prompt(
        messages=[{"role": "user", "content": ask}],
        system=SYSTEM_PROMPT,
        context=context,
        context_heading=(
            f"The repository at commit {base[:12]}: the files the instruction names, then files that may be related, "
            "then its layout. Each file's header says whether it is shown whole or only some of its lines: write "
            "out in full only files you were shown whole, or new ones"
        ),
        context_share=CONTEXT_SHARE,
        history=tuple(history),
        # The reply holds whole files: earlier attempts are dropped before it gets less room than this.
        reply_min_tokens=REPLY_MIN_TOKENS,
    )


def _ask(prompt: Prompt, *, trace: router.TraceContext) -> str:
    try:
        return router.complete(prompt, trace=trace).content
    except router.RouterError as exc:
        raise DraftFailed(f"No model answered: {exc}") from exc


def _resumed(where: Target, branch: str, request_id: int | None) -> Upgrade | None:
    """A change request drafted again after its worker died: the upgrade that worker proposed on `branch`, if it got
    that far; otherwise the branch (and its worktree) is discarded so the draft starts over."""
    if request_id is None:
        return None
    earlier = selectors.upgrade_on_branch(repo_path=str(where.repo), branch=branch)
    if earlier is None:
        gitops.discard_branch(where.repo, branch)
    return earlier


def draft(*, instruction: str, request_id: int | None = None) -> Upgrade:
    """Run the loop for `instruction` and propose the result. Raises DraftFailed when the model gave nothing
    usable in SELF_MODIFY_MAX_ATTEMPTS tries (no upgrade is recorded then).

    For a change request drafted again after its worker died: the upgrade that worker proposed, if it got that far;
    otherwise its branch and worktree are discarded and the draft starts over."""
    where = target()
    suffix = str(request_id) if request_id is not None else uuid.uuid4().hex[:8]
    branch = f"self-modify/{slugify(instruction)[:40].strip('-') or 'change'}-{suffix}"
    earlier = _resumed(where, branch, request_id)
    if earlier is not None:
        return earlier
    base = gitops.head_sha(where.repo, where.branch)
    context = repository_context(where.repo, base, instruction)
    # Earlier attempts, oldest first: sent as far as the window allows; the latest failure always is.
    history: list[Message] = []
    feedback = ""
    worktree: Path | None = None
    run: gitops.TestRun | None = None
    summary = ""
    problem = ""
    attempts = 0
    for attempts in range(1, settings.SELF_MODIFY_MAX_ATTEMPTS + 1):
        prompt = draft_prompt(context=context, base=base, instruction=instruction, history=history, feedback=feedback)
        reply = _ask(
            prompt,
            trace=router.TraceContext(purpose="upgrade", upgrade_request_id=request_id, upgrade_attempt=attempts),
        )
        history += [*prompt.messages, {"role": "assistant", "content": reply}]
        head = gitops.head_sha(where.repo, branch) if worktree else base
        try:
            edits, summary = parse_edits(reply)
            gitops.validate_edits(
                where.repo,
                edits,
                allowed_paths=settings.SELF_MODIFY_ALLOWED_PATHS,
                base=head,
                max_diff_lines=settings.UPGRADE_MAX_DIFF_LINES,
                max_file_bytes=settings.SELF_MODIFY_MAX_FILE_BYTES,
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
            feedback = f"That change was refused: {_bounded(problem, keep_end=False)}\nReply again, whole files."
            continue
        run = services.run_proposal_tests(worktree)
        if run.passed or run.not_run:  # not run (no sandbox): no later attempt would be either
            break
        problem = f"the tests failed:\n{run.output_tail}"
        feedback = (
            f"The tests fail with your change:\n{_bounded(run.output_tail, keep_end=True)}\nFix it: whole files again."
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
    if run.not_run:
        return services.tests_not_run_error(run.not_run)
    text = (
        "The tests time out with the proposed change." if run.timed_out else "The tests fail with the proposed change."
    )
    if problem and not problem.startswith("the tests failed"):
        text += f" The last attempt was refused: {problem}"
    return text


class BranchRefused(DraftFailed, services.InvalidUpgrade):
    """A branch that cannot be proposed: it does not exist, changes nothing, or changes what a proposal may not
    (the message names each path and why)."""


@dataclass(frozen=True)
class CheckedBranch:
    where: Target
    branch: str
    tip: str  # the commit checked: what is tested and proposed, wherever the branch has moved since
    base: str


def check_branch(*, branch: str, commit: str = "") -> CheckedBranch:
    """Check an existing branch (or, with `commit`, the commit of it checked earlier) as it would be proposed: every
    changed tree entry with its mode (gitops.branch_edits), then the same validation as a model's edits. Reads git
    only; raises BranchRefused saying why."""
    where = target()
    try:
        tip = gitops.head_sha(where.repo, commit or branch)
    except gitops.GitOpsError as exc:
        what = f"commit {commit!r} of {branch}" if commit else f"branch {branch!r}"
        raise BranchRefused(f"No {what} in {where.repo}.") from exc
    base = gitops.merge_base(where.repo, where.branch, tip)
    if base is None:
        raise BranchRefused(f"{branch} shares no history with {where.branch}.")
    try:
        edits = gitops.branch_edits(
            where.repo,
            base=base,
            tip=tip,
            executable_paths=settings.SELF_MODIFY_EXECUTABLE_PATHS,
            max_file_bytes=settings.SELF_MODIFY_MAX_FILE_BYTES,
        )
        if not edits:
            raise BranchRefused(f"{branch} has no changes against {where.branch}.")
        gitops.validate_edits(
            where.repo,
            edits,
            allowed_paths=settings.SELF_MODIFY_ALLOWED_PATHS,
            base=base,
            max_diff_lines=settings.UPGRADE_MAX_DIFF_LINES,
            max_file_bytes=settings.SELF_MODIFY_MAX_FILE_BYTES,
        )
    except gitops.EditRejected as exc:
        raise BranchRefused(f"{branch} cannot be proposed: {exc}") from exc
    return CheckedBranch(where=where, branch=branch, tip=tip, base=base)


def queue_branch(*, branch: str, description: str, actor: Any) -> UpgradeRequest:
    """Check the branch now, so a refusal reaches the proposer at once, and queue its commit for the worker, which
    checks it again, tests it and proposes it (the page and the API never run the tests themselves)."""
    checked = check_branch(branch=branch)
    return services.upgrade_branch_request_create(
        branch=branch, commit=checked.tip, description=description, actor=actor
    )


def propose_branch(*, branch: str, description: str, commit: str = "", request_id: int | None = None) -> Upgrade:
    """Propose an existing branch (or the commit of it that was checked when it was queued) as it is: the same
    validation and isolated test run. The commit is copied to `self-modify/branch-…` so the original stays
    untouched.

    For a queued request drafted again after its worker died: the upgrade that worker proposed, if it got that far;
    otherwise its copy and worktree are discarded first."""
    checked = check_branch(branch=branch, commit=commit)
    where = checked.where
    suffix = f"r{request_id}" if request_id is not None else uuid.uuid4().hex[:6]
    copy = f"self-modify/branch-{slugify(branch)[:40].strip('-') or 'branch'}-{suffix}"
    earlier = _resumed(where, copy, request_id)
    if earlier is not None:
        return earlier
    worktree = gitops.create_worktree(where.repo, branch=copy, base=checked.tip, worktrees_dir=services.worktrees_dir())
    run = services.run_proposal_tests(worktree)
    return _propose(
        where,
        branch=copy,
        worktree=worktree,
        base=checked.base,
        description=description,
        instruction="",
        run=run,
        attempts=1,
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
    if run.not_run and not error:
        error = services.tests_not_run_error(run.not_run)
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
