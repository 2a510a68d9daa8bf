import contextlib
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from io import StringIO
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command
from django.db import connection

from apps.core.models import ApiToken, WorkerHeartbeat
from apps.events.models import Event, EventType
from apps.providers.models import Provider
from apps.providers.services import providers_ensure_defaults
from apps.swarm.models import Agent, Task
from apps.swarm.services import task_post
from tests.factories import AgentFactory, UserFactory

ROOT = Path(__file__).resolve().parents[2]


# --- create_api_token ---


def test_create_api_token_prints_only_the_token_and_stores_only_its_hash(transactional_db, run_manage):
    user = UserFactory(username="scripts", is_staff=True)
    result = run_manage("create_api_token", "scripts", "--name", "backup job", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    raw = lines[0]
    assert raw.startswith("tt_")
    assert len(raw) > 40
    token = ApiToken.objects.get()
    assert token.user == user
    assert token.name == "backup job"
    assert token.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM api_tokens")
        stored = cursor.fetchall()
    assert stored and raw not in repr(stored)


def test_the_printed_token_authenticates_api_requests(staff_user, client):
    out = StringIO()
    call_command("create_api_token", staff_user.username, stdout=out)
    raw = out.getvalue().strip()
    assert client.get("/api/v1/agents", headers={"Authorization": f"Bearer {raw}"}).status_code == 200


def test_each_token_is_different(staff_user):
    tokens = set()
    for _ in range(3):
        out = StringIO()
        call_command("create_api_token", staff_user.username, stdout=out)
        tokens.add(out.getvalue())
    assert len(tokens) == 3


def test_create_api_token_for_an_unknown_user_fails_clearly(db):
    with pytest.raises(CommandError, match="No user named 'ghost'"):
        call_command("create_api_token", "ghost", stdout=StringIO())
    assert not ApiToken.objects.exists()


def test_create_api_token_for_an_inactive_user_fails_clearly(db):
    UserFactory(username="gone", is_active=False)
    with pytest.raises(CommandError, match="User 'gone' is inactive"):
        call_command("create_api_token", "gone", stdout=StringIO())
    assert not ApiToken.objects.exists()


def test_create_api_token_for_an_unknown_user_exits_non_zero_with_the_message(transactional_db, run_manage):
    result = run_manage("create_api_token", "ghost", timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "No user named 'ghost'." in result.stderr


# --- ensure_admin ---


def test_ensure_admin_creates_a_superuser_once_and_keeps_the_password_private(db, settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    out = StringIO()
    call_command("ensure_admin", stdout=out)
    password_file = settings.DATA_DIR / "admin-password.txt"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    saved = password_file.read_text()
    password = saved.split("password: ")[1].strip()
    assert len(password) >= 20
    assert out.getvalue().count(password) == 1
    assert str(password_file) in out.getvalue()
    assert saved.startswith("username: admin\n")
    admin = authenticate(username="admin", password=password)
    assert admin is not None and admin.is_superuser

    again = StringIO()
    call_command("ensure_admin", stdout=again)
    assert again.getvalue().strip() == "An admin user exists; nothing to do."
    assert get_user_model().objects.filter(is_superuser=True).count() == 1
    assert password_file.read_text() == saved


def test_ensure_admin_does_nothing_when_a_superuser_exists(db, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    get_user_model().objects.create_superuser("root", "", "a long enough password")
    out = StringIO()
    call_command("ensure_admin", stdout=out)
    assert "nothing to do" in out.getvalue()
    assert not (tmp_path / "admin-password.txt").exists()
    assert not get_user_model().objects.filter(username="admin").exists()


def test_ensure_admin_passwords_differ_between_installs(db, settings, tmp_path):
    passwords = set()
    for n in range(2):
        settings.DATA_DIR = tmp_path / str(n)
        call_command("ensure_admin", stdout=StringIO())
        passwords.add((settings.DATA_DIR / "admin-password.txt").read_text())
        get_user_model().objects.all().delete()
    assert len(passwords) == 2


# --- serve ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_of(pid: int) -> list[int]:
    # Linux only; used to clean up after a failed test, never to decide whether it passed.
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def kill_all(proc: subprocess.Popen[str], children: list[int]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (a local URL)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def start_serve(port: int, env: dict[str, str], *, log: IO[str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if log is None else log,
        text=True,
    )


def model_host_env(subprocess_env: dict[str, str], **extra: str) -> tuple[dict[str, str], Path]:
    """The environment of a `serve` with its own model host, and that host's socket (in a fresh temp dir)."""
    # A short path: a unix socket's address is limited to 107 bytes.
    socket_path = Path(tempfile.mkdtemp(prefix="timmy-serve-")) / "host.sock"
    return {**subprocess_env, "EMBEDDED_SOCKET": str(socket_path), "EMBEDDED_THREADS": "1", **extra}, socket_path


def model_host_health(socket_path: Path) -> dict[str, Any] | None:
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), timeout=2) as client:
            health: dict[str, Any] = client.get("http://model-host/health").json()
            return health
    except (httpx.TransportError, ValueError):
        return None


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (a local URL)
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_serve_runs_the_dashboard_the_worker_and_the_model_host_preloading_and_stops_all_on_sigterm(
    transactional_db, subprocess_env
):
    port = free_port()
    login = f"http://127.0.0.1:{port}/accounts/login/"
    # As `make run` runs it: DEBUG off, no secret key configured (one is generated into the data dir).
    env, socket_path = model_host_env(
        {k: v for k, v in subprocess_env.items() if k != "DJANGO_SECRET_KEY"},
        PRELOAD_MODELS="1",
        LOG_LEVEL="INFO",
        DJANGO_DEBUG="0",
    )
    log = (socket_path.parent / "serve.log").open("w+")
    proc = start_serve(port, env, log=log)
    preloaded = "embedding model all-MiniLM-L6-v2 loaded in"
    children: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while (
            http_status(login) != 200
            or not WorkerHeartbeat.objects.exists()
            or not (model_host_health(socket_path) or {}).get("loaded")
            # daphne and the worker each load the embedding model in the background at start-up.
            or Path(log.name).read_text().count(preloaded) < 2
        ):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"serve did not start within 90 s:\n{Path(log.name).read_text()}"
            time.sleep(0.2)
        children = children_of(proc.pid)
        # A wrong address gets the site's own page, not Django's debug page listing every URL pattern.
        status, body = http_get(f"http://127.0.0.1:{port}/no/such/page")
        assert status == 404 and "Nothing here" in body
        assert "URLconf" not in body and "admin/" not in body
        # whitenoise serves the stylesheet with DEBUG off, no collectstatic step.
        assert http_status(f"http://127.0.0.1:{port}/static/css/timmy.css") == 200
        beat = WorkerHeartbeat.objects.get()
        assert beat.stopped_at is None
        health = model_host_health(socket_path)
        assert health is not None and health["model"] == "SmolLM2-135M-Instruct" and health["loads"] == 1
        # The host's socket is for this user alone.
        assert socket_path.stat().st_mode & 0o077 == 0
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=30)
        stderr = Path(log.name).read_text()
    finally:
        kill_all(proc, children)
        log.close()
        shutil.rmtree(socket_path.parent, ignore_errors=True)
    assert proc.returncode == 0, stderr
    assert f"Dashboard on http://127.0.0.1:{port}/" in stdout
    assert stdout.rstrip().endswith("Stopped.")
    assert http_status(login) is None
    # The worker was stopped, not killed: it marked its heartbeat on the way out.
    beat.refresh_from_db()
    assert beat.stopped_at is not None
    # The model host stopped with the rest and took its socket along; the model loaded while the others started.
    assert not socket_path.exists()
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    assert f"Model host on {socket_path}" in stdout


def test_stopping_serve_hands_back_a_task_that_is_using_the_embedded_model_instead_of_failing_it(
    transactional_db, subprocess_env
):
    # The embedded model is the only provider: were the model host stopped with the worker, the task in its grace
    # period would lose its model and fail. The host stops last, so the task is handed back whole.
    providers_ensure_defaults()
    Provider.objects.exclude(name="embedded").update(enabled=False)
    agent = AgentFactory(name="storyteller", status=Agent.Status.OFFLINE)
    env, socket_path = model_host_env(subprocess_env, PRELOAD_MODELS="0", WORKER_GRACE_SECONDS="1")
    log = (socket_path.parent / "serve.log").open("w+")
    proc = start_serve(free_port(), env, log=log)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while Agent.objects.get(pk=agent.pk).status == Agent.Status.OFFLINE:
            assert proc.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.2)
        children = children_of(proc.pid)
        task = task_post(
            description="Write a long story about a lighthouse keeper, in ten chapters.", auction_seconds=1
        )
        while not (model_host_health(socket_path) or {}).get("generating"):
            assert time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        stderr = Path(log.name).read_text()
    finally:
        kill_all(proc, children)
        log.close()
        shutil.rmtree(socket_path.parent, ignore_errors=True)
    assert proc.returncode == 0, stderr
    task.refresh_from_db()
    assert task.status == Task.Status.ASSIGNED, task.failure_reason
    assert task.claimed_by == "" and task.attempts == 0
    assert not Event.objects.filter(event_type=EventType.TASK_FAILED, task_id=str(task.pk)).exists()


def test_serve_stops_the_worker_and_fails_when_the_dashboard_cannot_start(transactional_db, subprocess_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        proc = start_serve(port, subprocess_env)
        try:
            _, stderr = proc.communicate(timeout=60)
        finally:
            kill_all(proc, [])
    assert proc.returncode == 1
    assert "Stopped because the web exited with status 1." in stderr
    assert "Address already in use" in stderr
    assert not WorkerHeartbeat.objects.filter(stopped_at__isnull=True).exists()


# --- every command: arguments that are not UTF-8 ---


@pytest.mark.parametrize(
    ("argv", "bad"),
    [
        pytest.param([b"create_api_token", b"\xff\xfe"], "argument 2 (b'\\xff\\xfe')", id="create_api_token"),
        pytest.param([b"self_modify", b"\xff"], "argument 2 (b'\\xff')", id="self_modify"),
        pytest.param([b"timmy", b"chat", b"\xff"], "argument 3 (b'\\xff')", id="timmy chat"),
        pytest.param([b"migrate", b"--database", b"d\xc3("], "argument 3 (b'd\\xc3(')", id="a Django command"),
    ],
)
def test_an_argument_that_is_not_utf8_is_a_command_error_not_a_traceback(transactional_db, subprocess_env, argv, bad):
    # Bytes, not str: the argument reaches manage.py exactly as a shell passes $'\xff'.
    result = subprocess.run(
        [sys.executable.encode(), b"manage.py", *argv], cwd=ROOT, env=subprocess_env, capture_output=True, timeout=60
    )
    stderr = result.stderr.decode()
    assert result.returncode == 2
    assert "Traceback" not in stderr
    assert stderr == f"CommandError: {bad} is not valid UTF-8 text\n"
    assert result.stdout == b""
    assert not ApiToken.objects.exists()
