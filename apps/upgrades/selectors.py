"""Reads for the upgrade queue's page, its admin and its API, and the unified diff split into files for display."""

import re
from dataclasses import dataclass, field

from django.db.models import F, QuerySet

from apps.events.models import Event
from apps.upgrades.models import Upgrade, UpgradeRequest

HISTORY_LIMIT = 50
AUDIT_LIMIT = 200
FAILED_REQUESTS_LIMIT = 10
FINISHED = (
    Upgrade.Status.APPLIED,
    Upgrade.Status.FAILED,
    Upgrade.Status.REJECTED,
    Upgrade.Status.EXPIRED,
    Upgrade.Status.ROLLED_BACK,
)
# Approved: decided, waiting for the worker to apply it. Shown with the pending ones: it has not landed yet.
WAITING = (Upgrade.Status.PROPOSED, Upgrade.Status.APPROVED)


def upgrades_list(*, status: str | None = None, limit: int = 50) -> list[Upgrade]:
    qs = Upgrade.objects.all() if status is None else Upgrade.objects.filter(status=status)
    return list(qs.order_by("-id")[:limit])


def upgrades_waiting() -> list[Upgrade]:
    """Proposed and approved upgrades, oldest first (the order they expire and are applied in)."""
    return list(Upgrade.objects.filter(status__in=WAITING).select_related("approved_by").order_by("id"))


def upgrades_history(*, limit: int = HISTORY_LIMIT) -> list[Upgrade]:
    """Finished upgrades, newest first."""
    qs = Upgrade.objects.filter(status__in=FINISHED).select_related("approved_by", "rejected_by")
    return list(qs.order_by("-id")[:limit])


def upgrade_requests_open() -> list[UpgradeRequest]:
    """Change requests the worker has not finished, oldest first."""
    qs = UpgradeRequest.objects.filter(status__in=(UpgradeRequest.Status.QUEUED, UpgradeRequest.Status.RUNNING))
    return list(qs.select_related("requested_by").order_by("id"))


def upgrade_requests_failed(*, limit: int = FAILED_REQUESTS_LIMIT) -> list[UpgradeRequest]:
    """The latest change requests that came to nothing (no usable change, a branch refused by the worker's check,
    a worker that died too often), newest first: they stay until retried."""
    qs = UpgradeRequest.objects.filter(status=UpgradeRequest.Status.FAILED).select_related("requested_by")
    return list(qs.order_by(F("finished_at").desc(nulls_last=True), "-id")[:limit])


def upgrade_approve_refusal(upgrade: Upgrade) -> str:
    """Why `upgrade` cannot be approved now (the services' own words), or "" if it can."""
    if upgrade.status != Upgrade.Status.PROPOSED:
        return f"Upgrade {upgrade.pk} is {upgrade.status}; only a proposed upgrade can become approved."
    if not upgrade.tests_passed:
        return f"Upgrade {upgrade.pk} cannot be approved: its tests did not pass."
    return ""


def upgrade_reject_refusal(upgrade: Upgrade) -> str:
    if upgrade.status != Upgrade.Status.PROPOSED:
        return f"Upgrade {upgrade.pk} is {upgrade.status}; only a proposed upgrade can become rejected."
    return ""


def upgrade_rollback_refusal(upgrade: Upgrade) -> str:
    if upgrade.status != Upgrade.Status.APPLIED:
        return f"Upgrade {upgrade.pk} is {upgrade.status}; only an applied upgrade can be rolled back."
    if upgrade.rollback_queued:
        return f"The rollback of upgrade {upgrade.pk} is already queued."
    return ""


def upgrade_on_branch(*, repo_path: str, branch: str) -> Upgrade | None:
    return Upgrade.objects.filter(repo_path=repo_path, branch=branch).order_by("id").first()


def upgrade_pending_count() -> int:
    return Upgrade.objects.filter(status=Upgrade.Status.PROPOSED).count()


def upgrade_events(upgrade_id: int, *, limit: int = AUDIT_LIMIT) -> QuerySet[Event]:
    """The upgrade's audit trail, newest first. A JSON key lookup: works on SQLite and PostgreSQL alike."""
    return Event.objects.filter(data__upgrade_id=upgrade_id).order_by("-id")[:limit]


# --- the diff, split into files ---


@dataclass(frozen=True)
class DiffLine:
    # "file": a file header (diff --git, index, ---, +++, mode, rename); "hunk": @@ … @@; "add", "del", "context";
    # "note": "\ No newline at end of file".
    kind: str
    text: str


