from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


class Persona(models.TextChoices):
    TIMMY = "timmy", "Timmy (orchestrator)"
    ECHO = "echo", "Echo (research)"
    FORGE = "forge", "Forge (code)"
    SEER = "seer", "Seer (analytics)"
    QUILL = "quill", "Quill (writing)"
    HELM = "helm", "Helm (devops)"
    MACE = "mace", "Mace (security)"


class Agent(models.Model):
    class Status(models.TextChoices):
        IDLE = "idle"
        BUSY = "busy"
        OFFLINE = "offline"

    name = models.SlugField(max_length=50, unique=True)
    persona = models.CharField(max_length=20, choices=Persona.choices)
    description = models.CharField(max_length=200, blank=True)
    capabilities = models.JSONField(default=list, blank=True)
    # Words for what this persona does: part of its profile, compared with tasks by meaning, not as substrings.
    keywords = models.JSONField(default=list, blank=True)
    profile = models.TextField(
        blank=True,
        help_text="What this agent does, then its typical tasks, one per line. Tasks are matched with this profile "
        "(and the description, capabilities and keywords) by meaning: the best-matching agent bids lowest.",
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OFFLINE)
    # Bid = base for the best-matching agent, rising to base * off_topic_multiplier for a clear mismatch
    # (apps.swarm.matching), plus uniform jitter in ±bid_jitter_sats.
    base_bid_sats = models.PositiveIntegerField(default=100)
    bid_jitter_sats = models.PositiveIntegerField(default=10)
    off_topic_multiplier = models.PositiveSmallIntegerField(default=3)
    # Whether this agent bids on tasks; Timmy orchestrates rather than competes.
    bids_on_tasks = models.BooleanField(default=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "agents"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Task(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        BIDDING = "bidding"
        ASSIGNED = "assigned"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"

    TERMINAL = (Status.COMPLETED, Status.FAILED)

    description = models.TextField(max_length=10_000)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    posted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    assigned_agent = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.PROTECT, related_name="assigned_tasks"
    )
    winning_bid_sats = models.PositiveIntegerField(null=True, blank=True)
    result = models.TextField(blank=True)
    failure_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    auction_closes_at = models.DateTimeField(null=True, blank=True)
    # Times the auction was reopened because no agent could bid (none online, or all busy) when it closed.
    auction_extensions = models.PositiveSmallIntegerField(default=0)
    assigned_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Set while a worker runs the task; a lease that runs out means that worker died.
    claimed_by = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        db_table = "tasks"
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "auction_closes_at"], name="task_status_close_idx"),
            models.Index(fields=["status", "lease_expires_at"], name="task_status_lease_idx"),
        ]

    def __str__(self) -> str:
        return f"Task {self.pk}: {self.description[:60]}"

    def get_absolute_url(self) -> str:
        return reverse("swarm:task", args=[self.pk])


class Bid(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="bids")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="bids")
    amount_sats = models.PositiveIntegerField()
    # How well the task matched the agent's profile (cosine similarity) when it bid; empty for bids made otherwise.
    match = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "bids"
        ordering = ["amount_sats", "created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["task", "agent"], name="one_bid_per_agent_per_task")]

    def __str__(self) -> str:
        return f"{self.agent} bids {self.amount_sats} sats on task {self.task_id}"
