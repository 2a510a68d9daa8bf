import os
import shlex
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.db import connections
from django.utils.module_loading import import_string

from timmy_site import data_dir

# SQLite releases that must not run this project, with why. 3.51.0 added a check to the unix VFS that takes the
# global VFS mutex while holding a file's own mutex, the reverse of the order used when a connection opens: with
# connections opening and closing in several threads (a web server under load) two threads wait on each other
# for ever. Fixed in 3.51.2.
BAD_SQLITE_VERSIONS: dict[tuple[int, ...], str] = {
    (3, 51, 0): "its unix VFS can deadlock when connections open and close in several threads (fixed in 3.51.2)",
    (3, 51, 1): "its unix VFS can deadlock when connections open and close in several threads (fixed in 3.51.2)",
}


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
    for name in ("WORKER_STEPS", "WORKER_JOBS"):
        for path in getattr(settings, name):
            try:
                import_string(path)
            except ImportError as exc:
                errors.append(Error(f"{name} entry {path!r} cannot be imported: {exc}", id="timmy.E004"))
    if not 0 <= settings.AUCTION_MAX_EXTENSIONS <= 1000:
        errors.append(Error("AUCTION_MAX_EXTENSIONS must be between 0 and 1000.", id="timmy.E006"))
    errors += _sandbox_messages()
    if settings.WORKER_GRACE_SECONDS < 0:
        errors.append(Error("WORKER_GRACE_SECONDS must be 0 or more.", id="timmy.E006"))
    for name in (
        "WEBSOCKET_EVENT_THROTTLE",
        "ACTIVITY_FEED_BUFFER",
        "WEBSOCKET_MAX_PER_IP",
        "CIRCUIT_BREAKER_THRESHOLD",
        "CIRCUIT_BREAKER_RECOVERY_SECONDS",
        "PROVIDER_REQUEST_RETENTION_DAYS",
        "INVOICE_EXPIRY_SECONDS",
        "LIGHTNING_PAYMENT_TIMEOUT_SECONDS",
        "L402_PRICE_SATS",
        "L402_TOKEN_TTL_SECONDS",
        "L402_CHALLENGES_PER_MINUTE",
        "LOGIN_FAILURES_PER_ACCOUNT",
        "LOGIN_FAILURES_PER_ADDRESS",
        "LOGIN_LOCKOUT_MINUTES",
        "EMBEDDED_THREADS",
        "EMBEDDING_THREADS",
        "WORKER_CONCURRENCY",
        "SANDBOX_MEMORY_MB",
        "SANDBOX_MAX_PROCESSES",
        "SANDBOX_OUTPUT_BYTES",
        "SANDBOX_FILE_BYTES",
    ):
        if getattr(settings, name) < 1:
            errors.append(Error(f"{name} must be at least 1.", id="timmy.E006"))
    # Below these a prompt has no room: Timmy's system prompt alone is about 150 tokens.
    for name, least in (("EMBEDDED_CONTEXT_TOKENS", 256), ("DEFAULT_CONTEXT_TOKENS", 256)):
        if getattr(settings, name) < least:
            errors.append(Error(f"{name} must be at least {least} tokens.", id="timmy.E006"))
    if settings.EMBEDDED_QUEUE_MAX < 0:
        errors.append(Error("EMBEDDED_QUEUE_MAX must be 0 (no waiting) or more.", id="timmy.E006"))
    if settings.CHAT_HISTORY_MESSAGES < 0:
        errors.append(Error("CHAT_HISTORY_MESSAGES must be 0 (no history) or more.", id="timmy.E008"))
    if not 0 < settings.ACTIVITY_FEED_POLL_SECONDS <= 10:
        errors.append(
            Error("ACTIVITY_FEED_POLL_SECONDS must be above 0 and at most 10 (the live feed's delay).", id="timmy.E007")
        )
    errors.extend(_lightning_errors())
    if not os.access(settings.DATA_DIR, os.W_OK):
        errors.append(Error(f"TIMMY_DATA_DIR {settings.DATA_DIR} is not writable.", id="timmy.E005"))
    errors.extend(data_dir_errors(Path(settings.DATA_DIR)))
    for alias in connections:
        if connections[alias].vendor == "sqlite":
            errors.extend(sqlite_version_errors(connections[alias].get_database_version()))
    return errors


