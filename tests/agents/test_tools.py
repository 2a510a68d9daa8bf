from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apps.agents.services import ToolNotFound, tool_run
from apps.events.models import Event
from tests.factories import TaskFactory


def test_running_a_tool_is_recorded_between_called_and_completed_events(db):
    TaskFactory(status="bidding")
    result = tool_run(name="swarm_status", arguments={}, source="test", agent_id=3, task_id=9)
    assert result.ok
    assert result.value["tasks"]["bidding"] == 1
    called, completed = Event.objects.order_by("id")
    assert (called.event_type, called.agent_id, called.task_id) == ("tool.called", "3", "9")
    assert called.data == {"tool": "swarm_status", "arguments": {}}
    assert completed.event_type == "tool.completed"
    assert completed.data["ok"] is True


def test_a_failing_tool_is_reported_to_the_agent_and_logged_not_raised(db):
    result = tool_run(name="recent_activity", arguments={"minutes": "lots"}, source="test")
    assert not result.ok
    assert "ValueError" in result.error
    completed = Event.objects.get(event_type="tool.completed")
    assert completed.data["ok"] is False
    assert "ValueError" in completed.data["error"]


def test_an_unknown_tool_is_refused_with_the_list_of_tools(db):
    with pytest.raises(ToolNotFound, match="swarm_status"):
        tool_run(name="rm_rf", arguments={}, source="test")
    assert not Event.objects.exists()


def test_run_tool_command_prints_the_result_as_json(db):
    out = StringIO()
    call_command("run_tool", "recent_activity", "minutes=5", stdout=out)
    assert '"minutes": 5' in out.getvalue()


def test_run_tool_command_explains_bad_arguments(db):
    with pytest.raises(CommandError, match="KEY=VALUE"):
        call_command("run_tool", "recent_activity", "five")
