import hashlib
import math
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.core.models import ApiToken, LoginFailureCount, WorkerHeartbeat
from apps.events.services import log_event

TOKEN_PREFIX = "tt_"  # noqa: S105 (a prefix, not a secret)


def hash_token(raw: str) -> str:
    # Tokens are 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(raw.encode()).hexdigest()


def api_token_create(*, user: User, name: str = "") -> tuple[ApiToken, str]:
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, prefix=raw[:10], key_hash=hash_token(raw))
    return token, raw


def api_token_authenticate(raw: str) -> User | None:
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=hash_token(raw), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    # Write at most once a minute per token: a busy client must not turn every read into a write.
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


def api_token_revoke(*, token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def admin_ensure(*, password_file: Path, username: str = "admin") -> str | None:
    """Create a superuser when none exists; return its password (to be shown once), else None.

    The password is also written to `password_file` with mode 0600 so it is not lost with the terminal.
    """
    User = get_user_model()
    with transaction.atomic():
        if User.objects.filter(is_superuser=True).exists():
            return None
        password = secrets.token_urlsafe(18)
        User.objects.create_superuser(username=username, email="", password=password)
    password_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"username: {username}\npassword: {password}\n")
    password_file.chmod(0o600)
    return password


def worker_default_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_register(*, worker_id: str) -> WorkerHeartbeat:
    now = timezone.now()
    beat, _ = WorkerHeartbeat.objects.update_or_create(
        worker_id=worker_id,
        defaults={
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": now,
            "last_beat_at": now,
            "stopped_at": None,
            "cycles": 0,
        },
    )
    return beat


def worker_beat(*, worker_id: str, cycles: int) -> None:
    WorkerHeartbeat.objects.filter(worker_id=worker_id).update(last_beat_at=timezone.now(), cycles=F("cycles") + cycles)


def worker_stopped(*, worker_id: str) -> None:
    WorkerHeartbeat.objects.filter(worker_id=worker_id).update(stopped_at=timezone.now())


# --- The login throttle (apps.core.auth): failed sign-ins counted per account and per client address ---

_KEY_MAX = LoginFailureCount._meta.get_field("key").max_length or 150


@dataclass(frozen=True)
class LoginLockout:
    kind: str  # LoginFailureCount.Kind
    until: datetime

    def minutes_left(self, now: datetime | None = None) -> int:
        seconds = (self.until - (now or timezone.now())).total_seconds()
        return max(1, math.ceil(seconds / 60))

    @property
    def message(self) -> str:
        minutes = self.minutes_left()
        whose = "for this account" if self.kind == LoginFailureCount.Kind.ACCOUNT else "from this address"
        return f"Too many failed sign-ins {whose}; try again in {minutes} minute{'' if minutes == 1 else 's'}."


def _login_window() -> timedelta:
    return timedelta(minutes=settings.LOGIN_LOCKOUT_MINUTES)


def _login_keys(username: str, address: str) -> list[tuple[str, str]]:
    keys = [(LoginFailureCount.Kind.ACCOUNT.value, username[:_KEY_MAX])] if username else []
    if address:
        keys.append((LoginFailureCount.Kind.ADDRESS.value, address[:_KEY_MAX]))
    return keys


def login_lockout(*, username: str, address: str) -> LoginLockout | None:
    """The lockout that refuses a sign-in for this username from this address, if any (the account's first): once
    an account or an address has had its limit of failures in a window, it is locked out for the rest of it."""
    limits = {
        LoginFailureCount.Kind.ACCOUNT.value: settings.LOGIN_FAILURES_PER_ACCOUNT,
        LoginFailureCount.Kind.ADDRESS.value: settings.LOGIN_FAILURES_PER_ADDRESS,
    }
    over = Q()
    for kind, key in _login_keys(username, address):
        over |= Q(kind=kind, key=key, failures__gte=limits[kind])
    if not over:
        return None
    window = _login_window()
    counters = LoginFailureCount.objects.filter(over, window_started_at__gt=timezone.now() - window)
    locked = sorted(counters, key=lambda c: c.kind != LoginFailureCount.Kind.ACCOUNT)
    if not locked:
        return None
    return LoginLockout(kind=locked[0].kind, until=locked[0].window_started_at + window)


def login_failure_record(*, username: str, address: str) -> None:
    """Count one failed sign-in against the account and the address. A window starts at a key's first failure;
    counters of windows that have ended are removed here, so the table holds only the current ones."""
    now = timezone.now()
    with transaction.atomic():
        LoginFailureCount.objects.filter(window_started_at__lte=now - _login_window()).delete()
        for kind, key in _login_keys(username, address):
            counter = LoginFailureCount.objects.filter(kind=kind, key=key)
            if counter.update(failures=F("failures") + 1):
                continue
            _, created = LoginFailureCount.objects.get_or_create(
                kind=kind, key=key, defaults={"failures": 1, "window_started_at": now}
            )
            if not created:  # another process counted this key's first failure meanwhile
                counter.update(failures=F("failures") + 1)


def login_failures_clear(*, username: str) -> None:
    """A successful sign-in forgives the account's failures (not the address's: it may be trying many accounts)."""
    LoginFailureCount.objects.filter(kind=LoginFailureCount.Kind.ACCOUNT, key=username[:_KEY_MAX]).delete()


def login_throttled(*, lockout: LoginLockout, username: str, address: str) -> None:
    """Record a sign-in refused by a lockout (never with the password: the attempt is refused before it is read)."""
    log_event(
        "auth.login_throttled",
        source="login",
        data={
            "username": username,
            "address": address,
            "locked": lockout.kind,
            "until": lockout.until.isoformat(),
        },
    )
