from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.events.models import Event
from apps.events.services import PRUNE_BATCH, events_prune
from tests.events.factories import EventFactory

pytestmark = pytest.mark.django_db


def days_ago(days: float):
    return timezone.now() - timedelta(days=days)


def prune(*args: str) -> str:
    out = StringIO()
    call_command("prune_events", *args, stdout=out)
    return out.getvalue()


def test_prune_removes_only_events_older_than_n_days_and_prints_the_count():
    EventFactory.create_batch(3, timestamp=days_ago(45))
    kept = [EventFactory(timestamp=days_ago(29)), EventFactory(timestamp=days_ago(1)), EventFactory()]

    output = prune("--days", "30")

    assert output.startswith("Removed 3 event(s) older than 30 day(s) (before ")
    assert output.rstrip().endswith("UTC).")
    assert list(Event.objects.order_by("id")) == kept


def test_prune_with_nothing_old_enough_removes_nothing_and_says_so():
    EventFactory(timestamp=days_ago(2))

    output = prune("--days", "7")

    assert output.startswith("Removed 0 event(s) older than 7 day(s)")
    assert Event.objects.count() == 1


def test_prune_defaults_to_the_retention_setting(settings):
    settings.EVENT_RETENTION_DAYS = 10
    EventFactory(timestamp=days_ago(11))
    kept = EventFactory(timestamp=days_ago(9))

    output = prune()

    assert "Removed 1 event(s) older than 10 day(s)" in output
    assert list(Event.objects.all()) == [kept]


@pytest.mark.parametrize("days", ["0", "-3"])
def test_prune_refuses_fewer_than_one_day_with_a_clear_error_and_deletes_nothing(days):
    EventFactory(timestamp=days_ago(400))
    EventFactory()

    with pytest.raises(CommandError, match=r"--days must be between 1 and 36500\."):
        prune("--days", days)

    assert Event.objects.count() == 2


def test_prune_removes_more_than_one_batch():
    old = days_ago(100)
    Event.objects.bulk_create(
        Event(event_type="tool.called", source="agent", timestamp=old) for _ in range(PRUNE_BATCH + 3)
    )
    kept = EventFactory()

    assert events_prune(older_than=days_ago(90)) == PRUNE_BATCH + 3
    assert list(Event.objects.all()) == [kept]


def test_prune_keeps_an_event_exactly_at_the_cutoff():
    cutoff = days_ago(5)
    at_cutoff = EventFactory(timestamp=cutoff)
    EventFactory(timestamp=cutoff - timedelta(seconds=1))

    assert events_prune(older_than=cutoff) == 1
    assert list(Event.objects.all()) == [at_cutoff]


@pytest.mark.django_db(transaction=True)
def test_prune_events_command_run_by_an_operator(run_manage):
    EventFactory.create_batch(2, timestamp=days_ago(200))
    kept = EventFactory(timestamp=days_ago(3))

    result = run_manage("prune_events", "--days", "90")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Removed 2 event(s) older than 90 day(s)")
    assert list(Event.objects.all()) == [kept]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("days", "message"),
    [("0", "CommandError: --days must be between 1 and 36500."), ("soon", "invalid int value: 'soon'")],
)
def test_prune_events_command_with_bad_days_fails_with_a_message_not_a_traceback(run_manage, days, message):
    EventFactory(timestamp=days_ago(200))

    result = run_manage("prune_events", "--days", days)

    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert Event.objects.count() == 1


def test_prune_refuses_an_absurd_number_of_days_instead_of_crashing():
    EventFactory(timestamp=days_ago(400))

    with pytest.raises(CommandError, match=r"--days must be between 1 and 36500\."):
        prune("--days", "1000000")

    assert Event.objects.count() == 1
