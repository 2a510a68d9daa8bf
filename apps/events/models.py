from django.db import models
from django.utils import timezone

from apps.events import registry
from apps.events.registry import is_known_event_type

__all__ = ["Event", "EventType", "is_known_event_type"]


class EventType(models.TextChoices):
    """The twelve swarm event types of ADR-017. Every type, these and the other apps', is in apps.events.registry."""

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

    # The agent's current name, when the selector that read the event looked it up (selectors.with_agent_names).
    agent_name: str | None = None

    def __str__(self) -> str:
        return f"#{self.id} {self.event_type}"

    @property
    def label(self) -> str:
        return registry.label(self.event_type)

    @property
    def agent_label(self) -> str:
        """The agent as the live feed names it: the name the event recorded, else its current one, else its id."""
        return registry.Facts(self.data, agent_id=self.agent_id, agent_name=self.agent_name).agent

    @property
    def summary(self) -> str:
        return registry.summarise(
            self.event_type, self.data, task_id=self.task_id, agent_id=self.agent_id, agent_name=self.agent_name
        )
