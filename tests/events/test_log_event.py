import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.events.models import Event, EventType
from apps.events.services import InvalidEvent, events_prune, log_event
from apps.swarm.models import Task
from tests.factories import TaskFactory

pytestmark = pytest.mark.django_db

ADR_017_TYPES = [
    "task.created",
    "task.bidding",
    "task.assigned",
    "task.started",
    "task.completed",
    "task.failed",
    "agent.joined",
    "agent.left",
    "bid.submitted",
    "tool.called",
    "tool.completed",
    "system.error",
]


def test_events_are_stored_in_the_event_log_table():
    log_event("task.created", source="swarm")

    assert Event._meta.db_table == "event_log"
    with connection.cursor() as cursor:
        cursor.execute("SELECT event_type, source FROM event_log")
        assert cursor.fetchall() == [("task.created", "swarm")]


def test_logged_event_records_every_field_of_adr_017():
    before = timezone.now()

    event = log_event("bid.submitted", source="auction", task_id="42", agent_id="7", data={"amount_sats": 120})

    event.refresh_from_db()
    assert event.event_type == "bid.submitted"
    assert event.source == "auction"
    assert event.task_id == "42"
    assert event.agent_id == "7"
    assert event.data == {"amount_sats": 120}
    assert before <= event.timestamp <= timezone.now()
    assert str(event) == f"#{event.id} bid.submitted"


def test_each_logged_event_gets_a_larger_id_than_the_one_before():
    ids = [log_event("tool.called", source="agent", data={"n": n}).id for n in range(5)]

    assert ids == sorted(ids)
    assert len(set(ids)) == 5


def test_ids_are_not_reused_after_the_newest_events_are_pruned():
    # A live-feed client resumes "after the last id it saw": a reused id would make it miss events.
    old = log_event("task.created", source="swarm")
    events_prune(older_than=timezone.now())
    assert not Event.objects.exists()

    new = log_event("task.created", source="swarm")

    assert new.id > old.id


def test_the_log_lists_newest_first_by_default():
    first = log_event("task.created", source="swarm")
    second = log_event("task.bidding", source="swarm")

    assert list(Event.objects.all()) == [second, first]


def test_numeric_task_and_agent_ids_are_stored_as_text():
    event = log_event("task.assigned", source="swarm", task_id=12, agent_id=3)

    event.refresh_from_db()
    assert (event.task_id, event.agent_id) == ("12", "3")


def test_event_without_task_agent_or_data_is_stored_with_empty_values():
    event = log_event("system.error", source="worker")

    event.refresh_from_db()
    assert (event.task_id, event.agent_id, event.data) == ("", "", {})


@pytest.mark.parametrize("source", ["", "\x1b[31m\x00\x07"])
def test_source_that_is_empty_after_cleaning_is_recorded_as_unknown(source):
    assert log_event("system.error", source=source).source == "unknown"


def test_there_are_exactly_the_twelve_swarm_event_types_of_adr_017():
    assert sorted(EventType.values) == sorted(ADR_017_TYPES)


@pytest.mark.parametrize("event_type", ADR_017_TYPES)
def test_every_swarm_event_type_can_be_logged(event_type):
    log_event(event_type, source="swarm")

    assert Event.objects.get().event_type == event_type


@pytest.mark.parametrize(
    "event_type",
    ["upgrade.approved", "payment.settled", "memory.stored", "provider.circuit_opened", "auth.login_throttled"],
)
def test_other_apps_can_log_their_declared_types(event_type):
    log_event(event_type, source="app")

    assert Event.objects.get().event_type == event_type


@pytest.mark.parametrize(
    "event_type",
    [
        "",
        "task.exploded",
        "billing.paid",
        "upgrade",
        "upgrade.",
        "upgrade.Approved",
        "upgrade.approved.twice",
        "Task.Created",
        " task.created",
        "task.created ",
        "task.created\n",
        "upgrade.approved\n",
        "upgrade.approved\r\nforged line",
        "payment." + "x" * 60,
        # The namespaces of the other apps no longer take any name: only the types apps/events/registry.py declares.
        "upgrade.rolled_back2",
        "payment.refunded",
        "memory.*",
    ],
)
def test_unknown_event_type_is_refused_and_nothing_is_stored(event_type):
    with pytest.raises(InvalidEvent, match="unknown event type"):
        log_event(event_type, source="swarm")

    assert not Event.objects.exists()


def test_event_logged_in_a_rolled_back_transaction_is_gone():
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        TaskFactory(description="never happened")
        log_event("task.created", source="swarm", data={"description": "never happened"})
        raise Abort

    assert not Task.objects.exists()
    assert not Event.objects.exists()


def test_event_logged_in_a_committed_transaction_stays_with_its_change():
    with transaction.atomic():
        task = TaskFactory(description="kept")
        log_event("task.created", source="swarm", task_id=task.pk)

    assert Event.objects.get().task_id == str(task.pk)


def test_event_logged_in_a_rolled_back_savepoint_is_gone_but_the_outer_work_stays():
    log_event("task.created", source="swarm", task_id="outer")
    try:
        with transaction.atomic():
            log_event("task.failed", source="swarm", task_id="inner")
            raise RuntimeError("step failed")
    except RuntimeError:
        pass

    assert list(Event.objects.values_list("task_id", flat=True)) == ["outer"]
