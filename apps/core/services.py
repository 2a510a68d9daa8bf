import hashlib
import os
import secrets
import socket
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from apps.core.models import ApiToken, WorkerHeartbeat

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
