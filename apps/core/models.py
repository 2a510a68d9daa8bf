from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiToken(models.Model):
    """A bearer token for /api/v1/. Only the SHA-256 of the token is stored; the token is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, help_text="The first characters of the token, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_tokens"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class WorkerHeartbeat(models.Model):
    worker_id = models.CharField(max_length=100, unique=True)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    last_beat_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)
    cycles = models.PositiveBigIntegerField(default=0)

    class Meta:
        db_table = "worker_heartbeats"
        ordering = ["-last_beat_at"]

    def __str__(self) -> str:
        return self.worker_id

    def is_alive(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        stale = timedelta(seconds=settings.WORKER_STALE_SECONDS)
        return self.stopped_at is None and self.last_beat_at >= now - stale


class LoginFailureCount(models.Model):
    """Failed sign-ins of one account (by username) or from one client address since `window_started_at`, for the
    login throttle (apps.core.auth). In the database, not the cache, so that every web process counts together."""

    class Kind(models.TextChoices):
        ACCOUNT = "account"
        ADDRESS = "address"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    key = models.CharField(max_length=150, help_text="The username tried, or the client address.")
    failures = models.PositiveIntegerField(default=0)
    window_started_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "login_failure_counts"
        constraints = [models.UniqueConstraint(fields=["kind", "key"], name="login_failure_count_kind_key")]
        indexes = [models.Index(fields=["window_started_at"], name="login_failure_window_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.key}: {self.failures}"
