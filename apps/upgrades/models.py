"""The self-upgrade queue (ADR-021): changes proposed to a code base, which reach its target branch only after a
person with `upgrades.approve_upgrade` approves them, their tests pass, and the worker merges them.

States: proposed → approved | rejected | expired; approved → applied | failed; applied → rolled_back. Every move
is a conditional update in apps.upgrades.services, with an `upgrade.*` event naming who did it. A rollback is asked
for (`rollback_requested_at`) and done by the worker, like an apply.
"""

from django.conf import settings
from django.db import models
from django.urls import reverse


class Risk(models.TextChoices):
    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"


class Upgrade(models.Model):
    class Status(models.TextChoices):
        PROPOSED = "proposed", "Proposed"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        EXPIRED = "expired", "Expired"
        APPLIED = "applied", "Applied"
        FAILED = "failed", "Failed"
        ROLLED_BACK = "rolled_back", "Rolled back"

    PENDING = (Status.PROPOSED,)

    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PROPOSED)
    description = models.TextField()
    # What the model was asked for; empty for a branch proposed as it is (`self_modify --branch`).
    instruction = models.TextField(blank=True)
    repo_path = models.CharField(max_length=500)
    target_branch = models.CharField(max_length=200)
    branch = models.CharField(max_length=200)
    worktree_path = models.CharField(max_length=500, blank=True)
    base_commit = models.CharField(max_length=40)
    head_commit = models.CharField(max_length=40, blank=True)
    files_changed = models.JSONField(default=list)
    diff = models.TextField(blank=True)
    diff_preview = models.TextField(blank=True)
    risk = models.CharField(max_length=6, choices=Risk.choices, default=Risk.MEDIUM)
    # {"passed": bool, "passed_count", "failed_count", "duration_seconds", "output_tail", "command", "timed_out"}
    test_results = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    error_message = models.TextField(blank=True)
    rejection_reason = models.TextField(blank=True)
    proposed_at = models.DateTimeField(auto_now_add=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    auto_approved = models.BooleanField(default=False)
    rejected_at = models.DateTimeField(null=True, blank=True)
    rejected_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    applied_at = models.DateTimeField(null=True, blank=True)
    # The merge commit on the target branch, and the target's head it replaced.
    applied_commit = models.CharField(max_length=40, blank=True)
    replaced_commit = models.CharField(max_length=40, blank=True)
    rolled_back_at = models.DateTimeField(null=True, blank=True)
    revert_commit = models.CharField(max_length=40, blank=True)
    # Set while the rollback of an applied upgrade waits for the worker or is being done; cleared if it fails.
    rollback_requested_at = models.DateTimeField(null=True, blank=True)
    # Who asked for the last rollback (kept after a failure, for the change page).
    rollback_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Why the last rollback failed; the upgrade stayed applied and its rollback can be asked for again.
    rollback_error = models.TextField(blank=True)
    # Set while a worker applies it or rolls it back; a lease that runs out means that worker died
    # (recover_stale_upgrades).
    claimed_by = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    apply_attempts = models.PositiveSmallIntegerField(default=0)
    rollback_attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        db_table = "upgrades"
        ordering = ["-id"]
        permissions = [("approve_upgrade", "Can approve or reject a proposed upgrade")]
        indexes = [models.Index(fields=["status", "proposed_at"], name="upgrade_status_idx")]

    def __str__(self) -> str:
        return f"Upgrade {self.pk}: {self.description[:60]}"

    def get_absolute_url(self) -> str:
        return reverse("admin:upgrades_upgrade_change", args=[self.pk])

    @property
    def tests_passed(self) -> bool:
        return bool(self.test_results.get("passed"))

    @property
    def rollback_queued(self) -> bool:
        return self.status == self.Status.APPLIED and self.rollback_requested_at is not None


class UpgradeRequest(models.Model):
    """A change asked for (dashboard, `self_modify --queue`, a code task): the worker drafts it into an Upgrade."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    # For a branch proposed as it is, the description of the change.
    instruction = models.TextField()
    # A branch proposed as it is (the page, the API, `self_modify --branch --queue`): the commit of it that was
    # checked when it was queued, which the worker tests and proposes. Empty for a change the model drafts.
    branch = models.CharField(max_length=200, blank=True)
    commit = models.CharField(max_length=40, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    task = models.ForeignKey("swarm.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    upgrade = models.ForeignKey(Upgrade, null=True, blank=True, on_delete=models.SET_NULL, related_name="requests")
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set while a worker drafts it, as for an upgrade being applied.
    claimed_by = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "upgrade_requests"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Request {self.pk}: {self.instruction[:60]}"
