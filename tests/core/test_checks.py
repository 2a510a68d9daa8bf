from django.core.checks import run_checks


def test_a_worker_that_would_always_look_down_is_caught_at_start_up(settings):
    settings.WORKER_HEARTBEAT_SECONDS = 30
    settings.WORKER_STALE_SECONDS = 10
    ids = [message.id for message in run_checks()]
    assert "timmy.E002" in ids


def test_a_misspelt_worker_step_is_caught_at_start_up(settings):
    settings.WORKER_STEPS = [*settings.WORKER_STEPS, "apps.swarm.worker.close_auctions_typo"]
    messages = [m for m in run_checks() if m.id == "timmy.E004"]
    assert messages and "close_auctions_typo" in messages[0].msg


def test_default_settings_pass_the_checks():
    assert [m.id for m in run_checks() if m.id and m.id.startswith("timmy.")] == []


def test_a_live_feed_that_could_never_send_anything_is_caught_at_start_up(settings):
    settings.WEBSOCKET_EVENT_THROTTLE = 0
    settings.ACTIVITY_FEED_POLL_SECONDS = 0
    ids = [message.id for message in run_checks()]
    assert "timmy.E006" in ids
    assert "timmy.E007" in ids


def test_a_breaker_that_could_never_close_or_never_stay_open_is_caught_at_start_up(settings):
    settings.CIRCUIT_BREAKER_THRESHOLD = 0
    settings.CIRCUIT_BREAKER_RECOVERY_SECONDS = 0
    messages = [m.msg for m in run_checks() if m.id == "timmy.E006"]
    assert "CIRCUIT_BREAKER_THRESHOLD must be at least 1." in messages
    assert "CIRCUIT_BREAKER_RECOVERY_SECONDS must be at least 1." in messages


def test_a_negative_chat_history_is_caught_at_start_up(settings):
    settings.CHAT_HISTORY_MESSAGES = -1
    assert "timmy.E008" in [m.id for m in run_checks()]
