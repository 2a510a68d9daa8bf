import re

from django.db import models
from django.utils import timezone


class EventType(models.TextChoices):
    """The twelve swarm event types of ADR-017. Other apps log under their own namespace (see NAMESPACES)."""

    TASK_CREATED = "task.created"
    TASK_BIDDING = "task.bidding"
    TASK_ASSIGNED = "task.assigned"
    TASK_STARTED = "task.started"
    TASK_COMPLETED = "task.completed"
    TASK_FAILED = "task.failed"
    AGENT_JOINED = "agent.joined"
    AGENT_LEFT = "agent.left"
    BID_SUBMITTED = "bid.submitted"
    TOOL_CALLED = "tool.called"
    TOOL_COMPLETED = "tool.completed"
    SYSTEM_ERROR = "system.error"


# upgrade.approved, payment.settled, memory.stored, provider.circuit_opened, auth.login_throttled, ...
NAMESPACES = ("upgrade", "payment", "memory", "provider", "auth")
NAMESPACED_TYPE = re.compile(rf"(?:{'|'.join(NAMESPACES)})\.[a-z][a-z0-9_]{{0,50}}")


_SWARM_TYPES = frozenset(EventType.values)


def is_known_event_type(value: str) -> bool:
    # fullmatch, not match with "$": "$" also matches before a trailing newline, which would reach the log.
    return value in _SWARM_TYPES or NAMESPACED_TYPE.fullmatch(value) is not None


class Event(models.Model):
    # The id orders the log: the live feed and keyset pages resume from it.
    id = models.BigAutoField(primary_key=True)
    event_type = models.CharField(max_length=64)
    source = models.CharField(max_length=64)
    task_id = models.CharField(max_length=64, blank=True, default="")
    agent_id = models.CharField(max_length=64, blank=True, default="")
    data = models.JSONField(default=dict, blank=True)
    timestamp = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "event_log"
        ordering = ["-id"]
        # Each filter is followed by id so "newest first" pages are read straight off the index.
        indexes = [
            models.Index(fields=["task_id", "id"], name="event_task_id_idx"),
            models.Index(fields=["agent_id", "id"], name="event_agent_id_idx"),
            models.Index(fields=["event_type", "id"], name="event_type_idx"),
            models.Index(fields=["timestamp"], name="event_timestamp_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.id} {self.event_type}"