@dataclass
class DiffFile:
    path: str
    lines: list[DiffLine] = field(default_factory=list)
    added: int = 0
    removed: int = 0
    # From git's "old mode"/"new mode" (or "new file mode"/"deleted file mode") lines; "" when it says none.
    old_mode: str = ""
    new_mode: str = ""

    @property
    def mode_change(self) -> str:
        """`mode 100644 → 100755 (executable)` for a mode change, `new file, mode 120000 (symbolic link)` for a new
        file that is not a plain one, otherwise empty."""
        if self.old_mode and self.new_mode and self.old_mode != self.new_mode:
            return f"mode {self.old_mode} → {self.new_mode}{_mode_name(self.new_mode)}"
        if self.new_mode and not self.old_mode and self.new_mode != "100644":
            return f"new file, mode {self.new_mode}{_mode_name(self.new_mode)}"
        return ""


MODE_NAMES = {"100644": "file", "100755": "executable", "120000": "symbolic link", "160000": "submodule"}


def _mode_name(mode: str) -> str:
    return f" ({MODE_NAMES[mode]})" if mode in MODE_NAMES else ""


HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
HEADER_PREFIXES = (
    "index ", "new file mode", "deleted file mode", "old mode", "new mode", "similarity index", "dissimilarity index",
    "rename from ", "rename to ", "copy from ", "copy to ", "Binary files ",
)  # fmt: skip


def _header_path(line: str) -> str:
    """The path of a `--- a/x` or `+++ b/x` line ("" for /dev/null), without a trailing tab and timestamp."""
    path = line[4:].split("\t", 1)[0]
    if path == "/dev/null":
        return ""
    return path[2:] if path[:2] in ("a/", "b/") else path


def diff_files(diff: str) -> list[DiffFile]:
    """A unified diff (git's or plain), one entry per file, each line classified for display.

    A hunk's line counts say where it ends, so a removed line that reads "-- x" (shown as "--- x") is never taken
    for the header of the next file.
    """
    files: list[DiffFile] = []
    current: DiffFile | None = None
    old_left = new_left = 0

    def start(path: str) -> DiffFile:
        nonlocal current
        current = DiffFile(path=path)
        files.append(current)
        return current

    for text in diff.splitlines():
        if old_left > 0 or new_left > 0:
            if text.startswith("+"):
                kind, new_left = "add", new_left - 1
            elif text.startswith("-"):
                kind, old_left = "del", old_left - 1
            elif text.startswith("\\"):
                kind = "note"
            else:
                kind, old_left, new_left = "context", old_left - 1, new_left - 1
        elif text.startswith("diff --git "):
            kind = "file"
            _, _, b_path = text.rpartition(" b/")
            start(b_path)
        elif text.startswith("--- ") and (current is None or current.added or current.removed or _has_hunk(current)):
            kind = "file"  # a plain diff's next file, or its first
            start(_header_path(text))
        elif text.startswith("--- ") and current is not None:
            kind = "file"
            current.path = current.path or _header_path(text)
        elif text.startswith("+++ ") and current is not None:
            kind = "file"
            current.path = _header_path(text) or current.path
        elif match := HUNK.match(text):
            kind = "hunk"
            old_left = int(match.group(1) or 1)
            new_left = int(match.group(2) or 1)
        elif text.startswith(HEADER_PREFIXES):
            kind = "file"
            if current is not None:
                _note_mode(current, text)
        elif text.startswith("+"):
            kind = "add"  # a fragment without hunk headers
        elif text.startswith("-"):
            kind = "del"
        elif text.startswith("\\"):
            kind = "note"
        else:
            kind = "context"
        target = current if current is not None else start("")
        target.lines.append(DiffLine(kind, text))
        if kind == "add":
            target.added += 1
        elif kind == "del":
            target.removed += 1
    return files


def _note_mode(diff_file: DiffFile, header: str) -> None:
    for prefix, side in (
        ("old mode ", "old"),
        ("deleted file mode ", "old"),
        ("new mode ", "new"),
        ("new file mode ", "new"),
    ):
        if header.startswith(prefix):
            setattr(diff_file, f"{side}_mode", header.removeprefix(prefix).strip())


def _has_hunk(diff_file: DiffFile) -> bool:
    return any(line.kind == "hunk" for line in diff_file.lines)
