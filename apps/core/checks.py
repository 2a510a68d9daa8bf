import os
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.utils.module_loading import import_string


@register()
def timmy_settings_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if settings.AUCTION_SECONDS < 1:
        errors.append(Error("AUCTION_SECONDS must be at least 1.", id="timmy.E001"))
    if settings.WORKER_STALE_SECONDS <= settings.WORKER_HEARTBEAT_SECONDS:
        errors.append(
            Error(
                "WORKER_STALE_SECONDS must be longer than WORKER_HEARTBEAT_SECONDS, or a live worker is shown as down.",
                id="timmy.E002",
            )
        )
    if settings.TASK_MAX_ATTEMPTS < 1:
        errors.append(Error("TASK_MAX_ATTEMPTS must be at least 1.", id="timmy.E003"))
    for path in settings.WORKER_STEPS:
        try:
            import_string(path)
        except ImportError as exc:
            errors.append(Error(f"WORKER_STEPS entry {path!r} cannot be imported: {exc}", id="timmy.E004"))
    for name in (
        "WEBSOCKET_EVENT_THROTTLE",
        "ACTIVITY_FEED_BUFFER",
        "WEBSOCKET_MAX_PER_IP",
        "CIRCUIT_BREAKER_THRESHOLD",
        "CIRCUIT_BREAKER_RECOVERY_SECONDS",
        "PROVIDER_REQUEST_RETENTION_DAYS",
    ):
        if getattr(settings, name) < 1:
            errors.append(Error(f"{name} must be at least 1.", id="timmy.E006"))
    if settings.CHAT_HISTORY_MESSAGES < 0:
        errors.append(Error("CHAT_HISTORY_MESSAGES must be 0 (no history) or more.", id="timmy.E008"))
    if not 0 < settings.ACTIVITY_FEED_POLL_SECONDS <= 10:
        errors.append(
            Error("ACTIVITY_FEED_POLL_SECONDS must be above 0 and at most 10 (the live feed's delay).", id="timmy.E007")
        )
    if not os.access(settings.DATA_DIR, os.W_OK):
        errors.append(Error(f"TIMMY_DATA_DIR {settings.DATA_DIR} is not writable.", id="timmy.E005"))
    return errors
