import pytest

from apps.events.models import Event
from apps.swarm import services


def test_posted_description_keeps_its_lines_but_loses_escapes_and_controls(db):
    task = services.task_post(
        description="Fix the bug\r\nin \x1b[31mred\x1b[0m\x1b]0;title\x07 code\x00\u202e",
        auction_seconds=5,
    )
    task.refresh_from_db()
    assert task.description == "Fix the bug\nin red code"
    created = Event.objects.get(event_type="task.created", task_id=str(task.pk))
    assert created.data["description"] == "Fix the bug in red code"


def test_a_description_made_only_of_escapes_is_refused_as_empty(db):
    with pytest.raises(services.InvalidTask, match="empty"):
        services.task_post(description="\x1b[31m\x1b[0m\r\n", auction_seconds=5)