def sqlite_version_errors(version: tuple[int, ...]) -> list[CheckMessage]:
    why = BAD_SQLITE_VERSIONS.get(tuple(version[:3]))
    if why is None:
        return []
    name = ".".join(map(str, version))
    return [
        Error(
            f"SQLite {name} must not be used: {why}.",
            hint="Run `make setup`, which installs pysqlite3 with a newer SQLite (requirements/base.txt).",
            id="timmy.E012",
        )
    ]


def data_dir_errors(path: Path) -> list[CheckMessage]:
    exposed = data_dir.exposed(path)
    if not exposed:
        return []
    return [
        Error(
            f"TIMMY_DATA_DIR holds private data but other users can reach: {', '.join(exposed)}.",
            hint=(
                "Each process takes these permissions off what it owns when it starts; these belong to another "
                f"user: as that user, chmod 700 {path} (and its folders) and chmod 600 its files."
            ),
            id="timmy.E013",
        )
    ]


def _lightning_errors() -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if settings.LIGHTNING_BACKEND not in ("dev", "lnd"):
        errors.append(
            Error(f"LIGHTNING_BACKEND must be dev or lnd, not {settings.LIGHTNING_BACKEND!r}.", id="timmy.E009")
        )
    if settings.LIGHTNING_BACKEND == "lnd":
        if not settings.LND_REST_URL.startswith(("https://", "http://")):
            errors.append(Error("LIGHTNING_BACKEND=lnd needs LND_REST_URL (https://host:8080).", id="timmy.E010"))
        if not os.access(settings.LND_MACAROON_PATH or ".nonexistent", os.R_OK):
            errors.append(
                Error("LIGHTNING_BACKEND=lnd needs LND_MACAROON_PATH, a readable macaroon file.", id="timmy.E010")
            )
        if settings.LND_TLS_CERT_PATH and not os.access(settings.LND_TLS_CERT_PATH, os.R_OK):
            errors.append(Error("LND_TLS_CERT_PATH is set but the file cannot be read.", id="timmy.E010"))
    key = settings.L402_ROOT_KEY
    if key:
        try:
            valid = len(bytes.fromhex(key)) >= 32
        except ValueError:
            valid = False
        if not valid:
            errors.append(Error("L402_ROOT_KEY must be at least 32 bytes in hex (64 characters).", id="timmy.E011"))
    return errors


def _sandbox_messages() -> list[CheckMessage]:
    try:
        argv = shlex.split(settings.SELF_MODIFY_TEST_COMMAND)
    except ValueError as exc:
        return [Error(f"SELF_MODIFY_TEST_COMMAND cannot be split into words: {exc}.", id="timmy.E014")]
    if not argv:
        return [Error("SELF_MODIFY_TEST_COMMAND is empty: proposals could not be tested.", id="timmy.E014")]
    from apps.upgrades import sandbox  # the upgrades app is loaded by the time checks run

    messages: list[CheckMessage] = []
    reason = sandbox.unavailable_reason()
    if reason is not None and settings.SELF_MODIFY_UNSANDBOXED_TESTS:
        messages.append(
            Warning(
                f"No sandbox for proposal tests ({reason}); SELF_MODIFY_UNSANDBOXED_TESTS runs them anyway, with "
                "this process's access to your files. Every such proposal is high risk.",
                id="timmy.W001",
            )
        )
    elif reason is not None:
        messages.append(Warning(f"Proposal tests will not run: {reason}.", id="timmy.W001"))
    return messages
